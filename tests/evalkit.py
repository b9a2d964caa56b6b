"""Helpers for the eval tests: a tiny random-weight CLIP saved to a file, images, manifests.

The model is registered from a JSON config (open_clip's format), created with a fixed seed and
saved as ``.safetensors``; tests load it through hyperkit's real ``--model CONFIG.json
--pretrained FILE`` path. The *independent* reference embeddings come from open_clip's own
``create_model_and_transforms`` + ``encode_image``/``encode_text`` over the full context, one
image at a time through its PIL transform — none of hyperkit's batching, caching or shortcuts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_clip(folder: Path, name: str = "hk-test-tiny", seed: int = 0) -> tuple[Path, Path]:
    """``(config.json, weights.safetensors)`` of a random-weight tiny CLIP."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    weights = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return config, weights


def make_image(path: Path, seed: int, size: tuple[int, int] = (96, 80)) -> Path:
    """A deterministic smooth colour image (PNG unless the suffix says otherwise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize(size, Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def reference_model(config: Path, weights: Path) -> tuple[Any, Any, Any]:
    """open_clip's own model, transform and tokenizer for the same weights (the oracle)."""
    import open_clip

    open_clip.add_model_config(str(config))
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem, pretrained=str(weights))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(config.stem)


def reference_image_embedding(model: Any, preprocess: Any, path: Path) -> np.ndarray:
    import torch
    from PIL import Image

    with torch.no_grad(), Image.open(path) as im:
        return model.encode_image(preprocess(im)[None]).numpy()[0].astype(np.float64)


def reference_text_embedding(model: Any, tokenizer: Any, text: str) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.encode_text(tokenizer([text])).numpy()[0].astype(np.float64)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    """The oracle's cosine: plain numpy, written out."""
    return float(np.dot(a, b) / (np.sqrt(np.dot(a, a)) * np.sqrt(np.dot(b, b))))
