"""Test helpers for baking: tiny diffusers UNets built in code, saved in both namings, exported
to ONNX both ways, and hypernetworks saved the way A1111 saves them (see conftest)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from conftest import a1111_dict, save_pt

CROSS = 48  # text width: distinct from the channel widths, so attn1/attn2 are told apart
CHANNELS = (32, 64)


def tiny_unet(seed: int = 0, cross: int = CROSS, channels: tuple[int, ...] = CHANNELS, dtype: Any = None) -> Any:
    """A small SD-shaped UNet: cross-attention in a down, the mid and an up block."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a missed bias term shows
        for name, p in unet.named_parameters():
            if name.endswith("to_out.0.bias"):
                p.normal_(0, 0.1)
    return unet.to(dtype) if dtype is not None else unet


def inputs(seed: int = 1, cross: int = CROSS, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.tensor(7.0), torch.randn(batch, 5, cross, generator=g)


def forward(unet: Any, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    with torch.no_grad():
        return unet(args[0].to(unet.dtype), args[1], args[2].to(unet.dtype)).sample.float().numpy()


def save_diffusers_file(unet: Any, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return path


def save_diffusers_folder(unet: Any, folder: Path) -> Path:
    unet.save_pretrained(folder, safe_serialization=True)
    return folder


_LDM_EXTRA = {  # non-UNet tensors of a full checkpoint: copied byte for byte
    "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77),
}


def to_ldm(name: str) -> str:
    """A diffusers UNet key in the LDM naming's spirit: a bijection onto ``model.diffusion_model.*``
    keys (the attention suffix ``transformer_blocks.N.attnK.to_*`` is the same in both namings)."""
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(.*)", name)
    if m:
        block = "input_blocks" if m.group(1) == "down_blocks" else "output_blocks"
        return f"model.diffusion_model.{block}.{m.group(2)}.{m.group(3)}"
    return "model.diffusion_model." + name.replace("mid_block.", "middle_block.")


def from_ldm(name: str) -> str:
    rest = name[len("model.diffusion_model.") :]
    m = re.match(r"(input_blocks|output_blocks)\.(\d+)\.(.*)", rest)
    if m:
        return f"{'down_blocks' if m.group(1) == 'input_blocks' else 'up_blocks'}.{m.group(2)}.{m.group(3)}"
    return rest.replace("middle_block.", "mid_block.")


def save_ldm_file(unet: Any, path: Path, extra: bool = True) -> Path:
    from safetensors.torch import save_file

    tensors = {to_ldm(k): v.contiguous() for k, v in unet.state_dict().items()}
    if extra:
        g = torch.Generator().manual_seed(5)
        tensors.update(
            {k: torch.randn(s, generator=g).to(next(iter(tensors.values())).dtype) for k, s in _LDM_EXTRA.items()}
        )
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def load_state(unet: Any, path: Path) -> Any:
    """``unet`` with the weights of a (baked) file in either naming."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    sd = {
        (from_ldm(k) if k.startswith("model.diffusion_model.") else k): v
        for k, v in sd.items()
        if not k.startswith(("first_stage", "cond_stage"))
    }
    unet.load_state_dict(sd, strict=True)
    return unet


def save_hn(path: Path, dims: tuple[int, ...], **kw: Any) -> Path:
    return save_pt(a1111_dict(dims=dims, **kw), path)


class _Wrapper(torch.nn.Module):
    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def export_onnx(unet: Any, path: Path, *, dynamo: bool) -> Path:
    """Export like optimum (legacy, opset 17, constant folding) or with the dynamo exporter
    (float inputs in the UNet's dtype)."""
    args = inputs(cross=int(unet.config.cross_attention_dim))
    args = (args[0].to(unet.dtype), args[1], args[2].to(unet.dtype))
    names = ["sample", "timestep", "encoder_hidden_states"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        common = {"input_names": names, "output_names": ["out_sample"], "dynamo": dynamo}
        if dynamo:
            batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
            shapes = {"sample": {0: batch}, "timestep": None, "encoder_hidden_states": {0: batch, 1: tokens}}
            torch.onnx.export(
                _Wrapper(unet), args, str(path), **common, external_data=True, verbose=False, dynamic_shapes=shapes
            )
        else:
            axes = {"sample": {0: "batch"}, "encoder_hidden_states": {0: "batch", 1: "tokens"}}
            torch.onnx.export(
                _Wrapper(unet), args, str(path), **common, opset_version=17, do_constant_folding=True, dynamic_axes=axes
            )
    return path


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bake"
#: The bundled fixture UNet (scripts/make_bake_fixtures.py): text width 16, channels 8 and 16.
FIXTURE_CROSS = 16


def fixture_unet() -> Any:
    """The UNet of ``fixtures/bake/unet/`` — the one ``unet-dynamo.onnx`` was exported from."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(FIXTURES / "unet").eval()


def run_onnx(path: Path, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    from hyperkit.runtime import make_session

    session, _ = make_session(path, prefer_gpu=False)
    half = session.get_inputs()[0].type == "tensor(float16)"  # an fp16 export takes fp16 inputs
    sample, context = (a.half() if half else a for a in (args[0], args[2]))
    feeds = {"sample": sample.numpy(), "timestep": args[1].numpy(), "encoder_hidden_states": context.numpy()}
    return session.run(None, feeds)[0].astype(np.float32)


def baked_record(path: Path) -> list[dict[str, Any]]:
    from hyperkit.formats.safetensors_io import read_safetensors

    return json.loads(read_safetensors(path)[1]["hyperkit.baked"])


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
