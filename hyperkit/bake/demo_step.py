"""The bake step of ``hyperkit demo``: the bundled linear hypernetwork into the bundled tiny UNet.

It bakes into the diffusers UNet (exact fold, no torch needed) and into its ONNX export, prints
each parity report's verdict and, when diffusers is installed, compares full UNet forwards: the
baked UNet (torch) and the baked ONNX (ONNX Runtime) against the hypernetwork applied at run time
on the original UNet.

Example:
    >>> OUTPUTS
    ('demo-unet-baked.safetensors', 'demo-unet-baked.onnx')
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OUTPUTS = ("demo-unet-baked.safetensors", "demo-unet-baked.onnx")


def bake_demo_lines(hn_path: Path, out: Path, *, force: bool) -> Iterator[str]:
    """Bake ``hn_path`` into both bundled bases inside ``out``; yield the demo's log lines."""
    from hyperkit.bake.sd import bake_sd
    from hyperkit.demo import fixture_path

    unet = fixture_path("bake/unet/diffusion_pytorch_model.safetensors")
    onnx_base = fixture_path("bake/unet.onnx")
    results = []
    for base, name in ((unet, OUTPUTS[0]), (onnx_base, OUTPUTS[1])):
        r = bake_sd([hn_path], base, out / name, strengths=[0.8], force=force)
        results.append(r)
        yield (
            f"  bake {hn_path.name} (strength 0.8) into {base.parent.name}/{base.name}: {len(r.layers)} attention "
            f"layers {'folded exactly' if r.method == 'fold' else 'extended'}, parity max abs error "
            f"{r.max_abs:.2g} (tolerance {r.tolerance:g}) → {name}"
        )
    if importlib.util.find_spec("diffusers") is None:
        yield "  (install hyperkit[bake] for the full-UNet comparison with diffusers)"
        return
    yield from _full_forward(hn_path, unet, out / OUTPUTS[0], out / OUTPUTS[1])


def _full_forward(hn_path: Path, unet_file: Path, baked_file: Path, baked_onnx: Path) -> Iterator[str]:
    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    import hyperkit
    from hyperkit.bake.diffusers_apply import apply_hypernetworks
    from hyperkit.runtime import make_session

    config = json.loads((unet_file.parent / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}

    def model(path: Path) -> Any:
        m: Any = UNet2DConditionModel(**config)
        m.eval()
        m.load_state_dict(load_file(str(path)))
        return m

    g = torch.Generator().manual_seed(0)
    sample, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor(10.0), torch.randn(2, 6, 16, generator=g)
    original = model(unet_file)
    handle = apply_hypernetworks(original, [hyperkit.load(hn_path)], [0.8])
    with torch.no_grad():
        runtime = original(sample, t, ctx).sample.numpy()
        handle.remove()
        plain = original(sample, t, ctx).sample.numpy()
        baked = model(baked_file)(sample, t, ctx).sample.numpy()
    session, provider = make_session(baked_onnx, prefer_gpu=False)
    feeds = {"sample": sample.numpy(), "timestep": t.numpy(), "encoder_hidden_states": ctx.numpy()}
    onnx_out = session.run(None, feeds)[0]
    yield (
        f"  full UNet forward vs the hypernetwork applied at run time (diffusers): baked checkpoint max abs "
        f"{np.abs(baked - runtime).max():.2g}, baked ONNX on {provider} {np.abs(onnx_out - runtime).max():.2g} "
        f"(the hypernetwork itself moves the output by {np.abs(runtime - plain).max():.2g})"
    )
