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
        _bake_sd(inputs, base, strength, output, tolerance, force, as_json)
    else:
        if strength:
            raise UsageProblem("--strength applies to SD hypernetworks baked --into a base model")
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
    force: bool,
    as_json: bool,
) -> None:
    raise UsageProblem("baking SD hypernetworks is not available yet")


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
    raise UsageProblem("baking generators is not available yet")


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
