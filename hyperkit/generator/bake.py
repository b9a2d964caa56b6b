"""``hyperkit bake`` for generators: θ = H(z₀) once, in float32, into a static target ONNX model.

The baked model has one input ``x`` and one output ``y``, one initializer per target parameter
named as the spec names it (LoRA slots merged, or kept as ``P`` + ``P.lora_A`` + ``P.lora_B``
with ``lora_factors``), and ``metadata_props`` with ``hyperkit.family = "generator-baked"``, the
source spec, the condition, the source file's SHA-256 and hyperkit's version. Before the file is
renamed into place its parity is measured: ONNX Runtime (CPU) on seeded random inputs against the
*dynamic* PyTorch model (H and f through ``functional_call``), max abs and relative error, plus
per-slot ‖θ‖ and ‖Δ‖ (did the generated weights change anything?). Past the tolerance nothing is
written and :class:`~hyperkit.errors.CheckFailed` (exit 1) is raised.

Example:
    >>> import tempfile, pathlib, hyperkit
    >>> from hyperkit.generator.examples import tiny_generator
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> hyperkit.save(tiny_generator(), d / "g.safetensors")
    >>> [r.passed for r in bake_generator(d / "g.safetensors", "2", d / "task2.onnx")]
    [True]
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperkit._version import __version__
from hyperkit.errors import BadInputError, CheckFailed, UsageProblem
from hyperkit.generator.model import Generator
from hyperkit.generator.spec import Spec
from hyperkit.paths import atomic_output, check_input, check_output, sha256_file

BAKED_FAMILY = "generator-baked"
#: Max abs error allowed by default between ORT and PyTorch (fp32).
DEFAULT_TOLERANCE = 1e-5
PARITY_BATCH = 8
PARITY_SEED = 0


@dataclass
class BakeReport:
    """What one bake produced and how close it is to the dynamic model."""

    output: str
    condition: dict[str, Any]
    max_abs: float
    max_rel: float
    tolerance: float
    slots: dict[str, dict[str, Any]]
    theta: str | None = None
    provider: str = "CPUExecutionProvider"
    lora_factors: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def parse_condition(text: str, spec: Spec, where: str) -> list[dict[str, Any]]:
    """The conditions ``--condition`` names: ``[{"task_id": 2}, ...]`` or ``[{"vector": [...]}]``.

    Example:
        >>> from hyperkit.generator.examples import tiny_generator
        >>> parse_condition("0,3", tiny_generator().spec, "g")
        [{'task_id': 0}, {'task_id': 3}]
    """
    text = text.strip()
    if spec.condition_kind == "task_id":
        ids = []
        for part in text.split(","):
            part = part.strip()
            if not part.lstrip("-").isdigit():
                raise UsageProblem(f"{where}: --condition takes task ids (integers) for this generator, got '{part}'")
            if not 0 <= int(part) < spec.condition_num:
                raise BadInputError(
                    f"{where}: task id {int(part)} is out of range: the generator has "
                    f"{spec.condition_num} tasks (0..{spec.condition_num - 1})"
                )
            ids.append(int(part))
        if len(set(ids)) != len(ids):
            raise UsageProblem(f"{where}: --condition lists a task id twice")
        return [{"task_id": i} for i in ids]
    if text.lower().endswith(".npy"):
        path = check_input(text)
        try:
            vector = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise BadInputError(f"{path}: not a readable .npy array: {e}") from e
        if vector.ndim != 1 or vector.dtype.kind not in "fiu":
            raise BadInputError(f"{path}: expected a 1-D numeric array, got {vector.dtype}{list(vector.shape)}")
        values = [float(v) for v in vector]
    else:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise UsageProblem(
                f"{where}: --condition takes a vector (0.1,-0.4,2) or a .npy file, got '{text}'"
            ) from None
    if len(values) != spec.condition_dim:
        raise BadInputError(
            f"{where}: condition vector has {len(values)} values, the generator expects {spec.condition_dim}"
        )
    if not all(np.isfinite(values)):
        raise BadInputError(f"{where}: condition vector holds NaN or Inf")
    return [{"vector": values}]


def output_paths(output: Path, conditions: list[dict[str, Any]]) -> list[Path]:
    """One output per condition: ``OUT`` itself, or ``OUT-task{id}`` for several task ids."""
    if len(conditions) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-task{c['task_id']}{output.suffix}") for c in conditions]


def bake_generator(
    src: str | os.PathLike[str],
    condition: str,
    output: str | os.PathLike[str],
    *,
    lora_factors: bool = False,
    theta: str | os.PathLike[str] | None = None,
    tolerance: float | None = None,
    force: bool = False,
) -> list[BakeReport]:
    """Bake ``src`` for each condition in ``condition``; return one report per written model.

    Raises :class:`CheckFailed` (exit 1) when a model misses the tolerance; the models that pass
    are written, the one that fails is not.
    """
    import hyperkit
    from hyperkit.generator.torch_modules import GeneratorModule

    src_p = check_input(src)
    gen = hyperkit.load(src_p)
    if not isinstance(gen, Generator):
        raise BadInputError(f"{src_p}: not a generator (an sd-kv hypernetwork bakes --into a base model)")
    tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
    conditions = parse_condition(condition, gen.spec, str(src_p))
    outputs = output_paths(Path(output), conditions)
    thetas = output_paths(Path(theta), conditions) if theta is not None else [None] * len(outputs)
    for path in [*outputs, *(t for t in thetas if t is not None)]:
        check_output(path, force=force, src=src_p)
    module = GeneratorModule.from_generator(gen).eval()
    digest = sha256_file(src_p)
    reports: list[BakeReport] = []
    failed: list[BakeReport] = []
    for cond, out, theta_path in zip(conditions, outputs, thetas, strict=True):
        report = _bake_one(gen, module, cond, out, theta_path, lora_factors, tol, digest, force, str(src_p))
        (reports if report.passed else failed).append(report)
    if failed:
        worst = max(failed, key=lambda r: r.max_abs)
        raise CheckFailed(
            f"{worst.output}: parity failed: max abs error {worst.max_abs:.3g} > tolerance {tol:g} "
            f"(condition {json.dumps(worst.condition)}); not written",
            hint="raise --tolerance if the generator is meant to be that sensitive",
        )
    return reports


def _bake_one(
    gen: Generator,
    module: Any,
    cond: dict[str, Any],
    out: Path,
    theta_path: Path | None,
    lora_factors: bool,
    tol: float,
    digest: str,
    force: bool,
    source: str,
) -> BakeReport:
    import torch

    from hyperkit.generator import onnx_graph

    spec = gen.spec
    kwargs = {"task_id": cond["task_id"]} if "task_id" in cond else {"condition": torch.tensor(cond["vector"])}
    with torch.no_grad():
        theta = module.theta(**kwargs)
        params = {k: v.detach().float().numpy() for k, v in module.params(theta).items()}
    theta_np = theta.numpy()
    for slot in spec.slots:
        if not np.isfinite(params[slot.param]).all():
            raise BadInputError(
                f"{source}: generated weights for '{slot.param}' contain NaN or Inf "
                f"(condition {json.dumps(cond)}); nothing written"
            )
    weights, factored = _initializers(gen, spec, theta_np, params, lora_factors)
    model = onnx_graph.baked_model(spec, weights, out.stem, factored)
    meta = {
        "hyperkit.family": BAKED_FAMILY,
        "hyperkit.spec": gen.spec_text,
        "hyperkit.condition": json.dumps(cond),
        "hyperkit.source_sha256": digest,
        "hyperkit.version": __version__,
        "hyperkit.lora": "factors" if factored else "merged",
    }
    from onnx import checker, helper

    helper.set_model_props(model, meta)
    checker.check_model(model, full_check=True)
    rng = np.random.default_rng(PARITY_SEED)
    x = rng.standard_normal((PARITY_BATCH, *spec.input_shape)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x), **kwargs).numpy()
    try:
        return _write_checked(model, out, theta_path, spec, params, meta, x, ref, tol, gen, theta_np, cond, force)
    except _Discard as discarded:  # past the tolerance: the temporary file is gone, report it
        return discarded.report


def _write_checked(
    model: Any,
    out: Path,
    theta_path: Path | None,
    spec: Spec,
    params: dict[str, np.ndarray],
    meta: dict[str, str],
    x: np.ndarray,
    ref: np.ndarray,
    tol: float,
    gen: Generator,
    theta_np: np.ndarray,
    cond: dict[str, Any],
    force: bool,
) -> BakeReport:
    """Write ``out`` beside its final name, measure parity with ORT, keep it only if it passes."""
    from hyperkit.formats.safetensors_io import write_safetensors
    from hyperkit.runtime import open_session

    with atomic_output(out, force=force) as tmp:
        tmp.write_bytes(model.SerializeToString())
        session = open_session(tmp, prefer_gpu=False, threads=1)
        got = session.run({"x": x})[0]
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = max(float(np.abs(ref).max()) if ref.size else 0.0, float(np.finfo(np.float32).tiny))
        max_rel = max_abs / scale
        report = BakeReport(
            str(out),
            cond,
            max_abs,
            max_rel,
            tol,
            _slot_norms(gen, spec, theta_np, params),
            str(theta_path) if theta_path else None,
            session.provider,
            meta["hyperkit.lora"] == "factors",
        )
        if not report.passed:
            raise _Discard(report)
        if theta_path is not None:
            with atomic_output(theta_path, force=force) as ttmp:
                write_safetensors(ttmp, [(s.param, params[s.param]) for s in spec.slots], meta)
    return report


class _Discard(Exception):
    """Raised inside ``atomic_output`` to throw the file away, carrying the failed report out."""

    def __init__(self, report: BakeReport) -> None:
        super().__init__(report.output)
        self.report = report


def _initializers(
    gen: Generator, spec: Spec, theta: np.ndarray, params: dict[str, np.ndarray], lora_factors: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The baked initializers: effective parameters, or base + factors for LoRA slots."""
    weights: dict[str, np.ndarray] = {}
    factored = {}
    base = dict(gen.tensors())
    for slot in spec.slots:
        if lora_factors and slot.mode == "lora":
            a_len = slot.rank * slot.fan_in
            span = theta[slot.offset : slot.offset + slot.numel]
            weights[slot.param] = np.asarray(base[f"base.{slot.param}"], np.float32)
            weights[f"{slot.param}.lora_A"] = span[:a_len].reshape(slot.rank, slot.fan_in)
            weights[f"{slot.param}.lora_B"] = span[a_len:].reshape(slot.fan_out, slot.rank)
            factored[slot.param] = slot
        else:
            weights[slot.param] = params[slot.param]
    return weights, factored


def _slot_norms(gen: Generator, spec: Spec, theta: np.ndarray, params: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per slot: ‖θ_s‖ (generated values), ‖W‖, and ‖Δ‖ = ‖W − base‖ for delta and LoRA slots."""
    base = dict(gen.tensors())
    out: dict[str, Any] = {}
    for slot in spec.slots:
        w = params[slot.param].astype(np.float64)
        entry: dict[str, Any] = {"mode": slot.mode, "theta_norm": None, "delta_norm": None}
        if slot.mode != "static":
            entry["theta_norm"] = float(np.linalg.norm(theta[slot.offset : slot.offset + slot.numel]))
        if slot.mode in ("delta", "lora"):
            entry["delta_norm"] = float(np.linalg.norm(w - np.asarray(base[f"base.{slot.param}"], np.float64)))
        entry["weight_norm"] = float(np.linalg.norm(w))
        out[slot.param] = entry
    return out


def render_reports(reports: list[BakeReport]) -> str:
    """The parity report as text: one block per baked model, a table of slots.

    Example:
        >>> r = BakeReport("t.onnx", {"task_id": 2}, 1e-7, 2e-7, 1e-5, {"fc.weight": {"mode": "full",
        ...     "theta_norm": 1.0, "delta_norm": None, "weight_norm": 1.0}})
        >>> print(render_reports([r]).splitlines()[0])
        t.onnx: condition {"task_id": 2}; parity max abs 1e-07, max rel 2e-07 (tolerance 1e-05): ok
    """
    lines = []
    for r in reports:
        verdict = "ok" if r.passed else "FAILED"
        lines.append(
            f"{r.output}: condition {json.dumps(r.condition)}; parity max abs {r.max_abs:.3g}, "
            f"max rel {r.max_rel:.3g} (tolerance {r.tolerance:g}): {verdict}"
        )
        lines.append("  | slot | mode | ‖θ‖ | ‖Δ‖ | ‖W‖ |")
        lines.append("  |---|---|---:|---:|---:|")
        for name, s in r.slots.items():
            cells = [f"{s[k]:.4g}" if s[k] is not None else "-" for k in ("theta_norm", "delta_norm", "weight_norm")]
            lines.append(f"  | {name} | {s['mode']} | {' | '.join(cells)} |")
        if r.theta:
            lines.append(f"  generated weights: {r.theta}")
        if r.lora_factors:
            lines.append("  LoRA slots kept as factors (P.lora_A, P.lora_B)")
    return "\n".join(lines)
