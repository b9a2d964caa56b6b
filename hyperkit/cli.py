"""The ``hyperkit`` command: parse, call the library, render. No heavy import at start-up.

Every command imports what it needs inside its body, so ``hyperkit --help`` costs little more
than importing Click. Errors print one ``Error:`` line (and a ``Hint:``), made printable by
:func:`hyperkit.errors.sanitize`, and exit with the code of :class:`hyperkit.errors.ExitCode`;
``--debug`` prints the traceback first and keeps the same exit code. Ctrl-C exits 130 and
SIGTERM 143, both after the ``finally`` blocks have removed any temporary output.

Example:
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(cli, ["convert", "missing.pt", "x.safetensors"]).exit_code
    3
"""

from __future__ import annotations

import json
import re
import signal
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from hyperkit._version import __version__
from hyperkit.errors import ExitCode, HyperkitError, UsageProblem, sanitize

FORMAT_NAMES = ["pt", "safetensors", "onnx"]  # kept literal so --help needs no registry import
INTERRUPTED = "interrupted; no partial output was left"
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # the shell's 128 + signal number


class Terminated(BaseException):
    """SIGTERM turned into an exception, so the stack unwinds (and temporaries go) as for Ctrl-C.

    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` (a folder conversion
    going on after one file's failure) must not swallow it.
    """


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not interrupt the cleanup
    raise Terminated


def _echo_error(message: str, hint: str | None = None) -> None:
    click.echo(f"Error: {sanitize(message)}", err=True)
    if hint:
        click.echo(f"Hint: {sanitize(hint)}", err=True)


def _echo_traceback(text: str) -> None:
    # Line by line, so a hostile path in the message cannot break out of its line.
    for line in text.rstrip("\n").split("\n"):
        click.echo(sanitize(line, limit=10_000), err=True)


def _echo_text(text: str) -> None:
    """Print rendered output on stdout, each line made printable (the renderers already escape
    paths; this keeps a name that slipped through from crashing the encoder or the terminal)."""
    click.echo("\n".join(sanitize(line, limit=100_000) for line in text.split("\n")))


def _echo_warnings(warnings: Iterable[str]) -> None:
    """Each distinct warning once (a folder run repeats the same general note for every file)."""
    for warning in dict.fromkeys(warnings):
        click.echo(f"Warning: {sanitize(warning)}", err=True)


class _Group(click.Group):
    """Turns library errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Terminated:
            _echo_error(INTERRUPTED)
            ctx.exit(EXIT_SIGTERM)
        except KeyboardInterrupt:
            _echo_error(INTERRUPTED)
            ctx.exit(EXIT_SIGINT)
        except HyperkitError as e:
            if ctx.meta.get("hyperkit.debug"):
                _echo_traceback(traceback.format_exc())
            _echo_error(e.message, e.hint)
            ctx.exit(int(e.exit_code))
        except Exception as e:
            debug = ctx.meta.get("hyperkit.debug")
            if debug:
                _echo_traceback(traceback.format_exc())
            _echo_error(
                f"internal error: {type(e).__name__}: {e}",
                "please report it with the traceback above"
                if debug
                else "rerun with --debug for the traceback and please report it",
            )
            ctx.exit(int(ExitCode.INTERNAL))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hyperkit")
@click.option("--debug", is_flag=True, help="Print the traceback of an error (the exit code stays the same).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Safe, lossless tools for hypernetwork checkpoints.

    \b
    Exit codes: 0 ok, 1 a check said no, 2 usage error, 3 bad input
    (unknown/corrupt/unsafe/unsupported file, unusable output path),
    4 environment, 5 internal error, 130 Ctrl-C, 143 SIGTERM.

    \b
    Examples:
      hyperkit inspect anime.pt
      hyperkit convert anime.pt anime.safetensors
      hyperkit convert models/hypernetworks/ out/ --to safetensors
      hyperkit demo
    """
    ctx.meta["hyperkit.debug"] = debug


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _emit_json(data: Any) -> None:
    """Print ``data`` as JSON that always encodes and never moves the terminal's cursor.

    ``ensure_ascii=False`` keeps names readable, but a lone surrogate (an undecodable byte of a
    file name) cannot be encoded to UTF-8 and C1 controls reach the terminal; they can only occur
    inside JSON strings, where ``\\uXXXX`` is a valid escape that ``json.loads`` turns back into
    the same character, so nothing is lost.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False)
    click.echo(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(path: Path, as_json: bool) -> None:
    """Describe a checkpoint without executing anything in it.

    Shows the format, family, layer structure, activation, layer norm, dropout, dtypes,
    parameter count, every metadata value with its type (and the A1111 defaults that apply to
    missing ones), SHA256 and A1111's short hash (AutoV2), the pickle globals found, and whether
    A1111, ComfyUI and torch.load(weights_only=True) load it — with the reason when not.

    \b
    Examples:
      hyperkit inspect anime.pt
      hyperkit inspect anime.pt --json > anime-report.json
    """
    from hyperkit.inspection import inspect_file
    from hyperkit.render import render_inspect

    report = inspect_file(path)
    if as_json:
        _emit_json(report)
    else:
        _echo_text(render_inspect(report))


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path())  # a str: a trailing "/" (DST is a folder) must survive
@click.option("--to", type=click.Choice(FORMAT_NAMES), help="Output format (default: from DST's suffix).")
@click.option(
    "--dtype",
    type=click.Choice(["keep", "fp32", "fp16", "bf16"]),
    default="keep",
    show_default=True,
    help="Cast floating tensors; verification then compares with the cast values.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--skip-existing", is_flag=True, help="Folder mode: leave outputs that exist, report them as skipped.")
@click.option("--strict", is_flag=True, help="Refuse NaN/Inf weights instead of warning.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert(
    src: Path, dst: str, to: str | None, dtype: str, force: bool, skip_existing: bool, strict: bool, as_json: bool
) -> None:
    """Convert SRC to DST losslessly (.pt, .safetensors, .onnx), verifying what was written.

    The output is reloaded and every tensor compared bit-for-bit (or with the cast values for
    --dtype) and every metadata value and type checked before it is renamed into place, so a
    failure never leaves a partial file. Pickles are read with an allowlist: nothing in the
    file runs. A written .pt loads in A1111, ComfyUI and torch.load(weights_only=True).
    DST may be a folder (an existing one, or one written with a trailing / that is created
    if its parent exists): the output then keeps SRC's name and --to chooses the format.

    SRC may be a folder: every checkpoint under it (recursively, mirroring subfolders; hidden
    files and DST itself skipped) is converted into the folder DST with --to choosing the
    format. DST is created if its parent exists (its parents are not). Two files with one
    output (m.pt, m.ckpt) stop the run before anything is written; a failing file does not
    stop the others, and the exit code is the worst failure's. A summary table follows.

    \b
    Examples:
      hyperkit convert anime.pt anime.safetensors
      hyperkit convert anime.pt anime.safetensors --force
      hyperkit convert anime.pt anime.onnx
      hyperkit convert anime.pt fp16/ --to safetensors --dtype fp16
      hyperkit convert models/hypernetworks/ converted/ --to safetensors
      hyperkit convert models/hypernetworks/ converted/ --to safetensors --skip-existing
    """
    if src.is_dir():
        _convert_folder(src, Path(dst), to, dtype, force, skip_existing, strict, as_json)
        return
    if skip_existing:
        raise UsageProblem("--skip-existing applies to folder conversion only (SRC is not a folder)")
    from hyperkit.conversion import convert as do_convert
    from hyperkit.render import render_convert, result_dict

    result = do_convert(src, dst, to=to, dtype=dtype, force=force, strict=strict)
    _echo_warnings(result.warnings)
    if as_json:
        _emit_json(result_dict(result))
    else:
        _echo_text(render_convert(result))


def _convert_folder(
    src: Path, dst: Path, to: str | None, dtype: str, force: bool, skip_existing: bool, strict: bool, as_json: bool
) -> None:
    from hyperkit.folder import plan_folder, run_plan
    from hyperkit.render import folder_exit_code, render_folder, result_dict

    if not to:
        raise UsageProblem("converting a folder needs --to to choose the output format")
    if force and skip_existing:  # before planning: a usage error wins over a path problem
        raise UsageProblem("--skip-existing contradicts --force: choose one")
    plan = plan_folder(src, dst, to=to)
    if not plan.items:
        _echo_warnings([f"{src}: no checkpoints found (looked for {', '.join(_suffixes())})"])
    with click.progressbar(length=len(plan.items), label="converting", file=sys.stderr) as bar:
        items = run_plan(
            plan,
            dtype=dtype,
            force=force,
            strict=strict,
            skip_existing=skip_existing,
            progress=lambda _p: bar.update(1),
        )
    _echo_warnings(w for item in items if item.result for w in item.result.warnings)
    if click.get_current_context().meta.get("hyperkit.debug"):
        for item in items:
            if item.traceback:
                _echo_traceback(item.traceback)
    if as_json:
        _emit_json([result_dict(item) for item in items])
    else:
        _echo_text(render_folder(items))
    if code := folder_exit_code(items):
        sys.exit(code)


def _suffixes() -> list[str]:
    from hyperkit import formats

    return formats.suffixes()


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--into",
    "base",
    type=click.Path(path_type=Path),
    help="SD hypernetworks: the base model to bake them into (checkpoint, diffusers UNet or ONNX UNet).",
)
@click.option(
    "--strength", type=float, multiple=True, help="SD hypernetworks: strength of each, in order (default 1.0)."
)
@click.option(
    "--condition",
    help="Generators: a task id, ids separated by commas (one model each), a vector (0.1,-0.4,2) or a .npy file.",
)
@click.option("--lora-factors", is_flag=True, help="Generators: keep LoRA slots as factors instead of merging them.")
@click.option(
    "--theta", type=click.Path(path_type=Path), help="Generators: also write the generated weights as .safetensors."
)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The baked model to write.")
@click.option("--tolerance", type=float, help="Parity tolerance (max abs error); past it the exit code is 1.")
@click.option(
    "--float64",
    is_flag=True,
    help="SD hypernetworks: fold fp16/bf16 bases in float64 too (slower; the float32 default stores the same "
    "values or ones one unit in the last place away, ~0.1% of them).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON.")
def bake(
    inputs: tuple[Path, ...],
    base: Path | None,
    strength: tuple[float, ...],
    condition: str | None,
    lora_factors: bool,
    theta: Path | None,
    output: Path,
    tolerance: float | None,
    float64: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Bake hypernetworks into static models, with a parity report.

    With --into, SD hypernetworks (.pt/.safetensors/.onnx) are folded into a base model;
    otherwise INPUTS is one generator checkpoint and --condition picks the weights it generates.

    \b
    Examples:
      hyperkit bake anime.pt --into unet.safetensors -o unet-anime.safetensors
      hyperkit bake generator.safetensors --condition 2 -o task2.onnx
    """
    if base is not None:
        if condition is not None or lora_factors or theta is not None:
            raise UsageProblem("--condition, --lora-factors and --theta apply to generators, not to --into")
        _bake_sd(inputs, base, strength, output, tolerance, float64, force, as_json)
    else:
        if strength or float64:
            raise UsageProblem("--strength and --float64 apply to SD hypernetworks baked --into a base model")
        if len(inputs) != 1:
            raise UsageProblem("baking a generator takes one checkpoint (SD hypernetworks need --into BASE)")
        if condition is None:
            raise UsageProblem("baking a generator needs --condition (SD hypernetworks need --into BASE)")
        _bake_generator(inputs[0], condition, lora_factors, theta, output, tolerance, force, as_json)


def _bake_sd(
    inputs: tuple[Path, ...],
    base: Path,
    strength: tuple[float, ...],
    output: Path,
    tolerance: float | None,
    float64: bool,
    force: bool,
    as_json: bool,
) -> None:
    from hyperkit.bake.report import bake_dict, render_bake
    from hyperkit.bake.sd import bake_sd, parity_failure

    progress = _Progress("baking")
    try:
        result = bake_sd(
            list(inputs),
            base,
            output,
            strengths=list(strength),
            tolerance=tolerance,
            float64=float64,
            force=force,
            check=False,
            progress=progress.bytes,
        )
    finally:
        progress.close()
    _echo_warnings(result.warnings)
    if as_json:
        _emit_json(bake_dict(result))
    else:
        _echo_text(render_bake(result))
    if not result.passed:
        raise parity_failure(result)


def _bake_generator(
    src: Path,
    condition: str,
    lora_factors: bool,
    theta: Path | None,
    output: Path,
    tolerance: float | None,
    force: bool,
    as_json: bool,
) -> None:
    from hyperkit.generator.bake import bake_generator, render_reports

    reports = bake_generator(
        src, condition, output, lora_factors=lora_factors, theta=theta, tolerance=tolerance, force=force
    )
    if as_json:
        _emit_json([r.as_dict() for r in reports])
    else:
        _echo_text(render_reports(reports))


@cli.command("run")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path), help="Input x as .npy (default: random).")
@click.option("--batch", type=click.IntRange(1, 65536), default=1, show_default=True, help="Batch of random inputs.")
@click.option("--cpu", is_flag=True, help="Run on the CPU even when CUDA is available.")
@click.option("--threads", type=click.IntRange(1, 1024), help="CPU threads (default: ONNX Runtime's).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the first output as .npy.")
@click.option("--force", is_flag=True, help="Overwrite an existing --output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def run_command(
    model: Path,
    input_path: Path | None,
    batch: int,
    cpu: bool,
    threads: int | None,
    output: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Run an ONNX model (e.g. a baked generator) on ONNX Runtime and describe its outputs.

    CUDA is used when it really loads, else the CPU; the provider actually used is printed.

    \b
    Examples:
      hyperkit run target.onnx
      hyperkit run target.onnx --batch 8 --cpu --json
    """
    import numpy as np

    from hyperkit.onnxrun import run_model, save_array
    from hyperkit.paths import check_input, check_output

    if output is not None:
        check_output(output, force=force)
    x = None
    if input_path is not None:
        try:
            x = np.load(check_input(input_path), allow_pickle=False)
        except (ValueError, OSError) as e:
            raise UsageProblem(f"{input_path}: not a readable .npy array: {e}") from e
    result = run_model(model, x=x, batch=batch, prefer_gpu=not cpu, threads=threads)
    arrays = result.pop("arrays")
    if output is not None:
        save_array(next(iter(arrays.values())), output, force=force)
    if as_json:
        _emit_json(result)
        return
    lines = [f"{result['model']}: {result['session']}"]
    for name, s in result["outputs"].items():
        lines.append(
            f"  {name} {s['shape']}: mean {s['mean']:.4g}, std {s['std']:.4g}, min {s['min']:.4g}, max {s['max']:.4g}"
            + ("" if s["finite"] else " (NaN/Inf!)")
        )
    lines.append(f"  {result['seconds'] * 1e3:.2f} ms (first run, includes warm-up)")
    _echo_text("\n".join(lines))


@cli.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--batch", "batches", type=click.IntRange(1, 65536), multiple=True, help="Batch size (repeatable).")
@click.option("--runs", type=click.IntRange(1), default=50, show_default=True, help="Timed runs per batch size.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True, help="Untimed runs first.")
@click.option("--cpu", is_flag=True, help="Run on the CPU even when CUDA is available.")
@click.option("--threads", type=click.IntRange(1, 1024), help="CPU threads (default: ONNX Runtime's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_command(
    model: Path, batches: tuple[int, ...], runs: int, warmup: int, cpu: bool, threads: int | None, as_json: bool
) -> None:
    """Latency percentiles and throughput of an ONNX model per batch size, with parity.

    A baked generator is also checked against the PyTorch target with the same weights.

    \b
    Examples:
      hyperkit bench target.onnx --batch 1 --batch 64 --runs 20
    """
    from hyperkit.onnxrun import bench_model
    from hyperkit.paths import check_input

    result = bench_model(
        check_input(model), batches=list(batches or (1, 64)), runs=runs, warmup=warmup, prefer_gpu=not cpu,
        threads=threads,
    )  # fmt: skip
    if as_json:
        _emit_json(result)
        return
    lines = [f"{result['model']}: {result['session']}", "", "| batch | p50 ms | p90 ms | p99 ms | samples/s |",
             "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["batches"]:
        lines.append(
            f"| {r['batch']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput']:.0f} |"
        )
    p = result["parity"]
    lines.append("")
    lines.append(
        f"parity: max abs {p['max_abs']:.3g}, max rel {p['max_rel']:.3g} ({p['against']})" if p else "parity: n/a"
    )
    _echo_text("\n".join(lines))


@cli.command("import-hypnettorch")
@click.argument("state", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="JSON of hypnettorch's constructor arguments: {'hnet': {'type': 'ChunkedHMLP', ...}, 'mnet': {...}}.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Generator to write (.safetensors/.pt/.onnx).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def import_hypnettorch(state: Path, config_path: Path, output: Path, force: bool) -> None:
    """Import a hypnettorch HMLP/ChunkedHMLP state dict (of an MLP target) as a generator.

    The state dict is read safely (nothing in it runs); hypnettorch's aliased tensors are
    canonicalised; the output is verified like any conversion.

    \b
    Examples:
      hyperkit import-hypnettorch hnet_state.pt --config hnet_config.json -o imported.safetensors
    """
    from hyperkit.conversion import save
    from hyperkit.generator.hypnettorch import import_file
    from hyperkit.paths import check_input, check_output

    check_output(output, force=force, src=state)
    try:
        config = json.loads(check_input(config_path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UsageProblem(f"{config_path}: not a readable JSON config: {e}") from e
    generator = import_file(state, config)
    save(generator, output, force=force)
    s = generator.spec
    _echo_text(
        f"{sanitize(str(output))}: generator ({s.hypernet_type}, {s.condition_num} tasks, target "
        f"{list(s.input_shape)} -> {list(s.output_shape)}, {s.total} generated values, "
        f"{generator.parameter_count} stored), verified"
    )


@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Keep the demo's files in this folder (created if its parent exists).",
)
@click.option("--force", is_flag=True, help="Overwrite demo files already in --out.")
def demo(out: Path | None, force: bool) -> None:
    """Run hyperkit end to end on a bundled fixture, with no download.

    Converts an A1111 hypernetwork .pt through .safetensors and ONNX back to .pt, verifying
    every step bit-for-bit, runs the ONNX model on ONNX Runtime and inspects the result.
    Without --out the files go to a temporary folder that is removed at the end; --out keeps
    them (demo.safetensors, demo.onnx, demo.pt), refusing to overwrite them without --force.

    \b
    Examples:
      hyperkit demo
      hyperkit demo --out demo-files
    """
    from hyperkit.demo import run_demo

    for line in run_demo(out, force=force):
        _echo_text(line)


_GATE_STATS = ["mean", "ci_low", "ci_high"]  # literal: --help must not import the eval package


def _gate_options(f: Any) -> Any:
    """The report and gate options shared by ``eval`` and ``eval-merge``."""
    options = [
        click.option(
            "-o",
            "--output",
            "outputs",
            multiple=True,
            type=click.Path(path_type=Path),
            help="Report file: .csv, .parquet, .md (per-image table) or .html (report page). Repeatable.",
        ),
        click.option("--baseline-variant", help="Variant to pair against (default: a variant named 'base')."),
        click.option("--fail-under", multiple=True, metavar="METRIC=VALUE", help="Exit 1 when the metric is lower."),
        click.option(
            "--max-drop", multiple=True, metavar="METRIC=VALUE", help="Exit 1 when a variant drops more than this."
        ),
        click.option(
            "--against",
            type=click.Path(path_type=Path),
            help="Older report (.parquet/.csv) for --max-drop (default: the baseline variant).",
        ),
        click.option(
            "--gate-on",
            type=click.Choice(_GATE_STATS),
            default="mean",
            show_default=True,
            help="Statistic the gate compares: the mean, or an end of its bootstrap 95% CI.",
        ),
        click.option("--per-variant", is_flag=True, help="--fail-under checks every variant, not only all rows."),
        click.option("--bootstrap", "n_resamples", type=click.IntRange(100), default=2000, show_default=True),
        click.option("--force", is_flag=True, help="Overwrite existing report files."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class _Progress:
    """A progress bar on stderr, created once the amount of work is known."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def total(self, n: int) -> None:
        self.bar = click.progressbar(length=n, label=self.label, file=sys.stderr, item_show_func=lambda s: s)
        self.bar.__enter__()

    def step(self, n: int, rate: float) -> None:
        """``n`` more images done, at ``rate`` images/s."""
        if self.bar is not None:
            self.bar.update(n, f"{rate:.1f} img/s")

    def bytes(self, n: int, total: int) -> None:
        """``n`` more bytes written of ``total``."""
        if self.bar is None:
            self.total(total)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@cli.command("eval")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--model",
    required=True,
    help="open_clip model: a name (ViT-B-32), hf-hub:org/repo, local-dir:/path, or a model config .json.",
)
@click.option("--pretrained", help="Weights: a local file, or a tag already in the local cache. Never downloaded.")
@_gate_options
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0), help="Image decoding threads (default: up to 4).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Embedding cache (default ~/.cache/hyperkit/eval).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the embedding cache.")
@click.option("--shard", metavar="I/N", help="Score only the I-th of N slices (merge with eval-merge).")
@click.option(
    "--strict", is_flag=True, help="A bad row (missing/corrupt image, no prompt, duplicate) is fatal (exit 3)."
)
def eval_command(
    source: Path,
    model: str,
    pretrained: str | None,
    outputs: tuple[Path, ...],
    baseline_variant: str | None,
    fail_under: tuple[str, ...],
    max_drop: tuple[str, ...],
    against: Path | None,
    gate_on: str,
    per_variant: bool,
    n_resamples: int,
    force: bool,
    device: str,
    precision: str,
    batch_size: int,
    workers: int | None,
    cache_dir: Path | None,
    no_cache: bool,
    shard: str | None,
    strict: bool,
) -> None:
    """Score generated images with CLIP metrics; write reports; gate CI on thresholds.

    SOURCE is a manifest (.csv, .jsonl, .parquet with columns image, prompt and optionally
    variant, prompt_id, seed, strength, reference, style_prompt; paths relative to it) or a
    folder of images whose prompts come from A1111/ComfyUI PNG text or a sidecar .txt (the
    first-level subfolder is the variant). Per image: clip_t (raw cosine; clip_t_x100 and
    Hessel's clip_t_hessel = 2.5*max(cos,0) derived), clip_i against reference images, and
    against the baseline variant at the same prompt_id and seed content_keep and directional.
    Per variant: means with bootstrap 95% CIs over prompts, diversity across seeds, CMMD, and
    paired comparisons with the baseline. A bad row keeps its place with an error column and
    the run goes on (exit 0 unless --strict). Weights are never downloaded: without them, exit 4.

    \b
    Examples (with the bundled tiny model; real scores: --model ViT-B-32 --pretrained FILE):
      hyperkit eval manifest.csv --model tiny-clip.json --pretrained tiny-clip.safetensors -o old.parquet
      hyperkit eval manifest.csv --model tiny-clip.json --pretrained tiny-clip.safetensors --fail-under clip_t=-1
      hyperkit eval manifest.csv --model tiny-clip.json --pretrained tiny-clip.safetensors --max-drop clip_t=0.5
    """
    from hyperkit.eval import evaluate, parse_shard
    from hyperkit.eval.gate import parse_thresholds
    from hyperkit.eval.report import check_report_paths, read_report

    shard_spec = parse_shard(shard) if shard else None
    if shard_spec and not any(p.suffix.lower() == ".parquet" for p in outputs):
        raise UsageProblem("--shard needs a .parquet output (-o part.parquet) to merge later with eval-merge")
    floors, drops = parse_thresholds(fail_under, "--fail-under"), parse_thresholds(max_drop, "--max-drop")
    check_report_paths(list(outputs), force=force)
    old = read_report(against)[0] if against else None
    progress = _Progress("encoding images")
    try:
        result = evaluate(
            source,
            model,
            pretrained,
            device=device,
            precision=precision,
            batch_size=batch_size,
            workers=workers,
            cache_dir=cache_dir,
            use_cache=not no_cache,
            baseline_variant=baseline_variant,
            shard=shard_spec,
            strict=strict,
            n_resamples=n_resamples,
            progress=progress.step,
            on_total=progress.total,
        )
    finally:
        progress.close()
    _eval_outputs(result, outputs, force, floors, drops, old, gate_on, per_variant, n_resamples, shard_spec is not None)


def _eval_outputs(
    result: Any,
    outputs: Iterable[Path],
    force: bool,
    floors: dict[str, float],
    drops: dict[str, float],
    old: Any,
    gate_on: str,
    per_variant: bool,
    n_resamples: int,
    keep_embeddings: bool,
) -> None:
    from hyperkit.errors import CheckFailed
    from hyperkit.eval.gate import check
    from hyperkit.eval.report import markdown_table, render_summary, write_report

    _echo_warnings(result.warnings)
    bad = result.bad_rows
    if len(bad):
        _echo_warnings([f"{result.source}: {len(bad)} row(s) could not be fully scored (see the error column)"])
    gate = None
    if floors or drops:
        gate = check(
            result,
            fail_under=floors,
            max_drop=drops,
            against=old,
            gate_on=gate_on,
            per_variant=per_variant,
            n_resamples=n_resamples,
        )
    for path in outputs:
        write_report(result, path, force=force, keep_embeddings=keep_embeddings)
        click.echo(f"wrote {sanitize(str(path))}", err=True)
    _echo_text(render_summary(result))
    if gate is not None:
        _echo_text("\n## Gate\n\n" + markdown_table(gate))
        failed = gate[~gate["passed"]]
        if len(failed):
            what = "; ".join(
                f"{r.check} ({r.variant}: {r.gate_on} {getattr(r, r.gate_on):.4f})" for r in failed.itertuples()
            )
            raise CheckFailed(f"{result.source}: gate failed, {len(failed)} of {len(gate)} check(s): {what}")


@cli.command("eval-merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@_gate_options
def eval_merge(
    shards: tuple[Path, ...],
    outputs: tuple[Path, ...],
    baseline_variant: str | None,
    fail_under: tuple[str, ...],
    max_drop: tuple[str, ...],
    against: Path | None,
    gate_on: str,
    per_variant: bool,
    n_resamples: int,
    force: bool,
) -> None:
    """Combine the .parquet reports of `hyperkit eval --shard I/N` into one report.

    Checks the shards were made with the same model and weights, then recomputes everything
    that spans rows (content keep, directional similarity, diversity, CMMD, summaries,
    comparisons) over the whole set; the gate options work as for `hyperkit eval`.

    \b
    Examples:
      hyperkit eval manifest.csv --model tiny-clip.json --pretrained tiny-clip.safetensors --shard 1/2 -o 1.parquet
      hyperkit eval manifest.csv --model tiny-clip.json --pretrained tiny-clip.safetensors --shard 2/2 -o 2.parquet
      hyperkit eval-merge 1.parquet 2.parquet -o report.parquet -o report.md
    """
    from hyperkit.eval import finish
    from hyperkit.eval.gate import parse_thresholds
    from hyperkit.eval.report import check_report_paths, merge, read_report

    floors, drops = parse_thresholds(fail_under, "--fail-under"), parse_thresholds(max_drop, "--max-drop")
    check_report_paths(list(outputs), force=force)
    old = read_report(against)[0] if against else None
    frame, meta = merge(list(shards))
    variants = list(dict.fromkeys(frame["variant"]))
    from hyperkit.eval.run import default_baseline

    baseline = default_baseline(variants, baseline_variant or meta.get("baseline"))
    if baseline is not None and baseline not in variants:
        raise UsageProblem(f"unknown baseline variant '{baseline}' (variants: {', '.join(map(str, variants))})")
    result = finish(
        frame, baseline, None, meta["provenance"], str(meta["source"]), n_resamples=n_resamples, notes=meta["notes"]
    )
    _eval_outputs(result, outputs, force, floors, drops, old, gate_on, per_variant, n_resamples, False)


def main() -> None:
    """Console-script entry point: the CLI, with SIGTERM cleaning up like Ctrl-C."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli(prog_name="hyperkit")
    except Terminated:  # arrived outside a command (while parsing options or exiting)
        _echo_error(INTERRUPTED)
        sys.exit(EXIT_SIGTERM)


if __name__ == "__main__":
    main()
