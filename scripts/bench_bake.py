"""Side-by-side benchmarks of ``hyperkit bake`` (DESIGN §7), one Markdown table.

Every row is measured in the same run, interleaved round by round, so machine noise hits all
variants alike; the table shows medians and the ratios that matter. Run
``.venv/bin/python scripts/bench_bake.py`` and paste the output into the README; ``--quick``
(fewer rounds and forward calls) is for checking a change while working on it.

Rows:
- UNet forward (diffusers, CPU, fp32, an SD1-shaped UNet scaled down: channels 64/128/256/256,
  text width 768, 32×32 latents, 77 tokens, batch 1, fixed inputs): the base UNet, the UNet
  baked with an affine hypernetwork (``[1, 2, 1]``, linear) and the base UNet with that
  hypernetwork applied at run time (:func:`hyperkit.bake.diffusers_apply.apply_hypernetworks`).
  Target: baked within 2% of the base.
- the same UNet exported like optimum (legacy exporter, opset 17) on ONNX Runtime (CPU): base,
  the affine hypernetwork baked (weights rewritten; target within 2% of the base) and a
  non-affine one (relu + layer norm) inserted as a subgraph (its overhead is shown).
- baking into a realistic-size SD1 checkpoint: a random-weight fp16 ``.safetensors`` with the
  real SD1 UNet key set and shapes in LDM naming (686 tensors, 859.5 M parameters, 1.6 GiB),
  generated once, streaming, into ``--cache`` and reused; an SD1-size affine hypernetwork (dims
  768/320/640/1280, ``[1, 2, 1]``, linear, written by ``torch.save``). ``hyperkit bake`` (the
  CLI, its own process; parity report and read-back included), also with ``--float64``, against
  ``cp`` of the checkpoint and the naive script (``safetensors.torch.load_file``, fold with
  torch, ``save_file``); then ``hyperkit bake`` and ``cp`` again with the checkpoint evicted from
  the page cache first. None of them syncs its output to the disk. Targets: bake peak RSS ≤ 1.2×
  the checkpoint size (naive needs > 2×), bake time within 1.5× of copying the file.

Peak memory is each command's peak resident set size, measured under GNU ``time`` or a small
launcher (:func:`bench.run`) so the benchmark's own memory never counts, the largest over its
runs. File-backed pages of memory-mapped input count. Before every run, untimed, all outputs
are deleted and ``sync`` runs, so each command writes a new file on a quiet disk; the rows
other than the cold ones read the checkpoint from the page cache (the machine has the memory
for it), so they compare CPU and copy work, not the disk.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import HYPERKIT, Sample, machine, make_hypernetwork, make_sd1_hypernetwork, measure

CACHE = Path(tempfile.gettempdir()) / "hyperkit-bench-bake"
SD1_PARAMS = 859_520_964  # diffusers' SD1 UNet2DConditionModel has exactly these many parameters

#: Rows of the checkpoint bake.
HK = "`hyperkit bake` (CLI, parity report + read-back; fp16 folded in float32)"
HK64 = "`hyperkit bake --float64`"
CP = "`cp` (copy the checkpoint)"
NAIVE = "naive `load_file` + torch fold + `save_file`"
COLD_HK = "cold page cache: `hyperkit bake`"
COLD_CP = "cold page cache: `cp`"

#: The naive bake: the whole checkpoint in memory, folded with torch, serialized in memory again.
NAIVE_SCRIPT = """
import sys, torch
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
hn = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
maps = {}
for dim, pair in hn.items():
    if isinstance(dim, int):
        for which, m in enumerate(pair):
            w1, b1, w2, b2 = (m[k].double() for k in
                ("linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"))
            maps[dim, which] = (torch.eye(dim, dtype=torch.float64) + w2 @ w1, w2 @ b1 + b2)
for name in [n for n in sd if n.endswith(".to_k.weight")]:
    prefix = name[: -len(".to_k.weight")]
    width = sd[name].shape[1]
    if (width, 0) not in maps:
        continue
    (a_k, _), (a_v, c_v) = maps[width, 0], maps[width, 1]
    w_k, w_v = sd[name].double(), sd[prefix + ".to_v.weight"].double()
    w_o, b_o = sd[prefix + ".to_out.0.weight"].double(), sd[prefix + ".to_out.0.bias"].double()
    dtype = sd[name].dtype
    sd[name] = (w_k @ a_k).to(dtype)
    sd[prefix + ".to_v.weight"] = (w_v @ a_v).to(dtype)
    sd[prefix + ".to_out.0.bias"] = (b_o + w_o @ (w_v @ c_v)).to(dtype)
save_file(sd, sys.argv[3], metadata={"format": "pt"})
"""


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (clean pages need no privilege), so the next
    reader gets it from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# inputs


def sd1_unet_shapes() -> dict[str, tuple[int, ...]]:
    """The SD1 UNet's tensors in LDM naming (``model.diffusion_model.…``), sorted by name as
    ``safetensors`` writes them. Checked: 686 tensors, :data:`SD1_PARAMS` parameters, and
    diffusers' ``convert_ldm_unet_checkpoint`` maps them onto ``UNet2DConditionModel``'s exactly."""
    shapes: dict[str, tuple[int, ...]] = {}

    def add(name: str, *shape: int) -> None:
        shapes["model.diffusion_model." + name] = shape

    def conv(name: str, out: int, inp: int, k: int) -> None:
        add(f"{name}.weight", out, inp, k, k)
        add(f"{name}.bias", out)

    def lin(name: str, out: int, inp: int, bias: bool = True) -> None:
        add(f"{name}.weight", out, inp)
        if bias:
            add(f"{name}.bias", out)

    def norm(name: str, c: int) -> None:
        add(f"{name}.weight", c)
        add(f"{name}.bias", c)

    def res(name: str, inp: int, out: int) -> None:
        norm(f"{name}.in_layers.0", inp)
        conv(f"{name}.in_layers.2", out, inp, 3)
        lin(f"{name}.emb_layers.1", out, 1280)
        norm(f"{name}.out_layers.0", out)
        conv(f"{name}.out_layers.3", out, out, 3)
        if inp != out:
            conv(f"{name}.skip_connection", out, inp, 1)

    def transformer(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        conv(f"{name}.proj_in", c, c, 1)
        conv(f"{name}.proj_out", c, c, 1)
        block = f"{name}.transformer_blocks.0"
        for attn, width in (("attn1", c), ("attn2", 768)):
            lin(f"{block}.{attn}.to_q", c, c, bias=False)
            lin(f"{block}.{attn}.to_k", c, width, bias=False)
            lin(f"{block}.{attn}.to_v", c, width, bias=False)
            lin(f"{block}.{attn}.to_out.0", c, c)
        lin(f"{block}.ff.net.0.proj", 8 * c, c)
        lin(f"{block}.ff.net.2", c, 4 * c)
        for n in ("norm1", "norm2", "norm3"):
            norm(f"{block}.{n}", c)

    lin("time_embed.0", 1280, 320)
    lin("time_embed.2", 1280, 1280)
    conv("input_blocks.0.0", 320, 4, 3)
    levels = (320, 640, 1280, 1280)
    block, ch, skips = 1, 320, [320]
    for level, c in enumerate(levels):
        for _ in range(2):
            res(f"input_blocks.{block}.0", ch, c)
            ch = c
            if level < 3:
                transformer(f"input_blocks.{block}.1", c)
            skips.append(c)
            block += 1
        if level < 3:
            conv(f"input_blocks.{block}.0.op", c, c, 3)
            skips.append(c)
            block += 1
    res("middle_block.0", 1280, 1280)
    transformer("middle_block.1", 1280)
    res("middle_block.2", 1280, 1280)
    block = 0
    for level, c in reversed(list(enumerate(levels))):
        for i in range(3):
            res(f"output_blocks.{block}.0", ch + skips.pop(), c)
            ch = c
            if level < 3:
                transformer(f"output_blocks.{block}.1", c)
            if level > 0 and i == 2:
                conv(f"output_blocks.{block}.{2 if level < 3 else 1}.conv", c, c, 3)
            block += 1
    norm("out.0", 320)
    conv("out.2", 4, 320, 3)
    return dict(sorted(shapes.items()))


def make_sd1_checkpoint(path: Path) -> None:
    """Write a random-weight fp16 SD1 UNet checkpoint tensor by tensor (header first, then the
    bytes); memory use is one tensor's."""
    import json

    shapes = sd1_unet_shapes()
    assert len(shapes) == 686
    assert sum(math.prod(s) for s in shapes.values()) == SD1_PARAMS
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)
    rng = np.random.default_rng(0)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "layers.0.weight")):
                values = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
            else:
                fan_in = math.prod(shape[1:]) if len(shape) > 1 else 400
                values = rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))
            f.write(values.astype(np.float16).tobytes())
    os.replace(tmp, path)


def sd1_checkpoint(cache: Path) -> Path:
    """The cached SD1 checkpoint, generated on first use."""
    path = cache / "sd1-unet-random-fp16.safetensors"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} (once) ...", file=sys.stderr)
        make_sd1_checkpoint(path)
    return path


# ---------------------------------------------------------------------------------------------
# forward passes, in process (no memory column)

UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 256, 256),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
HN_DIMS = (768, 64, 128, 256)


def small_unet() -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def fixed_inputs() -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 4, 32, 32, generator=g), torch.tensor(500.0), torch.randn(1, 77, 768, generator=g)


def time_calls(variants: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, Sample]:
    """Seconds per call of each variant: ``calls`` calls per round, variants interleaved."""
    samples = {name: Sample() for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].seconds.append((time.perf_counter() - start) / calls)
    return samples


def forward_rows(
    work: Path, rounds: int, calls: int, threads: int
) -> tuple[list[tuple[str, Sample, str]], dict[str, float]]:
    import torch
    from safetensors.torch import load_file, save_file

    import hyperkit
    from hyperkit.bake import bake_sd
    from hyperkit.bake.diffusers_apply import apply_hypernetworks
    from hyperkit.runtime import open_session

    torch.set_num_threads(threads)
    lin, relu = work / "small-linear.pt", work / "small-relu-ln.pt"
    make_hypernetwork(lin, HN_DIMS)
    make_hypernetwork(relu, HN_DIMS, activation="relu", layer_norm=True)
    base = small_unet()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(work / "small.safetensors"))
    bake_sd([lin], work / "small.safetensors", work / "small-baked.safetensors")
    baked = small_unet()
    baked.load_state_dict(load_file(str(work / "small-baked.safetensors")))
    hooked = small_unet()
    apply_hypernetworks(hooked, [hyperkit.load(lin)])
    args = fixed_inputs()

    def fwd(unet: Any) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return unet(*args).sample

        return call

    with torch.no_grad():
        ref = hooked(*args).sample
        err = float((baked(*args).sample - ref).abs().max())
        changed = float((base(*args).sample - ref).abs().max())
    torch_samples = time_calls(
        {"base": fwd(base), "baked": fwd(baked), "runtime": fwd(hooked)},
        rounds,
        calls,
    )

    class Wrapper(torch.nn.Module):
        def __init__(self, unet: Any) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: Any, timestep: Any, context: Any) -> Any:
            return self.unet(sample, timestep, context, return_dict=False)[0]

    onnx_base = work / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(base),
            args,
            str(onnx_base),
            input_names=["sample", "timestep", "encoder_hidden_states"],
            output_names=["out_sample"],
            dynamo=False,
            opset_version=17,
            do_constant_folding=True,
            dynamic_axes={"sample": {0: "batch"}, "encoder_hidden_states": {0: "batch", 1: "tokens"}},
        )
    bake_sd([lin], onnx_base, work / "small-baked.onnx")
    bake_sd([relu], onnx_base, work / "small-subgraph.onnx")
    feeds = {"sample": args[0].numpy(), "timestep": args[1].numpy(), "encoder_hidden_states": args[2].numpy()}
    sessions = {
        name: open_session(work / f"small{suffix}.onnx", prefer_gpu=False, threads=threads).session
        for name, suffix in (("base", ""), ("baked", "-baked"), ("subgraph", "-subgraph"))
    }
    ort_err = float(np.abs(sessions["baked"].run(None, feeds)[0] - ref.numpy()).max())
    ort_samples = time_calls(
        {name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()},
        rounds,
        calls,
    )
    tb, ob = torch_samples["base"].median, ort_samples["base"].median
    rows = [
        ("UNet forward, torch: base UNet", torch_samples["base"], "1.00× base"),
        (
            "UNet forward, torch: baked (affine, folded)",
            torch_samples["baked"],
            f"{torch_samples['baked'].median / tb:.3f}× base",
        ),
        (
            "UNet forward, torch: base + `apply_hypernetworks` (run time)",
            torch_samples["runtime"],
            f"{torch_samples['runtime'].median / tb:.3f}× base",
        ),
        ("UNet forward, ONNX Runtime: base ONNX", ort_samples["base"], "1.00× base ONNX"),
        (
            "UNet forward, ONNX Runtime: baked ONNX (affine, weights rewritten)",
            ort_samples["baked"],
            f"{ort_samples['baked'].median / ob:.3f}× base ONNX",
        ),
        (
            "UNet forward, ONNX Runtime: subgraph inserted (relu + layer norm)",
            ort_samples["subgraph"],
            f"{ort_samples['subgraph'].median / ob:.3f}× base ONNX",
        ),
    ]
    info = {
        "torch_baked": torch_samples["baked"].median / tb,
        "torch_runtime": torch_samples["runtime"].median / tb,
        "ort_baked": ort_samples["baked"].median / ob,
        "ort_subgraph": ort_samples["subgraph"].median / ob,
        "err": err,
        "ort_err": ort_err,
        "changed": changed,
    }
    return rows, info


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds of the forward passes (median shown)")
    parser.add_argument("--bake-rounds", type=int, default=5, help="timed rounds of the checkpoint bake")
    parser.add_argument("--quick", action="store_true", help="few rounds, for development")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the generated SD1 checkpoint is kept")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and ONNX Runtime threads of the forward passes (1: on a small shared machine, spinning "
        "thread pools make multi-threaded timings mostly noise)",
    )
    parser.add_argument("--clean", action="store_true", help="delete the cached checkpoint at the end")
    args = parser.parse_args()
    rounds, calls, bake_rounds = (2, 2, 1) if args.quick else (args.rounds, 5, args.bake_rounds)
    py = sys.executable

    with tempfile.TemporaryDirectory(prefix="hyperkit-bench-bake-") as tmp:
        work = Path(tmp)
        fwd_rows, info = forward_rows(work, rounds, calls, args.threads)

        ckpt = sd1_checkpoint(args.cache)
        size = ckpt.stat().st_size
        hn = args.cache / "sd1-linear.pt"
        if not hn.exists():
            make_sd1_hypernetwork(hn)

        def bake_cmd(target: str, *extra: str) -> list[str]:
            return [HYPERKIT, "bake", str(hn), "--into", str(ckpt), "-o", str(work / target), *extra]

        variants = {
            HK: bake_cmd("hk.safetensors"),
            HK64: bake_cmd("hk64.safetensors", "--float64"),
            CP: ["cp", str(ckpt), str(work / "cp.safetensors")],
            NAIVE: [py, "-c", NAIVE_SCRIPT, str(ckpt), str(hn), str(work / "naive.safetensors")],
            COLD_HK: bake_cmd("cold-hk.safetensors"),
            COLD_CP: ["cp", str(ckpt), str(work / "cold-cp.safetensors")],
        }

        def prepare(name: str) -> None:
            """Every run writes a new file on a quiet disk; cold runs read the checkpoint from disk."""
            for old in work.glob("*.safetensors"):
                old.unlink()
            os.sync()
            if name in (COLD_HK, COLD_CP):
                evict(ckpt)

        bake = measure(variants, bake_rounds, prepare)
        hn_size = hn.stat().st_size
    if args.clean:
        shutil.rmtree(args.cache, ignore_errors=True)

    cp, cold_cp = bake[CP].median, bake[COLD_CP].median
    hk, hk64, naive, cold_hk = (bake[name] for name in (HK, HK64, NAIVE, COLD_HK))
    print(f"Machine: {machine()}")
    print(
        f"Forward: diffusers UNet, channels 64/128/256/256, text width 768, fp32, 1×4×32×32 latents, 77 tokens, "
        f"{args.threads} thread(s) in torch and ONNX Runtime; hypernetworks dims {'/'.join(map(str, HN_DIMS))}, "
        "[1, 2, 1]; "
        f"medians of {rounds} interleaved rounds of {calls} calls. Checkpoint: SD1 UNet, LDM naming, 686 fp16 "
        f"tensors, {size / 2**30:.2f} GiB; SD1 hypernetwork {hn_size / 2**20:.0f} MiB; medians of {bake_rounds} "
        "interleaved rounds, each writing a new file after a sync; the checkpoint in the page cache except in the "
        "cold rows; peak RSS: the largest of those runs\n"
    )
    print("| what | median | ratio | peak RSS | peak RSS / checkpoint |")
    print("|---|---:|---|---:|---|")
    for name, s, ratio in fwd_rows:
        print(f"| {name} | {s.median * 1000:.1f} ms | {ratio} | — | — |")
    for name, s in bake.items():
        base, label = (cold_cp, "cold cp") if name in (COLD_HK, COLD_CP) else (cp, "cp")
        print(
            f"| {name} | {s.median:.2f} s | {s.median / base:.2f}× {label} | {s.peak / 2**20:.0f} MiB "
            f"| {s.peak / size:.2f}× |"
        )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    print(
        f"- baked UNet (torch) {info['torch_baked']:.3f}× the base (target ≤ 1.02: "
        f"{verdict(info['torch_baked'] <= 1.02)}); run-time hypernetwork {info['torch_runtime']:.3f}×; "
        f"baked vs run time max abs {info['err']:.1e} (the hypernetwork moves the output by {info['changed']:.2g})"
    )
    print(
        f"- baked ONNX {info['ort_baked']:.3f}× the base ONNX (target ≤ 1.02: {verdict(info['ort_baked'] <= 1.02)}), "
        f"max abs vs run time {info['ort_err']:.1e}; relu + layer norm subgraph {info['ort_subgraph']:.3f}×"
    )
    print(
        f"- bake peak RSS {hk.peak / size:.2f}× the checkpoint (target ≤ 1.2: {verdict(hk.peak <= 1.2 * size)}; "
        f"naive {naive.peak / size:.2f}×); naive {naive.median / hk.median:.2f}× the bake's time"
    )
    print(
        f"- bake time (target ≤ 1.5× copying the file): {hk.median / cp:.2f}× `cp` from the page cache "
        f"({verdict(hk.median <= 1.5 * cp)}), {cold_hk.median / cold_cp:.2f}× `cp` from a cold cache "
        f"({verdict(cold_hk.median <= 1.5 * cold_cp)}); `--float64` {hk64.median / hk.median:.2f}× the default"
    )


if __name__ == "__main__":
    main()
