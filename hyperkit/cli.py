"""The ``hyperkit`` command: parse, call the library, render. No heavy import at start-up.

Every command imports what it needs inside its body, so ``hyperkit --help`` costs little more
than importing Click. Errors print one ``Error:`` line (and a ``Hint:``) and exit with the code
of :class:`hyperkit.errors.ExitCode`; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hyperkit._version import __version__
from hyperkit.errors import ExitCode, HyperkitError

FORMAT_NAMES = ["pt", "safetensors", "onnx"]  # kept literal so --help needs no registry import


class _Group(click.Group):
    """Turns library errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except HyperkitError as e:
            if ctx.meta.get("hyperkit.debug"):
                raise
            click.echo(f"Error: {e.message}", err=True)
            if e.hint:
                click.echo(f"Hint: {e.hint}", err=True)
            ctx.exit(int(e.exit_code))
        except KeyboardInterrupt:
            click.echo("Error: interrupted; no partial output was left", err=True)
            ctx.exit(130)
        except Exception as e:
            if ctx.meta.get("hyperkit.debug"):
                raise
            click.echo(f"Error: internal error: {type(e).__name__}: {e}", err=True)
            click.echo("Hint: rerun with --debug for the traceback and please report it", err=True)
            ctx.exit(int(ExitCode.INTERNAL))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hyperkit")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Safe, lossless tools for hypernetwork checkpoints.

    \b
    Exit codes: 0 ok, 1 a check said no, 2 usage error, 3 bad input
    (unknown/corrupt/unsafe/unsupported file), 4 environment, 5 internal error.

    \b
    Examples:
      hyperkit inspect anime.pt
      hyperkit convert anime.pt anime.safetensors
      hyperkit convert models/hypernetworks/ out/ --to safetensors
      hyperkit demo
    """
    ctx.meta["hyperkit.debug"] = debug


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


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
      hyperkit inspect anime.safetensors --json | jq .verdicts
    """
    from hyperkit.inspection import inspect_file
    from hyperkit.render import render_inspect

    report = inspect_file(path)
    if as_json:
        _emit_json(report)
    else:
        click.echo(render_inspect(report))


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", type=click.Choice(FORMAT_NAMES), help="Output format (default: from DST's suffix).")
@click.option(
    "--dtype",
    type=click.Choice(["keep", "fp32", "fp16", "bf16"]),
    default="keep",
    show_default=True,
    help="Cast floating tensors; verification then compares with the cast values.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@click.option("--strict", is_flag=True, help="Refuse NaN/Inf weights instead of warning.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert(src: Path, dst: Path, to: str | None, dtype: str, force: bool, strict: bool, as_json: bool) -> None:
    """Convert SRC to DST losslessly (.pt, .safetensors, .onnx), verifying what was written.

    The output is reloaded and every tensor compared bit-for-bit (or with the cast values for
    --dtype) and every metadata value and type checked before it is renamed into place, so a
    failure never leaves a partial file. Pickles are read with an allowlist: nothing in the
    file runs. A written .pt loads in A1111, ComfyUI and torch.load(weights_only=True).

    SRC may be a folder: every checkpoint in it (recursively) is converted into the folder DST
    with --to choosing the format; a summary table follows.

    \b
    Examples:
      hyperkit convert anime.pt anime.safetensors
      hyperkit convert anime.safetensors anime.pt --force
      hyperkit convert anime.pt anime.onnx
      hyperkit convert anime.pt out/ --to safetensors --dtype fp16
      hyperkit convert models/hypernetworks/ converted/ --to safetensors
    """
    if src.is_dir():
        _convert_folder(src, dst, to, dtype, force, strict, as_json)
        return
    from hyperkit.conversion import convert as do_convert
    from hyperkit.render import render_convert, result_dict

    result = do_convert(src, dst, to=to, dtype=dtype, force=force, strict=strict)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if as_json:
        _emit_json(result_dict(result))
    else:
        click.echo(render_convert(result))


def _convert_folder(src: Path, dst: Path, to: str | None, dtype: str, force: bool, strict: bool, as_json: bool) -> None:
    from hyperkit.errors import UsageProblem
    from hyperkit.folder import checkpoints_in, convert_folder
    from hyperkit.render import folder_exit_code, render_folder, result_dict

    if not to:
        raise UsageProblem("converting a folder needs --to to choose the output format")
    total = len(checkpoints_in(src))
    with click.progressbar(length=total, label="converting", file=sys.stderr) as bar:
        items = convert_folder(
            src, dst, to=to, dtype=dtype, force=force, strict=strict, progress=lambda _p: bar.update(1)
        )
    for item in items:
        for warning in item.result.warnings if item.result else []:
            click.echo(f"Warning: {warning}", err=True)
    if as_json:
        _emit_json(
            [
                {"src": str(i.src), "error": str(i.error)} if i.error else result_dict(i.result)
                for i in items
                if i.error or i.result
            ]
        )
    else:
        click.echo(render_folder(items))
    code = folder_exit_code(items)
    if code:
        sys.exit(code)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), help="Keep the demo's files in this folder.")
def demo(out: Path | None) -> None:
    """Run hyperkit end to end on a bundled fixture, with no download.

    Converts an A1111 hypernetwork .pt through .safetensors and ONNX back to .pt, verifying
    every step bit-for-bit, runs the ONNX model on ONNX Runtime and inspects the result.

    \b
    Example:
      hyperkit demo --out /tmp/hyperkit-demo
    """
    from hyperkit.demo import run_demo

    for line in run_demo(out):
        click.echo(line)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="hyperkit")


if __name__ == "__main__":
    main()
