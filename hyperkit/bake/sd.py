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
import shutil
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from hyperkit._version import __version__
from hyperkit.bake.checkpoint import atomic_folder, bake_checkpoint
from hyperkit.bake.fold import LayerParity, work_dtype
from hyperkit.bake.hnmath import Link, nonaffine_reason
from hyperkit.bake.sd_base import Attention, Base, family, is_weights_file, open_base
from hyperkit.errors import (
    BadInputError,
    CheckFailed,
    OutputPathError,
    UnsupportedError,
    UsageProblem,
)
from hyperkit.paths import atomic_output, check_output, is_folder, sha256_file

#: Default parity tolerance (max abs error) by the base's weight dtype: the cast dominates.
TOLERANCES = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


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
    record = _record(links, inputs, "fold", len(targets))
    metas = [baked_metadata(part.metadata, record) for part in base.files()]
    warnings = [f"{base_path}: dropped non-tensor entries {', '.join(base.dropped[:5])}"] if base.dropped else []
    if base.container == "diffusers-folder":
        # Other weight files (variants, .bin) are left out: a loader picking one of them would
        # run the base's weights, not the baked ones. A shard index is kept with its shards.
        ours = {base.weights.name} | {part.weights.name for part in base.files()}
        others = [i for i in base.weights.parent.iterdir() if i.is_file() and not i.name.startswith(".")]
        skipped = [i.name for i in others if is_weights_file(i.name) and i.name not in ours]
        if skipped:
            warnings.append(f"{base_path}: left out the other weight files {', '.join(sorted(skipped))} (not baked)")
        with atomic_folder(output, force=force, src=base_path) as tmp:
            for item in others:
                if not is_weights_file(item.name) or (base.shards and item.name == base.weights.name):
                    shutil.copy2(item, tmp / item.name)
            outs = [tmp / part.weights.name for part in base.files()]
            parity = bake_checkpoint(base, targets, links, outs, metas, work, progress)
    else:
        if output.suffix.lower() not in (".safetensors", ".sft"):
            raise UsageProblem(f"{output}: a baked checkpoint is written as .safetensors; name the output so")
        check_output(output, force=force, src=base_path)
        with atomic_output(output, force=force, src=base_path) as tmp:
            parity = bake_checkpoint(base, targets, links, [tmp], metas, work, progress)
    with suppress(Exception):
        base.close()
    return BakeResult(
        base_path,
        output,
        base.container,
        "fold",
        dtype,
        record["hypernetworks"],  # type: ignore[arg-type]
        parity,
        tolerance if tolerance is not None else default_tolerance(dtype),
        warnings=warnings,
        precision=work.__name__,
    )
