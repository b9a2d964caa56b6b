#!/usr/bin/env python3
"""Generate the tiny base models ``hyperkit demo`` and the docs' bake examples use.

Usage::

    .venv/bin/python scripts/make_bake_fixtures.py           # rewrite fixtures/bake/ and its MANIFEST.json
    .venv/bin/python scripts/make_bake_fixtures.py --check   # regenerate into a temp dir, compare hashes

``fixtures/bake/unet/`` is a diffusers ``UNet2DConditionModel`` folder (``config.json`` +
``diffusion_pytorch_model.safetensors``) with context widths 8 and 16 — the widths of the bundled
hypernetwork fixtures — and ``fixtures/bake/unet.onnx`` the same UNet exported like optimum does
(legacy exporter, opset 17, weights inline); ``fixtures/bake/unet-dynamo.onnx`` (+ ``.onnx.data``)
is it exported by the ``torch.onnx`` dynamo exporter with external data, the base the bake tests
use for that exporter (exporting takes most of a minute). Weights come from numpy's PCG64 integers scaled to
small floats (machine-independent), never from torch's SIMD normal sampler; the safetensors file
is written by hyperkit's own writer (fixed order, no timestamps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "bake"
sys.path.insert(0, str(ROOT))

CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 16,
    "attention_head_dim": 4,
    "norm_num_groups": 4,
}


def build() -> torch.nn.Module:
    """The fixture UNet with deterministic weights."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**CONFIG).eval()
    rng = np.random.default_rng(20260101)
    state = {}
    for name, p in unet.state_dict().items():
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight")) or (
            ".norm" in name and name.endswith("weight")
        ):
            values = 1.0 + rng.integers(-64, 65, p.shape) / 1024.0
        else:
            scale = 1.0 / np.sqrt(max(1, p[0].numel())) if p.ndim > 1 else 0.05
            values = rng.integers(-1024, 1025, p.shape) / 1024.0 * scale
        state[name] = torch.from_numpy(np.asarray(values, np.float32))
    unet.load_state_dict(state)
    return unet


def write(folder: Path) -> list[Path]:
    from hyperkit.formats.safetensors_io import write_safetensors

    unet = build()
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "UNet2DConditionModel", **CONFIG}
    (folder / "unet" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = [(k, v.numpy()) for k, v in sorted(unet.state_dict().items())]
    write_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors", tensors, {"format": "pt"})

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.unet(sample, timestep, context, return_dict=False)[0]

    args = (torch.zeros(1, 4, 8, 8), torch.tensor(1.0), torch.zeros(1, 4, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(),
            args,
            str(folder / "unet.onnx"),
            input_names=["sample", "timestep", "encoder_hidden_states"],
            output_names=["out_sample"],
            dynamo=False,
            opset_version=17,
            dynamic_axes={"sample": {0: "batch"}, "encoder_hidden_states": {0: "batch", 1: "tokens"}},
        )
        batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
        torch.onnx.export(  # what the bake tests use for the dynamo exporter (slow to run there)
            Wrapper(),
            (torch.zeros(2, 4, 8, 8), torch.tensor(1.0), torch.zeros(2, 5, 16)),
            str(folder / "unet-dynamo.onnx"),
            input_names=["sample", "timestep", "encoder_hidden_states"],
            output_names=["out_sample"],
            dynamo=True,
            external_data=True,
            verbose=False,
            dynamic_shapes={"sample": {0: batch}, "timestep": None, "context": {0: batch, 1: tokens}},
        )
    strip_stack_traces(folder / "unet-dynamo.onnx")
    return [
        folder / "unet" / "config.json",
        folder / "unet" / "diffusion_pytorch_model.safetensors",
        folder / "unet.onnx",
        folder / "unet-dynamo.onnx",
        folder / "unet-dynamo.onnx.data",
    ]


def strip_stack_traces(path: Path) -> None:
    """Drop the dynamo exporter's ``pkg.torch.onnx.stack_trace`` node metadata: it holds absolute
    paths of this checkout and of site-packages (so the bytes would depend on where the script
    runs) and a third of the file's size; nothing reads it. The rest stays as exported, the module
    paths (``pkg.torch.onnx.name_scopes``) and the external data reference included."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def manifest(folder: Path, files: list[Path]) -> dict[str, object]:
    return {
        "generator": "scripts/make_bake_fixtures.py",
        "torch_version": torch.__version__.split("+")[0],
        "files": {
            str(f.relative_to(folder)): {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "size": f.stat().st_size}
            for f in files
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="regenerate in a temp folder and compare with MANIFEST.json"
    )
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = manifest(Path(tmp), write(Path(tmp)))
        stored = json.loads((OUT / "MANIFEST.json").read_text())
        bad = [k for k, v in fresh["files"].items() if stored["files"].get(k) != v]  # type: ignore[union-attr]
        print("fixtures/bake: " + ("reproducible" if not bad else f"DIFFER: {', '.join(bad)}"))
        return 1 if bad else 0
    OUT.mkdir(parents=True, exist_ok=True)
    files = write(OUT)
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest(OUT, files), indent=2) + "\n")
    print(f"wrote {len(files)} files to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
