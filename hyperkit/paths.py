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
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from hyperkit.errors import BadInputError, OutputPathError

#: Longest file name (bytes) most file systems allow; the temporary name must fit too.
MAX_NAME_BYTES = 255
_TMP_SUFFIX = ".hyperkit-tmp"


def _stat_safely(path: Path, what: str) -> os.stat_result | None:
    """``os.stat`` that turns odd paths (NUL bytes, over-long names, loops) into a clear error."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BadInputError(f"{path}: unusable {what} path: {reason}") from None


def is_folder(path: Path) -> bool:
    """``path.is_dir()`` that says False instead of raising for an over-long or odd path."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def check_input(path: str | os.PathLike[str]) -> Path:
    """An existing regular file, or a clear :class:`BadInputError` (a pipe or a device would block
    or never end, so only regular files are read)."""
    p = Path(path)
    st = _stat_safely(p, "input")
    if st is None:
        raise BadInputError(f"{p}: no such file")
    if stat.S_ISDIR(st.st_mode):
        raise BadInputError(f"{p}: is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError(f"{p}: is not a regular file (a pipe, socket or device)")
    return p


def text_name(name: str) -> str:
    """A file name as valid Unicode text: bytes that are not UTF-8 become U+FFFD, so the name can
    be stored in metadata, zip entries and ONNX graph names.

    Example:
        >>> text_name("caf\\udce9")
        'caf\\ufffd'
    """
    return os.fsencode(name).decode("utf-8", "replace")


def check_output(dst: str | os.PathLike[str], *, force: bool, src: str | os.PathLike[str] | None = None) -> Path:
    """Validate an output path before any work is done (so bad paths fail fast)."""
    d = Path(dst)
    parent = _stat_safely(d.parent, "output folder")
    if parent is None or not stat.S_ISDIR(parent.st_mode):
        raise OutputPathError(
            f"{d}: output folder '{d.parent}' does not exist",
            hint="create it first (hyperkit creates a missing output folder only for a DST ending in '/')",
        )
    if len(os.fsencode(d.name)) > MAX_NAME_BYTES:
        raise OutputPathError(f"{d}: file name is longer than {MAX_NAME_BYTES} bytes")
    existing = _stat_safely(d, "output")
    if src is not None and existing is not None and os.path.samefile(d, src):
        raise OutputPathError(f"{d}: output is the input file; refusing to overwrite it")
    if src is not None and d.resolve() == Path(src).resolve():
        raise OutputPathError(f"{d}: output is the input file; refusing to overwrite it")
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise OutputPathError(f"{d}: is a folder, expected a file path")
    if existing is not None and not force:
        raise OutputPathError(f"{d}: already exists", hint="pass --force to overwrite it")
    return d


def temporary_name(final: Path) -> Path:
    """A hidden name beside ``final``; the final name is left out when the result would be too long."""
    token = secrets.token_hex(4)
    name = f".{final.name}.{token}{_TMP_SUFFIX}"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        name = f".hyperkit.{token}{_TMP_SUFFIX}"
    return final.with_name(name)


@contextmanager
def atomic_output(
    dst: str | os.PathLike[str], *, force: bool, src: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it into place only if the block succeeds.

    The temporary file is removed on any failure (including Ctrl-C), so ``dst`` is either the
    complete new file or untouched. A file-system error while writing (permissions, a full disk,
    a read-only mount) becomes an :class:`OutputPathError` naming ``dst``.
    """
    final = check_output(dst, force=force, src=src)
    tmp = temporary_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        raise OutputPathError(
            f"{final}: cannot write: {e.strerror or e}", hint="check the folder's permissions and free space"
        ) from e
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (A1111's ``shorthash``/Civitai AutoV2 is its first 10 chars)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
