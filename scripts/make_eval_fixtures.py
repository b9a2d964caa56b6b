"""Regenerate fixtures/eval/: a tiny random-weight CLIP and 13 small images for `hyperkit demo`.

Deterministic (fixed seeds, no timestamps); `--check` regenerates into a temporary folder and
compares with the committed files' SHA-256 in fixtures/eval/MANIFEST.json. The model is an
open_clip config (registered from JSON) with fp16 weights (~0.5 MB: the 49408-token embedding
dominates, so the text tower is 4 wide); the images are 64×64 PNGs: a "base" variant, an "hn"
variant that is the same picture shifted towards one colour (what a style hypernetwork does),
and one style reference.

    python scripts/make_eval_fixtures.py          # write fixtures/eval/
    python scripts/make_eval_fixtures.py --check  # verify the committed files are reproducible
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 16, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 4, "heads": 1, "layers": 1},
}
PROMPTS = ["a red barn in a field", "a lighthouse on a cliff at dusk", "a bowl of lemons on a table"]
STYLE = "ukiyo-e woodblock print"
SEEDS = [1, 2]


def _image(seed: int, tint: np.ndarray | None) -> object:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float64)
    if tint is not None:
        small = 0.6 * small + 0.4 * tint
    return Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR)


def generate(out: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = out / "tiny-clip.json"
    config.write_text(json.dumps(CONFIG, indent=2) + "\n")
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "tiny-clip.safetensors"), metadata={"note": "random weights, hyperkit demo"})
    tint = np.array([40.0, 60.0, 200.0])
    rows = []
    (out / "images").mkdir(exist_ok=True)
    for pi, prompt in enumerate(PROMPTS):
        for seed in SEEDS:
            for variant, t in (("base", None), ("hn", tint)):
                name = f"images/{variant}-{pi}-{seed}.png"
                _image(100 * pi + seed, t).save(out / name, optimize=True)
                rows.append(
                    {
                        "image": name,
                        "prompt": prompt,
                        "variant": variant,
                        "prompt_id": f"p{pi}",
                        "seed": seed,
                        "style_prompt": STYLE,
                        "reference": "images/style-ref.png",
                    }
                )
    _image(999, tint).save(out / "images" / "style-ref.png", optimize=True)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    manifest = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="regenerate elsewhere and compare checksums")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
        print(f"wrote {OUT} ({total / 1024:.0f} KiB)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = json.loads((Path(tmp) / "MANIFEST.json").read_text())
    committed = json.loads((OUT / "MANIFEST.json").read_text())
    differ = sorted(k for k in set(fresh) | set(committed) if fresh.get(k) != committed.get(k))
    print("reproducible" if not differ else f"differ: {', '.join(differ)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
