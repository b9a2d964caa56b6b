"""Load, save and convert checkpoints: container -> family model -> container, verifying every write.

``convert`` reads the source with its container's reader, which asks the file which family it
holds (:mod:`hyperkit.families`) and returns that family's in-memory model; it optionally casts
the tensors, writes to a temporary file beside the destination, reloads that file with the
destination container's reader and compares every tensor bit-for-bit and every non-tensor field
(metadata values *and types*, a generator's spec text) with what was meant to be written; only
then is the file renamed into place. Nothing here is specific to a family: a model offers
``tensors()``, ``with_tensors()``, ``dtypes()``, ``parameter_count`` and the names of the fields
verification compares (``VERIFIED_FIELDS``).

Example:
    >>> import tempfile, pathlib
    >>> from hyperkit.demo import fixture_path
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "b.safetensors"
    >>> result = convert(fixture_path("b_a1111_default.pt"), out)
    >>> result.dst_format, result.tensors
    ('safetensors', 16)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit import families, formats
from hyperkit.errors import BadInputError, HyperkitError, OutputPathError, UsageProblem, VerificationError
from hyperkit.formats.arrays import bit_equal, release
from hyperkit.formats.dtypes import numpy_dtype
from hyperkit.paths import atomic_output, check_input, check_output, is_folder, text_name
from hyperkit.sdkv.model import SDKVHypernetwork

DTYPES = ("keep", "fp32", "fp16", "bf16")
#: What :func:`verify` compares besides the tensors when a model class names nothing (sd-kv's).
DEFAULT_VERIFIED_FIELDS = ("metadata", "key_order", "container")
#: Any family's in-memory model (``SDKVHypernetwork``, ``hyperkit.generator.Generator``, ...).
Model = Any


def load(path: str | os.PathLike[str], *, format: str | None = None, validate: bool = True) -> Model:
    """Read a checkpoint of any registered format and family; by default also check its structure.

    Example:
        >>> from hyperkit.demo import fixture_path
        >>> load(fixture_path("b_a1111_default.pt")).dims
        [8, 16]
    """
    p = check_input(path)
    hn = read_any(p, formats.get(format) if format else formats.for_path(p))
    if validate:
        try:
            families.for_model(hn).load().check(hn)
        except HyperkitError as e:
            raise _located(e, p) from None
    return hn


def read_any(path: Path, fmt: formats.Format, reader: Callable[[Path], Any] | None = None) -> Any:
    """Read ``path`` with ``fmt``'s reader (or ``reader``); every error message starts with the path."""
    try:
        hn = (reader or fmt.load_module().read)(path)
    except OSError as e:
        raise BadInputError(f"{path}: cannot read: {e.strerror or e}") from e
    except HyperkitError as e:
        raise _located(e, path) from None
    return hn


def _located(e: HyperkitError, path: Path) -> HyperkitError:
    """The same error with its message starting with the file it is about."""
    if not e.message.startswith(str(path)):
        e.message = f"{path}: {e.message}"
        e.args = (e.message,)
    return e


def save(hn: Model, path: str | os.PathLike[str], *, format: str | None = None, force: bool = False) -> None:
    """Write atomically in the format named by ``format`` or the path's suffix, then verify.

    ``hn`` is a family model, or a module offering ``to_hyperkit()`` (a ``GeneratorModule``).

    Example:
        >>> import tempfile, pathlib
        >>> from hyperkit.demo import fixture_path
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "b.onnx"
        >>> save(load(fixture_path("b_a1111_default.pt")), out)
        >>> out.exists()
        True
    """
    fmt = formats.get(format) if format else formats.for_path(path)
    if hasattr(hn, "to_hyperkit"):  # an authoring module (hyperkit.generator.GeneratorModule)
        hn = hn.to_hyperkit()
    _write_verified(hn, Path(path), fmt, force=force, src=None)


@dataclass
class ConvertResult:
    """What one conversion did."""

    src: Path
    dst: Path
    src_format: str
    dst_format: str
    tensors: int
    parameters: int
    bytes_written: int
    dtype: str
    warnings: list[str] = field(default_factory=list)
    max_cast_error: float = 0.0


def cast_dtype(hn: Model, dtype: str) -> tuple[Model, float, list[str]]:
    """Cast every floating tensor to ``dtype`` (``keep`` leaves them); return max abs error too."""
    if dtype == "keep":
        return hn, 0.0, []
    target = numpy_dtype({"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype])
    worst, overflow = 0.0, []
    for name, arr in hn.tensors():
        src64 = arr.astype(np.float64)
        back = arr.astype(target).astype(np.float64)
        if np.any(np.isfinite(src64) & ~np.isfinite(back)):
            overflow.append(name)
        finite = np.isfinite(src64) & np.isfinite(back)
        if finite.any():
            worst = max(worst, float(np.max(np.abs(src64[finite] - back[finite]))))
    warnings = (
        [f"{len(overflow)} tensor(s) overflow {dtype} and become inf: {', '.join(overflow[:3])}"] if overflow else []
    )
    return hn.with_tensors(lambda a: a.astype(target)), worst, warnings


def nonfinite_tensors(hn: Model) -> list[str]:
    """Names of tensors holding NaN or Inf (pages of memory-mapped tensors released as it goes)."""
    bad = []
    with np.errstate(invalid="ignore"):  # signalling NaNs are what we are looking for, not a warning
        for name, arr in hn.tensors():
            if arr.dtype.kind in "fV" and not np.isfinite(arr).all():
                bad.append(name)
            release(arr)
    return bad


def strict_equal(a: Any, b: Any) -> bool:
    """``==`` that also requires the same types all the way down (``1 != 1.0 != True``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return strict_equal(list(a), list(b)) and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:  # NaN
        return bool(b != b)
    return bool(a == b)


def verify(expected: Model, got: Model, where: str) -> None:
    """Raise :class:`VerificationError` listing every tensor or metadata difference.

    The pages of memory-mapped tensors are released once compared, so checking a file never holds
    all of it (or of the input) in this process's memory at once.
    """
    problems = []
    want, have = dict(expected.tensors()), dict(got.tensors())
    if list(want) != list(have):
        missing = [k for k in want if k not in have]
        extra = [k for k in have if k not in want]
        problems.append(f"tensor names differ (missing {missing[:3]}, extra {extra[:3]}, or order)")
    for name, arr in want.items():
        if name in have and not bit_equal(arr, have[name]):
            problems.append(
                f"tensor '{name}' differs ({arr.dtype}{list(arr.shape)} vs {have[name].dtype}{list(have[name].shape)})"
            )
        release(arr)
        if name in have:
            release(have[name])
    fields = getattr(expected, "VERIFIED_FIELDS", DEFAULT_VERIFIED_FIELDS)
    if type(expected) is not type(got):
        problems.append(f"family differs: wrote {type(expected).__name__}, read back {type(got).__name__}")
        fields = ()
    for attr in fields:
        if not strict_equal(getattr(expected, attr), getattr(got, attr)):
            problems.append(
                f"{attr} differs: wrote {getattr(expected, attr)!r:.120}, read back {getattr(got, attr)!r:.120}"
            )
    if problems:
        raise VerificationError(f"{where}: verification failed: " + "; ".join(problems[:5]))


def _write_verified(hn: Model, dst: Path, fmt: formats.Format, *, force: bool, src: Path | None) -> int:
    module = fmt.load_module()
    normalize: Callable[[Model], Model] | None = getattr(module, "normalize", None)
    expected = normalize(hn) if normalize else hn
    for _, arr in hn.tensors():  # pages of a memory-mapped input already read (e.g. to check them)
        release(arr)
    with atomic_output(dst, force=force, src=src) as tmp:
        module.write(hn, tmp, stem=text_name(dst.stem))  # names inside files must be valid UTF-8
        verify(expected, module.read(tmp), str(dst))
        size = tmp.stat().st_size
    return size


def _resolve_dst(src: Path, dst: str | os.PathLike[str], to: str | None) -> tuple[Path, formats.Format]:
    """The output file and format. A DST that is a folder, or ends with ``/`` (then it is created
    when its parent exists), receives SRC's stem with the format's suffix."""
    as_folder = isinstance(dst, str) and dst.endswith(("/", os.sep))
    folder = Path(dst)
    if as_folder and not is_folder(folder):
        if not is_folder(folder.parent):
            raise OutputPathError(f"{folder}: output folder's parent '{folder.parent}' does not exist")
        try:
            folder.mkdir()
        except OSError as e:
            raise OutputPathError(f"{folder}: cannot create the output folder: {e.strerror or e}") from e
    if as_folder or is_folder(folder):
        if not to:
            raise UsageProblem(f"{folder} is a folder: pass --to to choose the output format")
        fmt = formats.get(to)
        return folder / (src.stem + fmt.suffixes[0]), fmt
    if to:
        fmt = formats.get(to)
        suffix = folder.suffix.lower()
        if suffix in formats.suffixes() and suffix not in fmt.suffixes:
            raise UsageProblem(f"--to {to} contradicts the output suffix '{folder.suffix}'")
        return folder, fmt
    return folder, formats.for_path(folder)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str | None = None,
    dtype: str = "keep",
    force: bool = False,
    strict: bool = False,
) -> ConvertResult:
    """Convert one checkpoint; ``dst`` may be a file or an existing folder (then ``to`` is needed).

    Raises :class:`~hyperkit.errors.BadInputError` (bad input, exit 3),
    :class:`~hyperkit.errors.VerificationError` (exit 1). NaN/Inf weights are a warning, or an
    error with ``strict=True``. Nothing is written unless every check passes.
    """
    if dtype not in DTYPES:
        raise UsageProblem(f"--dtype must be one of {', '.join(DTYPES)}, not '{dtype}'")
    src_p = check_input(src)
    dst_p, fmt = _resolve_dst(src_p, dst, to)
    check_output(dst_p, force=force, src=src_p)
    src_fmt = formats.for_path(src_p)
    hn = load(src_p, format=src_fmt.name)
    warnings = []
    if bad := nonfinite_tensors(hn):
        msg = f"{src_p}: {len(bad)} tensor(s) contain NaN/Inf: {', '.join(bad[:3])}"
        if strict:
            raise BadInputError(msg, hint="drop --strict to convert anyway")
        warnings.append(msg)
    hn, max_err, cast_warnings = cast_dtype(hn, dtype)
    warnings += cast_warnings + _target_notes(hn, fmt.name)
    size = _write_verified(hn, dst_p, fmt, force=force, src=src_p)
    return ConvertResult(
        src=src_p,
        dst=dst_p,
        src_format=src_fmt.name,
        dst_format=fmt.name,
        tensors=sum(1 for _ in hn.tensors()),
        parameters=hn.parameter_count,
        bytes_written=size,
        dtype=dtype if dtype != "keep" else ",".join(hn.dtypes()),
        warnings=warnings,
        max_cast_error=max_err,
    )


def _target_notes(hn: Model, fmt: str) -> list[str]:
    """What a user should know about where the output will (not) load."""
    if not isinstance(hn, SDKVHypernetwork):
        return []
    if fmt == "pt" and "bfloat16" in hn.dtypes():
        return ["bf16 .pt files load only in A1111 >= 1.3 (May 2023); use --dtype fp16 for older versions"]
    if fmt == "safetensors":
        return [
            "no UI loads hypernetworks from .safetensors (convert back to .pt to use it), and the new file's "
            "SHA256/AutoV2 differ, so Civitai hash lookups will not find it"
        ]
    return []
