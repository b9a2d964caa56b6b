"""Benchmark `hyperkit eval` against the bare image encoder, a naive loop and torchmetrics.

Side by side in one run, every variant warmed up once, then timed in interleaved rounds (so load
from other jobs hits all rows alike); the table shows medians and ratios against the bare encoder.
Steady-state throughput: models are built and modules imported before any timing, so no row
includes process start, imports or model loading. Rows:

- **bare encoder** — ``model.encode_image`` in batches of 32 on tensors preprocessed beforehand,
  under ``torch.inference_mode`` (the limit: no file reading, decoding, text or metrics);
- **hyperkit eval** — :func:`hyperkit.eval.evaluate` with the model already loaded, cache off:
  reading the manifest, reading + hashing + decoding + preprocessing every image, image and text
  encoding, every metric, the summary with bootstrap CIs (2000 resamples); no report is written;
- **naive open_clip loop** — per batch: open + preprocess each image, encode the images,
  tokenize and encode the batch's prompts, cosine (what most scripts do);
- **torchmetrics CLIPScore** — only with ``--torchmetrics-python PY``, a Python whose
  environment has torchmetrics and transformers < 5 (they cannot share the main venv; see
  "Benchmark" in docs/eval.md for the venv). That interpreter runs this script with
  ``--torchmetrics-worker`` for the whole run and times one round whenever asked, so its rounds
  interleave with the others. A randomly initialised transformers ``CLIPModel`` of the ViT-B/32
  size (tokenised with open_clip's tokenizer: transformers' needs vocabulary files); per batch:
  PIL decode to uint8 tensors, ``update()`` (HF image processor, tokenize, image + text encode),
  then ``compute()``.

All on the same 64 PNGs (512×512, 16 prompts × 4 seeds) and a random-weight ViT-B-32, fp32.

    python scripts/bench_eval.py [--rounds 3] [--images 64] [--torchmetrics-python /tmp/hk-bench-venv/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench import machine  # scripts/ is on sys.path when a script runs: one machine line for every table

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


def torchmetrics_worker(folder: Path) -> None:
    """Runs in the torchmetrics environment, kept alive for the whole benchmark so its rounds
    interleave with the others: prints ``ready``, then for every ``round`` line read on stdin
    scores all images once and prints that round's images/s."""
    import open_clip
    import torch
    from PIL import Image
    from torchmetrics.multimodal.clip_score import CLIPScore
    from torchvision.transforms.functional import pil_to_tensor
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
    print("ready", torch.__version__, flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        metric.reset()
        start = time.perf_counter()
        for s in range(0, len(rows), BATCH):
            batch = rows[s : s + BATCH]
            imgs = [pil_to_tensor(Image.open(folder / r["image"]).convert("RGB")) for r in batch]
            metric.update(imgs, [r["prompt"] for r in batch])
        metric.compute()
        print(json.dumps(len(rows) / (time.perf_counter() - start)), flush=True)


class TorchmetricsRunner:
    """The torchmetrics worker in its own interpreter; one :meth:`round` = one timed pass."""

    def __init__(self, python: str, images: int) -> None:
        cmd = [python, __file__, "--torchmetrics-worker", "--images", str(images)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the worker; close())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env
        )
        self.ready = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise RuntimeError(f"torchmetrics worker exited with {self.proc.returncode}:\n{self.stderr.read()[-2000:]}")
        return line.strip()

    def round(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()
        self.stderr.close()


ROWS = {
    "hyperkit": "hyperkit eval: read + hash + decode + preprocess (threads), image and text encode, all metrics, "
    "bootstrap CIs",
    "bare": "bare image encoder on tensors preprocessed beforehand (the limit)",
    "naive": "naive open_clip loop: per batch open + preprocess, image encode, text encode, cosine",
    "torchmetrics": "torchmetrics CLIPScore (transformers CLIP, same size): per batch PIL decode, update(), compute()",
}


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
        torchmetrics_worker(folder)
        return 0

    from hyperkit.eval.model import load_clip

    weights = make_weights(OUT / "vit-b-32-random.safetensors")
    clip = load_clip("ViT-B-32", str(weights))
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    images = [folder / r["image"] for r in rows]
    prompts = [r["prompt"] for r in rows]
    tm = None
    if args.torchmetrics_python:
        try:
            tm = TorchmetricsRunner(args.torchmetrics_python, args.images)
        except (OSError, RuntimeError) as e:
            print(f"torchmetrics row skipped: {e}", file=sys.stderr)
    variants: dict[str, Callable[[], float]] = {
        "bare": lambda: bench_bare(clip, images),
        "hyperkit": lambda: bench_hyperkit(clip, manifest, len(images)),
        "naive": lambda: bench_naive(clip, images, prompts),
    }
    if tm is not None:
        variants["torchmetrics"] = tm.round
    results: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for run in variants.values():  # warm-up: first-call allocations, file cache, lazy imports
            run()
        for _ in range(args.rounds):
            for key, run in variants.items():
                results[key].append(run())
    finally:
        if tm is not None:
            tm.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"Machine: {machine()}.")
    print(
        f"{len(images)} PNGs 512×512, {len(set(prompts))} prompts, batch {BATCH}, random-weight ViT-B-32, fp32 CPU; "
        f"medians of {args.rounds} interleaved rounds after one warm-up round each.\n"
    )
    print("| what | images/s | × bare encoder |")
    print("|---|---:|---:|")
    for key in ("hyperkit", "bare", "naive", "torchmetrics"):
        if key in med:
            print(f"| {ROWS[key]} | {med[key]:.1f} | {med[key] / med['bare']:.2f}× |")
    if "torchmetrics" in med:
        print(f"\nhyperkit eval is {med['hyperkit'] / med['torchmetrics']:.2f}× torchmetrics CLIPScore.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
