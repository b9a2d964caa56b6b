"""Side-by-side benchmarks of hyperkit's start-up and conversion (DESIGN §7), one Markdown table.

Every row is measured in the same run, interleaved round by round, so machine noise hits all
variants alike; the table shows medians and the ratios that matter. Run ``make bench`` (or
``.venv/bin/python scripts/bench.py --rounds 7``) and paste the output into the README;
``--quick`` (one round each) is for checking a change while working on it.

Peak memory: each command's peak resident set size (``ru_maxrss``, measured under GNU ``time``
or a small launcher so the benchmark's own memory never counts), the largest over its runs, and
its ratio to the size of the file it converts. File-backed pages of memory-mapped input count.

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
from collections.abc import Callable
from dataclasses import dataclass, field
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


def make_hypernetwork(
    path: Path, dims: tuple[int, ...], *, activation: str = "linear", layer_norm: bool = False, **meta: object
) -> None:
    """An A1111 hypernetwork written by torch.save (``[1, 2, 1]``; Linear, activation, LayerNorm in
    A1111's order); ``meta`` overrides its metadata."""
    import torch

    torch.manual_seed(0)
    obj: dict[object, object] = {}
    for dim in dims:
        pair = []
        for _ in range(2):
            layers: list[torch.nn.Module] = [torch.nn.Linear(dim, 2 * dim)]
            if activation != "linear":
                layers.append(torch.nn.ReLU())
            if layer_norm:
                layers.append(torch.nn.LayerNorm(2 * dim))
            layers.append(torch.nn.Linear(2 * dim, dim))
            if layer_norm:
                layers.append(torch.nn.LayerNorm(dim))
            seq = torch.nn.Sequential(*layers)
            pair.append(torch.nn.ModuleDict({"linear": seq}).state_dict())
        obj[dim] = tuple(pair)
    obj.update(
        step=1000,
        name=path.stem,
        layer_structure=[1.0, 2.0, 1.0],
        activation_func=activation,
        is_layer_norm=layer_norm,
        weight_initialization="Normal",
        sd_checkpoint=None,
        sd_checkpoint_name=None,
        activate_output=False,
        use_dropout=False,
        dropout_structure=[0, 0, 0],
        last_layer_dropout=False,
        optional_info=None,
    )
    obj.update(meta)
    torch.save(obj, path)


def make_sd1_hypernetwork(path: Path) -> None:
    """An A1111-shaped SD1 hypernetwork written by torch.save (what users download)."""
    make_hypernetwork(
        path,
        (768, 320, 640, 1280),
        step=4000,
        name="sd1-bench",
        sd_checkpoint="0123456789",
        sd_checkpoint_name="v1-5-pruned-emaonly",
    )


def hk_convert(src: Path, dst: Path) -> list[str]:
    """The ``hyperkit convert`` command line timed in the table."""
    return [HYPERKIT, "convert", str(src), str(dst), "--force"]


@dataclass
class Sample:
    """One variant's measurements: wall times and peak RSS (bytes) of every run."""

    seconds: list[float] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak(self) -> int:
        return max(self.peak_rss)


#: Runs a command and prints its wall time and peak RSS (KiB on Linux, bytes on macOS). A child's
#: peak counts the memory of whatever it was forked from, so it must be a small fresh process.
LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def gnu_time() -> str | None:
    """``/usr/bin/time`` if it is GNU time (``-f``/``-o``): the smallest parent to measure under."""
    path = "/usr/bin/time"
    if not os.path.exists(path):
        return None
    probe = subprocess.run([path, "-f", "%M", "-o", os.devnull, "true"], capture_output=True)
    return path if probe.returncode == 0 else None


GNU_TIME = gnu_time()


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall time of ``cmd`` in seconds and its peak RSS in bytes.

    Linux counts in a child's peak the memory of the process it was forked from (until it execs),
    so ``cmd`` never runs as a child of this script, which holds torch and the model: it runs
    under GNU ``time`` (a few MiB) or, where there is none, under a fresh Python launcher.
    """
    if GNU_TIME:
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
            start = time.perf_counter()
            subprocess.run(
                [GNU_TIME, "-f", "%M", "-o", report.name, *cmd],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            elapsed = time.perf_counter() - start  # GNU time's own %e has only 10 ms resolution
            return elapsed, int(report.read().split()[-1]) * 1024
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], check=True, capture_output=True, text=True)
    seconds, peak, code = out.stdout.split()
    if int(code) != 0:
        raise subprocess.CalledProcessError(int(code), cmd)
    return float(seconds), int(peak) * (1 if sys.platform == "darwin" else 1024)


def measure(
    variants: dict[str, list[str]], rounds: int, prepare: Callable[[str], None] | None = None
) -> dict[str, Sample]:
    """Wall time and peak RSS of each command, variants interleaved within every round;
    ``prepare(name)``, untimed, runs before each run of a variant (say, to delete its output)."""
    samples = {name: Sample() for name in variants}
    for name, cmd in variants.items():  # one warm-up each (page cache, pyc files)
        if prepare:
            prepare(name)
        run(cmd)
    for _ in range(rounds):
        for name, cmd in variants.items():
            if prepare:
                prepare(name)
            seconds, peak = run(cmd)
            samples[name].seconds.append(seconds)
            samples[name].peak_rss.append(peak)
    return samples


def memory(sample: Sample, input_size: int | None) -> tuple[str, str]:
    """The peak-RSS and ratio cells of a row."""
    peak = sample.peak
    ratio = f"{peak / input_size:.2f}× input" if input_size else "—"
    return f"{peak / 2**20:.0f} MiB", ratio


def machine() -> str:
    """One line naming the machine a table was measured on (shared by every bench script)."""
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {platform.system()} {platform.release()}{load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per variant (median is shown)")
    parser.add_argument("--quick", action="store_true", help="one round of everything, for development")
    args = parser.parse_args()
    rounds, startup_rounds, more_rounds = (
        (1, 1, 1) if args.quick else (args.rounds, args.rounds * 3, max(3, args.rounds // 2))
    )
    py = sys.executable
    rows: list[tuple[str, Sample, str, int | None]] = []  # name, sample, time ratio, input size

    startup = measure(
        {"hyperkit --help": [HYPERKIT, "--help"], 'python -c "import click"': [py, "-c", "import click"]},
        startup_rounds,
    )
    base = startup['python -c "import click"'].median
    rows += [(name, s, f"{s.median / base:.2f}× import click", None) for name, s in startup.items()]

    with tempfile.TemporaryDirectory(prefix="hyperkit-bench-") as tmp:
        work = Path(tmp)
        src = work / "sd1.pt"
        make_sd1_hypernetwork(src)
        size = src.stat().st_size
        out = {name: work / name for name in ("hk.safetensors", "naive.safetensors", "copy.pt", "hk.onnx", "hk.pt")}
        convert = measure(
            {
                "hyperkit convert .pt → .safetensors (verified)": hk_convert(src, out["hk.safetensors"]),
                "naive torch.load + save_file": [py, "-c", NAIVE, str(src), str(out["naive.safetensors"])],
                "cp (copy the file)": ["cp", str(src), str(out["copy.pt"])],
            },
            rounds,
        )
        naive = convert["naive torch.load + save_file"].median
        for name, s in convert.items():
            rows.append((name, s, f"naive is {naive / s.median:.2f}× this", size))
        st_size = out["hk.safetensors"].stat().st_size
        more = measure(
            {
                "hyperkit convert .pt → .onnx (verified)": hk_convert(src, out["hk.onnx"]),
                "hyperkit convert .safetensors → .pt (verified)": hk_convert(out["hk.safetensors"], out["hk.pt"]),
            },
            more_rounds,
        )
        inputs = {"hyperkit convert .safetensors → .pt (verified)": st_size}
        for name, s in more.items():
            rows.append((name, s, f"naive is {naive / s.median:.2f}× this", inputs.get(name, size)))

    print(f"Machine: {machine()}")
    print(
        f"SD1 hypernetwork: dims 768/320/640/1280, [1, 2, 1], {size / 2**20:.1f} MiB fp32; medians of "
        f"{rounds} interleaved rounds (start-up: {startup_rounds}); peak RSS: the largest of those runs\n"
    )
    print("| what | median | ratio | peak RSS | peak RSS / input file |")
    print("|---|---:|---|---:|---|")
    for name, s, ratio, input_size in rows:
        rss, rss_ratio = memory(s, input_size)
        print(f"| {name} | {s.median * 1000:.0f} ms | {ratio} | {rss} | {rss_ratio} |")


if __name__ == "__main__":
    main()
