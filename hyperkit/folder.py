"""Folder conversion: every checkpoint under a folder into another folder, file by file.

Planning comes first and writes nothing: the walk skips hidden files and folders (hyperkit's own
``.*.hyperkit-tmp`` temporaries among them) and the output folder when it lies inside the source,
and two sources that would write the same output (``m.pt`` and ``m.ckpt``) stop the run before
anything is written. Then each file is converted on its own: the failure of one, even an internal
error, is recorded in its item and the others go on.

Example:
    >>> import tempfile, pathlib, shutil
    >>> from hyperkit.demo import fixture_path
    >>> src = pathlib.Path(tempfile.mkdtemp())
    >>> _ = shutil.copy(fixture_path("b_a1111_default.pt"), src / "b.pt")
    >>> [item.result.dst.name for item in convert_folder(src, src / "out", to="safetensors")]
    ['b.safetensors']
    >>> [item.status for item in convert_folder(src, src / "out", to="safetensors", skip_existing=True)]
    ['skipped']
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyperkit import formats
from hyperkit.conversion import DTYPES, ConvertResult, convert
from hyperkit.errors import BadInputError, ExitCode, HyperkitError, OutputPathError, UsageProblem


@dataclass
class FolderItem:
    """One file of a folder conversion: where it goes, and its result, skip or error.

    ``traceback`` keeps the formatted traceback of ``error`` (for ``--debug``); the exception's
    own traceback is dropped so that a failed file's arrays are not kept alive by its frames.
    """

    src: Path
    dst: Path
    result: ConvertResult | None = None
    error: Exception | None = None
    skipped: bool = False
    traceback: str | None = None

    @property
    def status(self) -> str:
        """``ok``, ``skipped``, ``failed`` or (before the run) ``pending``."""
        if self.result:
            return "ok"
        if self.skipped:
            return "skipped"
        return "failed" if self.error else "pending"

    @property
    def message(self) -> str:
        """The error as one (unsanitized) text: a hyperkit error's message, else an internal error."""
        if isinstance(self.error, HyperkitError):
            return self.error.message
        return f"internal error: {type(self.error).__name__}: {self.error}" if self.error else ""

    @property
    def exit_code(self) -> int:
        """The exit code this item alone would give (0 unless it failed)."""
        if isinstance(self.error, HyperkitError):
            return int(self.error.exit_code)
        return int(ExitCode.INTERNAL) if self.error else 0


@dataclass
class FolderPlan:
    """What a folder conversion will do; :func:`plan_folder` builds it without writing anything."""

    src: Path
    dst: Path
    to: str
    items: list[FolderItem]


def checkpoints_in(folder: Path, *, exclude: Path | None = None) -> list[Path]:
    """Every file under ``folder`` (recursively) whose suffix a format owns, sorted.

    Hidden files and folders are skipped (temporaries, ``.ipynb_checkpoints``, AppleDouble
    ``._x.pt`` files), and so is ``exclude`` (an output folder inside ``folder``), so that a
    second run does not convert the first run's outputs.
    """
    owned = set(formats.suffixes())
    skip = exclude.resolve() if exclude is not None else None
    found = []
    for root, dirs, files in os.walk(folder):
        # Pruning ``dirs`` in place is how os.walk is told not to descend.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != skip)
        found += [
            Path(root, f)
            for f in files
            if not f.startswith(".") and Path(f).suffix.lower() in owned and Path(root, f).is_file()
        ]
    return sorted(found)


def plan_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, to: str) -> FolderPlan:
    """Find the checkpoints under ``src`` and their outputs under ``dst``; write nothing.

    Raises :class:`~hyperkit.errors.OutputPathError` when ``dst`` is a file, is ``src`` itself,
    cannot be created (its parent is missing), or when two sources would write the same output.
    """
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.is_dir():
        raise BadInputError(f"{src_p}: no such folder")
    fmt = formats.get(to)
    if dst_p.exists() and not dst_p.is_dir():
        raise OutputPathError(f"{dst_p}: is a file, expected a folder")
    if not dst_p.exists() and not dst_p.parent.is_dir():
        raise OutputPathError(
            f"{dst_p}: cannot create the output folder: '{dst_p.parent}' does not exist",
            hint="create it first; hyperkit creates the output folder itself but not its parents",
        )
    if dst_p.resolve() == src_p.resolve():
        raise OutputPathError(
            f"{dst_p}: the output folder is the source folder", hint=f"choose another one, e.g. {src_p / 'converted'}"
        )
    items = [
        FolderItem(src=p, dst=dst_p / p.parent.relative_to(src_p) / (p.stem + fmt.suffixes[0]))
        for p in checkpoints_in(src_p, exclude=dst_p)
    ]
    _check_collisions(items)
    return FolderPlan(src=src_p, dst=dst_p, to=fmt.name, items=items)


def _check_collisions(items: list[FolderItem]) -> None:
    """Refuse two sources with one output (``m.pt``, ``m.ckpt``), and an output that is a source.

    Names are compared case-folded: on macOS and Windows ``M.safetensors`` and ``m.safetensors``
    are one file, and a summary must never report two conversions of which one was overwritten.
    """
    writers: dict[str, list[Path]] = {}
    for item in items:
        writers.setdefault(os.path.normpath(item.dst).casefold(), []).append(item.src)
    sources = {os.path.normpath(item.src).casefold() for item in items}
    problems = []
    for item in items:
        key = os.path.normpath(item.dst).casefold()
        names = writers.pop(key, [])
        if len(names) > 1:
            who = f"both {names[0]} and {names[1]}" if len(names) == 2 else f"each of {', '.join(map(str, names))}"
            problems.append(f"{item.dst}: would be written from {who}")
        elif names and key in sources:
            problems.append(f"{item.dst}: would overwrite a source file (converted from {names[0]})")
    if problems:
        raise OutputPathError(
            "; ".join(problems) + "; nothing was written",
            hint="rename one file of each group, or convert those files one by one",
        )


def run_plan(
    plan: FolderPlan,
    *,
    dtype: str = "keep",
    force: bool = False,
    strict: bool = False,
    skip_existing: bool = False,
    progress: Callable[[Path], None] | None = None,
) -> list[FolderItem]:
    """Create ``plan.dst`` (not its parents) and convert each item; a failure does not stop the rest."""
    _check_options(dtype, force, skip_existing)
    try:
        plan.dst.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"{plan.dst}: cannot create the output folder: {e.strerror or e}") from e
    for item in plan.items:
        try:
            if item.dst.is_dir():  # convert() would write *into* it
                raise OutputPathError(f"{item.dst}: is a folder, expected a file path")
            if skip_existing and item.dst.exists():
                item.skipped = True
            else:
                item.dst.parent.mkdir(parents=True, exist_ok=True)
                item.result = convert(item.src, item.dst, to=plan.to, dtype=dtype, force=force, strict=strict)
        except Exception as e:  # one file's failure, whatever it is, must not stop the others
            item.traceback = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            item.error = _without_tracebacks(e)
        if progress:
            progress(item.src)
    return plan.items


def _without_tracebacks(error: Exception) -> Exception:
    """``error`` with its tracebacks (and those of its causes) dropped: their frames would keep the
    failed file's arrays alive until the whole folder is done."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


def _check_options(dtype: str, force: bool, skip_existing: bool) -> None:
    # Checked once up front: otherwise every file would fail with the same usage error.
    if force and skip_existing:
        raise UsageProblem("--skip-existing contradicts --force: choose one")
    if dtype not in DTYPES:
        raise UsageProblem(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")


def convert_folder(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str,
    dtype: str = "keep",
    force: bool = False,
    strict: bool = False,
    skip_existing: bool = False,
    progress: Callable[[Path], None] | None = None,
) -> list[FolderItem]:
    """Convert every checkpoint under ``src`` into ``dst`` (mirroring subfolders), file by file.

    ``dst`` is created when its parent exists. An existing output is an error unless ``force``
    (overwrite) or ``skip_existing`` (leave it, item marked skipped). Each item carries its
    result or its error; see :func:`plan_folder` for what stops the run before anything is written.
    """
    _check_options(dtype, force, skip_existing)
    plan = plan_folder(src, dst, to=to)
    return run_plan(plan, dtype=dtype, force=force, strict=strict, skip_existing=skip_existing, progress=progress)
