"""Write the generator fixtures in ``fixtures/generator/`` deterministically, with a SHA-256 manifest.

- ``tiny_conv.safetensors``: the docs' worked example scaled down (chunked MLP, 4 task ids,
  conv2d -> relu -> flatten -> linear -> layernorm, slots full/lora/delta/static);
- ``tiny_mlp_continuous.pt``: an MLP hypernet of a continuous condition, MLP target, LoRA slots;
- ``task2.onnx``: ``tiny_conv.safetensors`` baked for task 2 (what ``hyperkit run`` examples use);
- ``hypnettorch_chunked.pt`` + ``hypnettorch_chunked.json``: a real hypnettorch ``ChunkedHMLP``
  state dict (``torch.save(hnet.state_dict())``, aliased tensors and all) and its constructor
  arguments, for ``hyperkit import-hypnettorch``.

Usage: ``python scripts/make_generator_fixtures.py [--check]`` (``--check`` rebuilds into a
temporary folder and compares with the manifest; the ONNX and hypnettorch files depend on the
installed hyperkit/torch versions, so only the first two are compared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "fixtures" / "generator"
#: Fixtures whose bytes depend only on hyperkit's writers and numpy's seeded RNG.
STABLE = ("tiny_conv.safetensors", "tiny_mlp_continuous.pt")
HYPNETTORCH_CONFIG = {
    "hnet": {
        "type": "ChunkedHMLP",
        "layers": [16],
        "cond_in_size": 4,
        "num_cond_embs": 3,
        "chunk_size": 24,
        "chunk_emb_size": 2,
    },
    "mnet": {"type": "MLP", "n_in": 5, "n_out": 3, "hidden_layers": [7]},
}


def build(out: Path) -> dict[str, str]:
    import hyperkit
    from hyperkit.generator.bake import bake_generator
    from hyperkit.generator.examples import conv_document, mlp_document, random_generator

    hyperkit.save(random_generator(conv_document(), seed=0), out / "tiny_conv.safetensors", force=True)
    doc = mlp_document(condition="continuous", mode="lora")
    hyperkit.save(random_generator(doc, seed=1), out / "tiny_mlp_continuous.pt", force=True)
    bake_generator(out / "tiny_conv.safetensors", "2", out / "task2.onnx", force=True)
    _hypnettorch(out)
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.name != "MANIFEST.json"
    }


def _hypnettorch(out: Path) -> None:
    import torch
    from hypnettorch.hnets import ChunkedHMLP
    from hypnettorch.mnets import MLP

    torch.manual_seed(0)
    cfg = HYPNETTORCH_CONFIG
    mnet = MLP(n_in=5, n_out=3, hidden_layers=(7,), no_weights=True, verbose=False)
    h = cfg["hnet"]
    hnet = ChunkedHMLP(
        mnet.param_shapes,
        chunk_size=h["chunk_size"],
        chunk_emb_size=h["chunk_emb_size"],
        cond_in_size=h["cond_in_size"],
        layers=tuple(h["layers"]),
        num_cond_embs=h["num_cond_embs"],
        verbose=False,
    )
    torch.save(hnet.state_dict(), out / "hypnettorch_chunked.pt")
    (out / "hypnettorch_chunked.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            got = build(Path(tmp))
        want = json.loads((OUT / "MANIFEST.json").read_text())
        bad = [name for name in STABLE if got[name] != want.get(name)]
        print("reproducible" if not bad else f"differ: {', '.join(bad)}")
        return 1 if bad else 0
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = build(OUT)
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
