"""Folder conversion: every checkpoint under a folder into another folder, file by file.

Example:
    >>> import tempfile, pathlib, shutil
    >>> from hyperkit.demo import fixture_path
    >>> src, dst = (pathlib.Path(tempfile.mkdtemp()) for _ in range(2))
    >>> _ = shutil.copy(fixture_path("b_a1111_default.pt"), src / "b.pt")
    >>> [item.result.dst.name for item in convert_folder(src, dst, to="safetensors")]
    ['b.safetensors']
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyperkit import formats
from hyperkit.conversion import ConvertResult, convert
from hyperkit.errors import BadInputError, VerificationError


@dataclass
class FolderItem:
    """One file of a folder conversion: its result, or the error that stopped it."""

    src: Path
    result: ConvertResult | None = None
    error: BaseException | None = None


def checkpoints_in(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively) whose suffix a format owns, sorted."""
    owned = set(formats.suffixes())
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in owned)


def convert_folder(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str,
    dtype: str = "keep",
    force: bool = False,
    strict: bool = False,
    progress: Callable[[Path], None] | None = None,
) -> list[FolderItem]:
    """Convert every checkpoint under ``src`` into ``dst`` (mirroring subfolders), file by file.

    A failing file does not stop the others; each item carries its result or its error.
    """
    src_p, dst_p = Path(src), Path(dst)
    if not dst_p.is_dir():
        raise BadInputError(f"{dst_p}: output folder does not exist", hint="create it first")
    fmt = formats.get(to)
    items = []
    for path in checkpoints_in(src_p):
        out_dir = dst_p / path.parent.relative_to(src_p)
        item = FolderItem(src=path)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            item.result = convert(
                path, out_dir / (path.stem + fmt.suffixes[0]), to=to, dtype=dtype, force=force, strict=strict
            )
        except (BadInputError, VerificationError) as e:
            item.error = e
        items.append(item)
        if progress:
            progress(path)
    return items
