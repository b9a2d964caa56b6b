"""``hyperkit demo``: the bundled fixtures through every format, end to end, offline.

Example:
    >>> fixture_path("b_a1111_default.pt").name
    'b_a1111_default.pt'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hyperkit.errors import EnvironmentProblem, OutputPathError

DEMO_FIXTURE = "b_a1111_default.pt"


def fixture_dir() -> Path:
    """Where the bundled fixtures live: ``$HYPERKIT_FIXTURES`` or the repository's ``fixtures/``."""
    env = os.environ.get("HYPERKIT_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "fixtures"


def fixture_path(name: str) -> Path:
    """The path of one bundled fixture, or a clear error when the fixtures are not there."""
    path = fixture_dir() / name
    if not path.is_file():
        raise EnvironmentProblem(
            f"bundled fixture {path} not found", hint="run from a hyperkit checkout or set HYPERKIT_FIXTURES"
        )
    return path


DEMO_OUTPUTS = (
    "demo.safetensors",
    "demo.onnx",
    "demo.pt",
    "demo-unet-baked.safetensors",
    "demo-unet-baked.onnx",
    "demo-generator.onnx",
)


def prepare_out(out: Path, *, force: bool = False) -> None:
    """Make ``out`` ready for the demo's files, or refuse before anything is written.

    ``out`` is created when its parent exists; demo files already in it are overwritten only
    with ``force``.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "demo"
        >>> prepare_out(out)
        >>> out.is_dir()
        True
    """
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out}: is a file, expected a folder for the demo's files")
    if not out.exists():
        if not out.parent.is_dir():
            raise OutputPathError(
                f"{out}: cannot create it: '{out.parent}' does not exist",
                hint="create the parent folder first; the demo creates only the last folder",
            )
        out.mkdir()
        return
    for name in DEMO_OUTPUTS:
        if (out / name).is_dir():  # convert() would write *into* it
            raise OutputPathError(f"{out / name}: is a folder, expected a file path")
    existing = [name for name in DEMO_OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise OutputPathError(
            f"{out}: already holds {', '.join(existing)}",
            hint="pass --force to overwrite them, or choose another --out",
        )


def run_demo(out: Path | None = None, *, force: bool = False) -> Iterator[str]:
    """Convert a fixture .pt -> .safetensors -> .onnx -> .pt, run the ONNX model, yield log lines.

    Without ``out`` the files go to a temporary folder removed at the end (also on an error or
    Ctrl-C); with ``out`` they are kept there (see :func:`prepare_out`). Every error is raised
    before the first line when it concerns the paths.
    """
    src = fixture_path(DEMO_FIXTURE)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="hyperkit-demo-", ignore_cleanup_errors=True) as tmp:
            yield f"hyperkit demo: {src.name} through every format in a temporary folder (--out keeps the files)"
            yield from _steps(src, Path(tmp), force=False)
        return
    prepare_out(out, force=force)
    yield f"hyperkit demo: {src.name} through every format in {out}"
    yield from _steps(src, out, force=force)


def _steps(src: Path, out: Path, *, force: bool) -> Iterator[str]:
    import numpy as np

    from hyperkit.conversion import convert, load, strict_equal
    from hyperkit.formats.arrays import bit_equal
    from hyperkit.inspection import inspect_file
    from hyperkit.render import render_convert
    from hyperkit.runtime import make_session

    before = inspect_file(src)["verdicts"]["a1111"]
    yield f"  source as saved by torch {'loads' if before['loads'] else 'fails'} in A1111: {before['reason'] or 'ok'}"
    steps = [
        (src, out / "demo.safetensors"),
        (out / "demo.safetensors", out / "demo.onnx"),
        (out / "demo.onnx", out / "demo.pt"),
    ]
    for a, b in steps:
        yield "  convert " + render_convert(convert(a, b, force=force))
    original, final = load(src), load(out / "demo.pt")
    same = all(bit_equal(x, y) for (_, x), (_, y) in zip(original.tensors(), final.tensors(), strict=True))
    yield (
        f"  round trip .pt -> .safetensors -> .onnx -> .pt: {sum(1 for _ in final.tensors())} tensors "
        f"{'bit-exact' if same else 'DIFFER'}; metadata kept: "
        f"{all(strict_equal(final.metadata[k], v) for k, v in original.metadata.items())}"
    )
    session, provider = make_session(out / "demo.onnx")
    rng = np.random.default_rng(0)
    feeds = {f"context_{d}": rng.standard_normal((2, 77, d)).astype("f4") for d in final.dims}
    moved = session.run(None, feeds)
    still = session.run(None, {**feeds, "strength": np.array(0.0, "f4")})
    names = [o.name for o in session.get_outputs()]
    identity = all(np.array_equal(s, feeds["context_" + n.split("_")[1]]) for n, s in zip(names, still, strict=True))
    shift = max(
        float(np.abs(m - feeds["context_" + n.split("_")[1]]).mean()) for n, m in zip(names, moved, strict=True)
    )
    yield (
        f"  ONNX Runtime ({provider}): outputs {', '.join(names)}; strength 1 moves K/V inputs by "
        f"mean |Δ| {shift:.3g}; strength 0 returns them exactly: {identity}"
    )
    report = inspect_file(out / "demo.pt")
    for tool, verdict in report["verdicts"].items():
        yield f"  demo.pt {tool}: {'loads' if verdict['loads'] else 'does not load'}"
    yield from _generator_steps(out, force=force)
    from hyperkit.bake.demo_step import bake_demo_lines  # bake into the bundled tiny UNet (checkpoint, ONNX)

    yield from bake_demo_lines(src, out, force=force)
    from hyperkit.eval.demo import demo_lines  # the eval step: bundled images, tiny CLIP, in memory

    yield from demo_lines()
    yield "done"


GENERATOR_FIXTURE = "generator/tiny_conv.safetensors"


def _generator_steps(out: Path, *, force: bool) -> Iterator[str]:
    """A bundled generator baked for task 2 into ``demo-generator.onnx`` and run on ONNX Runtime."""
    from hyperkit.generator.bake import bake_generator
    from hyperkit.onnxrun import run_model

    src = fixture_path(GENERATOR_FIXTURE)
    (report,) = bake_generator(src, "2", out / "demo-generator.onnx", force=force)
    yield (
        f"  bake {src.name} --condition 2: static target ONNX, parity vs PyTorch max abs {report.max_abs:.2g} "
        f"(tolerance {report.tolerance:g})"
    )
    result = run_model(out / "demo-generator.onnx", batch=4)
    y = result["outputs"]["y"]
    yield f"  run demo-generator.onnx ({result['provider']}): y {y['shape']}, mean {y['mean']:.3g}"
