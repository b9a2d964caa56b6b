"""Benchmark `hyperkit eval` against the bare image encoder and a naive open_clip loop.

Side by side in one run, rounds interleaved, medians shown, ratios against the bare encoder:

- **bare encoder** — ``model.encode_image`` on tensors preprocessed beforehand (the limit: no
  decoding, no text, no metrics);
- **hyperkit eval** — :func:`hyperkit.eval.evaluate` with the model loaded once, cache off:
  decoding, preprocessing, image and text encoding, every metric, bootstrap CIs;
- **naive open_clip loop** — per batch: open + preprocess each image, encode images, tokenize
  and encode the batch's prompts, cosine (what most scripts do);
- **torchmetrics CLIPScore** — only with ``--torchmetrics-python PY``: a Python whose
  environment has torchmetrics and transformers < 5 (they cannot share the main venv, see
  docs/eval.md); it runs ``scripts/bench_eval.py --torchmetrics-worker`` on the same images
  with a randomly initialised transformers CLIP of the same size.

All on the same 64 PNGs (512×512, 16 prompts × 4 seeds) and a random-weight ViT-B-32.

    python scripts/bench_eval.py [--rounds 3] [--images 64] [--torchmetrics-python bench-out/tm/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "bench-out" / "eval"
BATCH = 32


def make_images(folder: Path, n: int) -> Path:
    """n deterministic 512×512 PNGs (smooth colour fields plus grain, like generated images)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        if not path.exists():
            rng = np.random.default_rng(i)
            base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((512, 512), Image.BICUBIC)
            a = np.asarray(base, dtype=np.float64) + rng.normal(0, 6, (512, 512, 3))
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(path)
        rows.append({"image": path.name, "prompt": f"a photo of subject {i // 4}, detailed", "seed": i % 4})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def make_weights(path: Path) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    if not path.exists():
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def bench_bare(clip, images: list[Path]) -> float:
    import torch
    from PIL import Image

    tensors = torch.stack([clip.preprocess(Image.open(p)) for p in images])
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(tensors), BATCH):
            clip.model.encode_image(tensors[s : s + BATCH])
    return len(images) / (time.perf_counter() - start)


def bench_hyperkit(clip, manifest: Path, n: int) -> float:
    from hyperkit.eval import evaluate

    start = time.perf_counter()
    evaluate(manifest, "ViT-B-32", None, clip=clip, use_cache=False, batch_size=BATCH)
    return n / (time.perf_counter() - start)


def bench_naive(clip, images: list[Path], prompts: list[str]) -> float:
    import torch
    from PIL import Image

    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(images), BATCH):
            x = torch.stack([clip.preprocess(Image.open(p)) for p in images[s : s + BATCH]])
            img = clip.model.encode_image(x)
            txt = clip.model.encode_text(clip.tokenizer(prompts[s : s + BATCH]))
            torch.nn.functional.cosine_similarity(img, txt)
    return len(images) / (time.perf_counter() - start)


def torchmetrics_worker(folder: Path, rounds: int) -> None:
    """Runs in the torchmetrics environment: prints one img/s figure per round as JSON."""
    import open_clip
    import torch
    from PIL import Image
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8, "intermediate_size": 2048},
        vision_config={
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "patch_size": 32,
            "image_size": 224,
        },
        projection_dim=512,
    )
    model = CLIPModel(config).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")  # transformers' tokenizer needs vocabulary files
    image_processor = CLIPImageProcessor()

    class Processor:
        def __call__(self, text=None, images=None, return_tensors="pt", padding=True, **kw):
            out = {}
            if text is not None:
                ids = tok(text)
                out["input_ids"], out["attention_mask"] = ids, (ids != 0).long()
            if images is not None:
                out["pixel_values"] = image_processor(images, return_tensors="pt")["pixel_values"]
            return out

    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    metric = CLIPScore(model_name_or_path=lambda: (model, Processor()))
    speeds = []
    for _ in range(rounds):
        metric.reset()
        start = time.perf_counter()
        for s in range(0, len(rows), BATCH):
            batch = rows[s : s + BATCH]
            imgs = [
                torch.from_numpy(np.asarray(Image.open(folder / r["image"]).convert("RGB"))).permute(2, 0, 1)
                for r in batch
            ]
            metric.update(imgs, [r["prompt"] for r in batch])
        metric.compute()
        speeds.append(len(rows) / (time.perf_counter() - start))
    print(json.dumps(speeds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--torchmetrics-python", help="python of an environment with torchmetrics, transformers<5")
    parser.add_argument("--torchmetrics-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = OUT / f"images{args.images}"
    manifest = make_images(folder, args.images)
    if args.torchmetrics_worker:
        torchmetrics_worker(folder, args.rounds)
        return 0
    import torch

    from hyperkit.eval.model import load_clip

    weights = make_weights(OUT / "vit-b-32-random.safetensors")
    clip = load_clip("ViT-B-32", str(weights))
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    images = [folder / r["image"] for r in rows]
    prompts = [r["prompt"] for r in rows]
    results: dict[str, list[float]] = {"bare": [], "hyperkit": [], "naive": []}
    bench_hyperkit(clip, manifest, len(images))  # warm-up: first-call allocations, file cache
    for _ in range(args.rounds):
        results["bare"].append(bench_bare(clip, images))
        results["hyperkit"].append(bench_hyperkit(clip, manifest, len(images)))
        results["naive"].append(bench_naive(clip, images, prompts))
    if args.torchmetrics_python:
        p = subprocess.run(
            [
                args.torchmetrics_python,
                __file__,
                "--torchmetrics-worker",
                "--rounds",
                str(args.rounds),
                "--images",
                str(args.images),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if p.returncode == 0:
            results["torchmetrics"] = json.loads(p.stdout.strip().splitlines()[-1])
        else:
            print(f"torchmetrics run failed:\n{p.stderr[-2000:]}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    names = {
        "hyperkit": "hyperkit eval (decode, preprocess, image+text, metrics, CIs)",
        "bare": "bare image encoder on preprocessed tensors (the limit)",
        "naive": "naive open_clip loop",
        "torchmetrics": "torchmetrics CLIPScore (transformers CLIP, same size)",
    }
    cpu = platform.processor() or platform.machine()
    print(
        f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.system()} {platform.release()}."
    )
    print(
        f"{len(images)} PNGs 512×512, {len(set(prompts))} prompts, batch {BATCH}, random-weight ViT-B-32, fp32 CPU; "
        f"medians of {args.rounds} interleaved rounds.\n"
    )
    print("| what | images/s | × bare encoder |")
    print("|---|---:|---:|")
    for key in ("hyperkit", "bare", "naive", "torchmetrics"):
        if key in med:
            print(f"| {names[key]} | {med[key]:.1f} | {med[key] / med['bare']:.2f}× |")
    if "torchmetrics" in med:
        print(f"\nhyperkit eval is {med['hyperkit'] / med['torchmetrics']:.2f}× torchmetrics CLIPScore.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
