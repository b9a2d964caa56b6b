"""``bake_sd``: SD hypernetworks into a base model, checked before writing, reported after.

Every problem that can be known from the inputs is raised before a byte is written: a base of
an unknown layout, a hypernetwork width that matches no attention layer (or a base of another
SD family than the hypernetwork's), a non-affine hypernetwork for a checkpoint base, an output
that is an input or exists without ``force``. The output is written beside its final name and
renamed into place only once complete and re-read; the parity report is computed from the very
values written, and ``CheckFailed`` (exit 1) follows when it is past the tolerance — the file is
kept, so it can be inspected.

Example:
    >>> default_tolerance("float32"), default_tolerance("float16")
    (0.0001, 0.01)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hyperkit._version import __version__
from hyperkit.bake.fold import (
    PARTS,
    FoldedLayer,
    Folds,
    LayerParity,
    blas_threads,
    fold_layer,
    guess_heads,
    work_dtype,
)
from hyperkit.bake.hnmath import Link, nonaffine_reason
from hyperkit.bake.sd_base import Attention, Base, TensorInfo, family, is_weights_file, open_base
from hyperkit.errors import (
    BadInputError,
    CheckFailed,
    OutputPathError,
    UnsupportedError,
    UsageProblem,
    VerificationError,
)
from hyperkit.paths import atomic_output, check_output, is_folder, sha256_file

CHANGED = ("to_k.weight", "to_v.weight", "to_out.0.bias")
#: Default parity tolerance (max abs error) by the base's weight dtype: the cast dominates.
TOLERANCES = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
#: Fold worker threads (each runs numpy's BLAS on one thread, see :class:`_Folder`).
WORKERS = 2


def default_tolerance(dtype: str) -> float:
    """The parity tolerance used when none is given, for a base stored in ``dtype``."""
    return TOLERANCES.get(dtype, 1e-4)


@dataclass
class BakeResult:
    """What a bake wrote and how closely the baked model matches the runtime-applied one."""

    base: Path
    output: Path
    container: str
    method: str  # "fold" (exact, weights rewritten) or "subgraph" (ONNX, MLP inserted)
    dtype: str
    hypernetworks: list[dict[str, object]]
    layers: list[LayerParity]
    tolerance: float
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    precision: str = "float64"  # what the fold (or the inserted MLP) computes in

    @property
    def max_abs(self) -> float:
        """The worst layer's max abs error."""
        return max((p.max_abs for p in self.layers), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether every layer is within the tolerance."""
        return self.max_abs <= self.tolerance


def load_links(inputs: list[Path], strengths: list[float]) -> list[Link]:
    """Read and structure-check every hypernetwork; pair each with its strength."""
    import hyperkit

    if strengths and len(strengths) != len(inputs):
        raise UsageProblem(f"{len(strengths)} --strength value(s) for {len(inputs)} hypernetwork(s): give one each")
    links = []
    for i, path in enumerate(inputs):
        hn = hyperkit.load(path)
        name = str(hn.metadata.get("name") or path.stem)
        links.append(Link(hn, strengths[i] if strengths else 1.0, name, sha256_file(path)))
    return links


def check_match(base: Base, links: list[Link], inputs: list[Path]) -> list[Attention]:
    """The attention layers the chain changes; every width must match and the family agree."""
    widths = set(base.widths)
    if not base.attentions:
        raise UnsupportedError(f"{base.path}: no attention layers found (to_k/to_v weights) — not an SD UNet?")
    for link, path in zip(links, inputs, strict=True):
        missing = [d for d in link.hn.dims if d not in widths]
        if missing:
            what = "no dim" if len(missing) == len(link.hn.dims) else "dims " + ", ".join(map(str, missing)) + " of it"
            raise BadInputError(
                f"{path}: {what} match no attention layer of {base.path} (context widths "
                f"{', '.join(map(str, sorted(widths)))}; the hypernetwork has {', '.join(map(str, link.hn.dims))})",
                hint="the hypernetwork was made for another base model architecture",
            )
        theirs, ours = family(link.hn.architecture()), family(base.architecture)
        if theirs and ours and theirs != ours:
            raise BadInputError(
                f"{path}: a {link.hn.architecture()} hypernetwork cannot go into {base.path}, "
                f"which looks like {base.architecture}",
                hint="bake it into a base model of its own architecture",
            )
    return [a for a in base.attentions if any(a.width in link.hn.modules for link in links)]


def _record(links: list[Link], inputs: list[Path], method: str, layers: int) -> dict[str, object]:
    return {
        "hyperkit_version": __version__,
        "method": method,
        "layers": layers,
        "hypernetworks": [
            {"file": p.name, "name": link.name, "sha256": link.sha256, "strength": link.strength, "dims": link.hn.dims}
            for link, p in zip(links, inputs, strict=True)
        ],
    }


def baked_metadata(existing: dict[str, str], record: dict[str, object]) -> dict[str, str]:
    """The base's metadata plus this bake appended to ``hyperkit.baked`` (a JSON list).

    Example:
        >>> json.loads(baked_metadata({"a": "1"}, {"method": "fold"})["hyperkit.baked"])
        [{'method': 'fold'}]
    """
    meta = dict(existing)
    try:
        history = json.loads(meta.get("hyperkit.baked", "[]"))
    except ValueError:
        history = []
    history = history if isinstance(history, list) else [history]
    meta["hyperkit.baked"] = json.dumps([*history, record], separators=(",", ":"))
    meta["hyperkit.version"] = __version__
    return meta


@contextmanager
def atomic_folder(dst: Path, *, force: bool, src: Path) -> Iterator[Path]:
    """Like :func:`hyperkit.paths.atomic_output` for a folder: built beside, renamed into place."""
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise OutputPathError(f"{dst}: output is the base folder (or inside it); refusing to write there")
    if not dst.parent.is_dir():
        raise OutputPathError(f"{dst}: output folder '{dst.parent}' does not exist")
    if dst.exists() and not force:
        raise OutputPathError(f"{dst}: already exists", hint="pass --force to overwrite it")
    if dst.exists() and not dst.is_dir():
        raise OutputPathError(f"{dst}: is a file, expected a folder for a diffusers UNet")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.hyperkit-tmp")
    old = dst.with_name(f".{dst.name}.{os.getpid()}.hyperkit-old")
    try:
        tmp.mkdir()
        yield tmp
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
    except OSError as e:
        raise OutputPathError(f"{dst}: cannot write: {e.strerror or e}", hint="check permissions and free space") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


class _Folder:
    """Folded tensors computed on worker threads, every layer queued at once in file order.

    Run it under ``blas_threads(1)``: two workers with one BLAS thread each keep both cores
    busy through the parts numpy runs on one thread (dtype conversions, the parity pass), where
    one worker with a two-thread BLAS left a core idle; the kernel copies meanwhile.
    """

    def __init__(self, base: Base, targets: list[Attention], links: list[Link], dtype: type) -> None:
        self.base, self.links, self.folds = base, links, Folds(links, dtype)
        key = (lambda a: min(base.infos[a.key(p)].begin for p in CHANGED)) if base.infos else None
        self.order = sorted(targets, key=key) if key else list(targets)
        self.owner = {att.key(p): i for i, att in enumerate(self.order) for p in CHANGED}
        if base.infos:
            prefetch(base.weights, [base.infos[att.key(p)] for att in self.order for p in PARTS])
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="hyperkit-fold")
        self.futures: dict[int, Future[FoldedLayer]] = {}
        for i, att in enumerate(self.order):
            heads = guess_heads(att.channels, base.architecture)
            self.futures[i] = self.pool.submit(self._fold, att, heads)

    def _fold(self, att: Attention, heads: int) -> FoldedLayer:
        return fold_layer(att, self.base.array, self.links, self.folds, heads=heads)

    @property
    def names(self) -> list[str]:
        """Every tensor the fold replaces."""
        return list(self.owner)

    def ready(self, name: str) -> bool:
        """Whether the layer of ``name`` is folded."""
        return self.futures[self.owner[name]].done()

    def value(self, name: str) -> np.ndarray:
        """The folded tensor ``name``, waiting for it; handed out once (then dropped here)."""
        return self.futures[self.owner[name]].result().tensors.pop(name)

    def finish(self) -> list[LayerParity]:
        """Every layer's parity row, in file order."""
        parity = [self.futures[i].result().parity for i in range(len(self.order))]
        self.pool.shutdown()
        return parity


def prefetch(path: Path, spans: list[TensorInfo]) -> None:
    """Ask the kernel to read these tensors ahead, in the background.

    From a cold page cache, the fold workers would otherwise fault them in through the memory
    map a few pages at a time, waiting on the disk between matmuls while the copy reads the rest
    of the file; read ahead, they arrive at the disk's streaming speed. Advice only.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        for span in spans:
            with suppress(OSError):
                os.posix_fadvise(fd, span.begin, span.end - span.begin, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def _verify(out: Path, base: Base, written: dict[str, np.ndarray]) -> None:
    """Re-read the header and the changed tensors of what was written."""
    from hyperkit.bake.sd_base import open_safetensors
    from hyperkit.formats.arrays import bit_equal

    back = open_safetensors(out)
    if base.infos and [(n, i.dtype, i.shape) for n, i in back.infos.items()] != [
        (n, i.dtype, i.shape) for n, i in base.infos.items()
    ]:
        raise VerificationError(f"{out}: the written tensor list differs from the base's")
    for name, arr in written.items():
        if not bit_equal(back.array(name), arr):
            raise VerificationError(f"{out}: tensor '{name}' does not read back as written")


def bake_checkpoint(
    base: Base,
    targets: list[Attention],
    links: list[Link],
    out: Path,
    meta: dict[str, str],
    dtype: type,
    progress: Callable[[int, int], None] | None = None,
) -> list[LayerParity]:
    """Fold into a safetensors/diffusers/ckpt base in ``dtype`` (the working precision) and
    write ``out`` (.safetensors)."""
    with blas_threads(1):  # see _Folder
        return _bake_checkpoint(base, targets, links, out, meta, dtype, progress)


def _bake_checkpoint(
    base: Base,
    targets: list[Attention],
    links: list[Link],
    out: Path,
    meta: dict[str, str],
    dtype: type,
    progress: Callable[[int, int], None] | None,
) -> list[LayerParity]:
    from hyperkit.bake.stream import write_streaming
    from hyperkit.formats.safetensors_io import write_safetensors

    folder = _Folder(base, targets, links, dtype)
    kept: dict[str, np.ndarray] = {}
    sample = {att.key("to_k.weight") for att in targets[:4]}  # re-read a few after writing

    def value(name: str) -> np.ndarray:
        arr = folder.value(name)
        if name in sample:
            kept[name] = arr
        return arr

    def take(name: str, wait: bool) -> np.ndarray | None:
        return value(name) if wait or folder.ready(name) else None

    try:
        if base.infos:
            write_streaming(base.weights, out, base.infos, take, folder.names, meta, progress)
        else:
            items = [(n, value(n) if n in folder.owner else a) for n, a in base.arrays.items()]
            write_safetensors(out, items, meta)
        parity = folder.finish()
    finally:
        folder.pool.shutdown(cancel_futures=True)
    _verify(out, base, kept)
    return parity


def bake_sd(
    inputs: list[Path],
    base_path: Path,
    output: Path,
    *,
    strengths: list[float] | None = None,
    tolerance: float | None = None,
    float64: bool = False,
    force: bool = False,
    check: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> BakeResult:
    """Bake SD hypernetworks into ``base_path``; with ``check``, raise :class:`CheckFailed` past
    the tolerance (:func:`parity_failure` gives that error for a result). The fold runs in
    float32 for fp16/bf16 bases unless ``float64`` (:func:`hyperkit.bake.fold.work_dtype`).
    ``progress(n, total)`` hears of every ``n`` more bytes of a checkpoint's ``total`` written."""
    started = time.perf_counter()
    for p in inputs:
        if output.resolve() == p.resolve():
            raise OutputPathError(f"{output}: output is one of the hypernetworks; refusing to overwrite it")
    links = load_links(inputs, list(strengths or []))
    if base_path.suffix.lower() == ".onnx" and not is_folder(base_path):
        from hyperkit.bake.onnx_unet import bake_onnx

        result = bake_onnx(inputs, links, base_path, output, tolerance=tolerance, float64=float64, force=force)
    else:
        result = _bake_weights(
            inputs, links, base_path, output, tolerance=tolerance, float64=float64, force=force, progress=progress
        )
    result.seconds = time.perf_counter() - started
    if check and not result.passed:
        raise parity_failure(result)
    return result


def parity_failure(result: BakeResult) -> CheckFailed:
    """The error for a bake past its tolerance, naming the worst layer."""
    worst = max(result.layers, key=lambda p: p.max_abs)
    return CheckFailed(
        f"{result.output}: parity failed: max abs error {worst.max_abs:.3g} in {worst.layer} is past the "
        f"tolerance {result.tolerance:g} (the file was written; inspect it before use)"
    )


def _bake_weights(
    inputs: list[Path],
    links: list[Link],
    base_path: Path,
    output: Path,
    *,
    tolerance: float | None,
    float64: bool,
    force: bool,
    progress: Callable[[int, int], None] | None,
) -> BakeResult:
    base = open_base(base_path)
    targets = check_match(base, links, inputs)
    for link, path in zip(links, inputs, strict=True):
        if reason := nonaffine_reason(link.hn):
            raise UnsupportedError(
                f"{path}: cannot fold into the checkpoint {base_path}: its {reason} make(s) it non-linear, "
                "so no change of the base's weights reproduces it exactly",
                hint="export the UNet to ONNX and bake into that (--into unet/model.onnx): the MLP is inserted "
                "in front of the K/V projections there",
            )
    dtype = base.dtype(targets[0].key("to_k.weight")).name
    work = work_dtype(dtype, float64=float64)
    meta = baked_metadata(base.metadata, _record(links, inputs, "fold", len(targets)))
    warnings = [f"{base_path}: dropped non-tensor entries {', '.join(base.dropped[:5])}"] if base.dropped else []
    if base.container == "diffusers-folder":
        # Other weight files (variants, .bin) are left out: a loader picking one of them would
        # run the base's weights, not the baked ones.
        others = [i for i in base.weights.parent.iterdir() if i.is_file() and not i.name.startswith(".")]
        skipped = [i.name for i in others if is_weights_file(i.name) and i.name != base.weights.name]
        if skipped:
            warnings.append(f"{base_path}: left out the other weight files {', '.join(sorted(skipped))} (not baked)")
        with atomic_folder(output, force=force, src=base_path) as tmp:
            for item in others:
                if not is_weights_file(item.name):
                    shutil.copy2(item, tmp / item.name)
            parity = bake_checkpoint(base, targets, links, tmp / base.weights.name, meta, work, progress)
    else:
        if output.suffix.lower() not in (".safetensors", ".sft"):
            raise UsageProblem(f"{output}: a baked checkpoint is written as .safetensors; name the output so")
        check_output(output, force=force, src=base_path)
        with atomic_output(output, force=force, src=base_path) as tmp:
            parity = bake_checkpoint(base, targets, links, tmp, meta, work, progress)
    with suppress(Exception):
        base.close()
    return BakeResult(
        base_path,
        output,
        base.container,
        "fold",
        dtype,
        _record(links, inputs, "fold", len(targets))["hypernetworks"],  # type: ignore[arg-type]
        parity,
        tolerance if tolerance is not None else default_tolerance(dtype),
        warnings=warnings,
        precision=work.__name__,
    )
