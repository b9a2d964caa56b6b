"""Side-by-side benchmarks of hyperkit's start-up and conversion (DESIGN §7), one Markdown table.

Every row is measured in the same run, interleaved round by round, so machine noise hits all
variants alike; the table shows medians and the ratios that matter. Run ``make bench`` (or
``.venv/bin/python scripts/bench.py --rounds 7``) and paste the output into the README.

Rows:
- start-up: ``hyperkit --help`` against ``python -c "import click"`` (the floor for a Click CLI);
- convert: a realistic SD1 hypernetwork (dims 768/320/640/1280, ``[1, 2, 1]``, ~84 MiB fp32,
  written by real ``torch.save``) with ``hyperkit convert`` — verification included — against
  the naive ``torch.load`` + ``safetensors.torch.save_file`` script and against copying the file.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
HYPERKIT = str(VENV_BIN / "hyperkit")

NAIVE = """
import sys, torch
from safetensors.torch import save_file
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
flat = {}
for dim, pair in sd.items():
    if isinstance(dim, int):
        for kv, module in zip("kv", pair):
            for key, tensor in module.items():
                flat[f"{dim}.{kv}.{key}"] = tensor.contiguous()
save_file(flat, sys.argv[2])
"""


def make_sd1_hypernetwork(path: Path) -> None:
    """An A1111-shaped SD1 hypernetwork written by torch.save (what users download)."""
    import torch

    torch.manual_seed(0)
    obj: dict[object, object] = {}
    for dim in (768, 320, 640, 1280):
        pair = []
        for _ in range(2):
            seq = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim))
            pair.append(torch.nn.ModuleDict({"linear": seq}).state_dict())
        obj[dim] = tuple(pair)
    obj.update(
        step=4000,
        name="sd1-bench",
        layer_structure=[1.0, 2.0, 1.0],
        activation_func="linear",
        is_layer_norm=False,
        weight_initialization="Normal",
        sd_checkpoint="0123456789",
        sd_checkpoint_name="v1-5-pruned-emaonly",
        activate_output=False,
        use_dropout=False,
        dropout_structure=[0, 0, 0],
        last_layer_dropout=False,
        optional_info=None,
    )
    torch.save(obj, path)


def hk_convert(src: Path, dst: Path) -> list[str]:
    """The ``hyperkit convert`` command line timed in the table."""
    return [HYPERKIT, "convert", str(src), str(dst), "--force"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(variants: dict[str, list[str]], rounds: int, before: object = None) -> dict[str, float]:
    """Median wall time of each command, variants interleaved within every round."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for cmd in variants.values():  # one warm-up each (page cache, pyc files)
        timed(cmd)
    for _ in range(rounds):
        for name, cmd in variants.items():
            if callable(before):
                before()
            samples[name].append(timed(cmd))
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per variant (median is shown)")
    args = parser.parse_args()
    py = sys.executable
    rows: list[tuple[str, float, str]] = []

    startup = measure(
        {"hyperkit --help": [HYPERKIT, "--help"], 'python -c "import click"': [py, "-c", "import click"]},
        args.rounds * 3,
    )
    base = startup['python -c "import click"']
    rows += [(name, t, f"{t / base:.2f}× import click") for name, t in startup.items()]

    with tempfile.TemporaryDirectory(prefix="hyperkit-bench-") as tmp:
        work = Path(tmp)
        src = work / "sd1.pt"
        make_sd1_hypernetwork(src)
        size_mib = src.stat().st_size / 2**20
        out = {name: work / name for name in ("hk.safetensors", "naive.safetensors", "copy.pt", "hk.onnx", "hk.pt")}
        convert = measure(
            {
                "hyperkit convert .pt → .safetensors (verified)": hk_convert(src, out["hk.safetensors"]),
                "naive torch.load + save_file": [py, "-c", NAIVE, str(src), str(out["naive.safetensors"])],
                "cp (copy the file)": ["cp", str(src), str(out["copy.pt"])],
            },
            args.rounds,
        )
        naive = convert["naive torch.load + save_file"]
        for name, t in convert.items():
            rows.append((name, t, f"naive is {naive / t:.2f}× this"))
        more = measure(
            {
                "hyperkit convert .pt → .onnx (verified)": hk_convert(src, out["hk.onnx"]),
                "hyperkit convert .safetensors → .pt (verified)": hk_convert(out["hk.safetensors"], out["hk.pt"]),
            },
            max(3, args.rounds // 2),
        )
        for name, t in more.items():
            rows.append((name, t, f"naive is {naive / t:.2f}× this"))

    print(f"Machine: {machine()}")
    print(
        f"SD1 hypernetwork: dims 768/320/640/1280, [1, 2, 1], {size_mib:.1f} MiB fp32; medians of "
        f"{args.rounds} interleaved rounds (start-up: {args.rounds * 3})\n"
    )
    print("| what | median | ratio |")
    print("|---|---:|---|")
    for name, t, ratio in rows:
        print(f"| {name} | {t * 1000:.0f} ms | {ratio} |")


if __name__ == "__main__":
    main()
