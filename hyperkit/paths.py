"""Output-path rules shared by every command: never overwrite without ``force``, never write
into a missing folder or over the input, and never leave a partial file behind.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> with atomic_output(out, force=False) as tmp:
    ...     _ = tmp.write_bytes(b"ok")
    >>> out.read_bytes()
    b'ok'
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hyperkit.errors import BadInputError, OutputPathError


def check_input(path: str | os.PathLike[str]) -> Path:
    """An existing regular file, or a clear :class:`BadInputError`."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a folder, expected a file")
    return p


def check_output(dst: str | os.PathLike[str], *, force: bool, src: str | os.PathLike[str] | None = None) -> Path:
    """Validate an output path before any work is done (so bad paths fail fast)."""
    d = Path(dst)
    if not d.parent.is_dir():
        raise OutputPathError(
            f"{d}: output folder '{d.parent}' does not exist",
            hint="create it first; hyperkit never creates folders implicitly",
        )
    if src is not None and d.exists() and os.path.samefile(d, src):
        raise OutputPathError(f"{d}: output is the input file; refusing to overwrite it")
    if src is not None and d.resolve() == Path(src).resolve():
        raise OutputPathError(f"{d}: output is the input file; refusing to overwrite it")
    if d.is_dir():
        raise OutputPathError(f"{d}: is a folder, expected a file path")
    if d.exists() and not force:
        raise OutputPathError(f"{d}: already exists", hint="pass --force to overwrite it")
    return d


@contextmanager
def atomic_output(
    dst: str | os.PathLike[str], *, force: bool, src: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it into place only if the block succeeds.

    The temporary file is removed on any failure (including Ctrl-C), so ``dst`` is either the
    complete new file or untouched.
    """
    final = check_output(dst, force=force, src=src)
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.hyperkit-tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (A1111's ``shorthash``/Civitai AutoV2 is its first 10 chars)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
