"""`hyperkit eval` end to end with a tiny random-weight CLIP loaded through the real --pretrained
path; every number checked against open_clip's own per-image encoding and numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evalkit import (
    cos,
    make_image,
    make_tiny_clip,
    reference_image_embedding,
    reference_model,
    reference_text_embedding,
    write_csv,
)

VARIANTS, PROMPTS, SEEDS = ("base", "hn"), ("a red fox in snow", "a lighthouse at dusk", "two cats"), (1, 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return make_tiny_clip(folder)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 images (2 variants × 3 prompts × 2 seeds) with a style prompt and two references."""
    root = tmp_path_factory.mktemp("data")
    rows = []
    for vi, v in enumerate(VARIANTS):
        for pi, p in enumerate(PROMPTS):
            for s in SEEDS:
                img = make_image(root / "img" / f"{v}-{pi}-{s}.png", seed=100 * vi + 10 * pi + s)
                rows.append(
                    {
                        "image": img.relative_to(root).as_posix(),
                        "prompt": p,
                        "variant": v,
                        "seed": s,
                        "style_prompt": "ukiyo-e woodblock print",
                        "reference": "refs/r1.png|refs/r2.png",
                    }
                )
    make_image(root / "refs" / "r1.png", seed=900, size=(120, 64))
    make_image(root / "refs" / "r2.png", seed=901, size=(64, 64))
    return root, rows


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERKIT_CACHE", str(tmp_path / "cache"))


def run_eval(run_cli, tiny, source, *args):
    config, weights = tiny
    return run_cli("eval", source, "--model", config, "--pretrained", weights, *args)


@pytest.fixture(scope="module")
def oracle(tiny, dataset):
    """Embeddings from open_clip directly: image by image, full 77-token context."""
    model, preprocess, tokenizer = reference_model(*tiny)
    root, rows = dataset
    images = {r["image"]: reference_image_embedding(model, preprocess, root / r["image"]) for r in rows}
    for ref in ("refs/r1.png", "refs/r2.png"):
        images[ref] = reference_image_embedding(model, preprocess, root / ref)
    texts = {}
    for p in PROMPTS:
        texts[p] = reference_text_embedding(model, tokenizer, p)
        texts[p + ", ukiyo-e woodblock print"] = reference_text_embedding(
            model, tokenizer, p + ", ukiyo-e woodblock print"
        )
    return images, texts


def test_every_metric_matches_open_clip_and_numpy(run_cli, tiny, dataset, oracle, tmp_path):
    root, rows = dataset
    manifest = write_csv(root / "m.csv", rows)
    out = tmp_path / "report.parquet"
    result = run_eval(run_cli, tiny, manifest, "-o", out)
    assert result.code == 0, result.stderr
    df = pd.read_parquet(out)
    assert list(df.columns[:4]) == ["row", "image", "prompt", "variant"] and "clip_t" in df
    images, texts = oracle
    for r in df.itertuples():
        expected = cos(images[r.image], texts[r.prompt])
        assert r.clip_t == pytest.approx(expected, abs=2e-5)
        assert r.clip_t_x100 == pytest.approx(100 * r.clip_t)
        assert r.clip_t_hessel == pytest.approx(2.5 * max(r.clip_t, 0))
        refs = [images["refs/r1.png"], images["refs/r2.png"]]
        assert r.clip_i == pytest.approx(np.mean([cos(images[r.image], e) for e in refs]), abs=2e-5)
        if r.variant == "hn":
            b = f"base-{r.image.split('-', 1)[1]}"
            base_img = images[f"img/{b}"]
            assert r.content_keep == pytest.approx(cos(images[r.image], base_img), abs=2e-5)
            unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
            di = unit(images[r.image]) - unit(base_img)
            dt = unit(texts[r.prompt + ", ukiyo-e woodblock print"]) - unit(texts[r.prompt])
            assert r.directional == pytest.approx(cos(di, dt), abs=1e-4)
        else:
            assert np.isnan(r.content_keep) and np.isnan(r.directional)
    assert set(df["error"]) == {""}
    assert df["pretrained_sha256"].iloc[0] == __import__("hashlib").sha256(Path(tiny[1]).read_bytes()).hexdigest()
    assert {"model", "hyperkit_version", "torch_version", "open_clip_version", "device", "precision"} <= set(df)


def test_summary_diversity_cmmd_and_comparison(tiny, dataset, oracle):
    from hyperkit.eval import evaluate
    from hyperkit.eval.metrics import cmmd

    root, rows = dataset
    manifest = write_csv(root / "m2.csv", rows)
    result = evaluate(manifest, str(tiny[0]), str(tiny[1]))
    again = evaluate(manifest, str(tiny[0]), str(tiny[1]))
    pd.testing.assert_frame_equal(result.summary, again.summary)  # seeded bootstrap: identical
    images, _ = oracle
    s = result.summary.set_index(["variant", "metric"])
    for v in VARIANTS:
        per_prompt = []
        for pi in range(3):
            a, b = (images[f"img/{v}-{pi}-{s_}.png"] for s_ in SEEDS)
            per_prompt.append(1 - cos(a, b))
        assert s.loc[(v, "diversity"), "mean"] == pytest.approx(np.mean(per_prompt), abs=2e-5)
        mean, lo, hi = s.loc[(v, "clip_t"), ["mean", "ci_low", "ci_high"]]
        assert lo <= mean <= hi
    x = np.stack([images[r["image"]] for r in rows if r["variant"] == "hn"])
    y = np.stack([images[r["image"]] for r in rows if r["variant"] == "base"])
    assert s.loc[("hn", "cmmd"), "mean"] == pytest.approx(cmmd(x, y), rel=1e-3, abs=1e-6)
    c = result.comparisons.set_index("metric").loc["clip_t"]
    frame = result.frame.set_index("image")
    deltas = [
        frame.loc[f"img/hn-{pi}-{s_}.png", "clip_t"] - frame.loc[f"img/base-{pi}-{s_}.png", "clip_t"]
        for pi in range(3)
        for s_ in SEEDS
    ]
    assert c["delta_mean"] == pytest.approx(np.mean(deltas))
    assert c["win_rate"] == pytest.approx(np.mean([1.0 if d > 0 else 0.0 for d in deltas]))
    assert c["n_pairs"] == 6 and c["ci_low"] <= c["delta_mean"] <= c["ci_high"]


def _bad_dataset(root: Path) -> Path:
    good = make_image(root / "ok.png", seed=1)
    trunc = root / "truncated.png"
    trunc.write_bytes(good.read_bytes()[:200])
    (root / "text.png").write_bytes(b"this is not an image")
    (root / "empty.png").write_bytes(b"")
    rows = [
        {"image": "ok.png", "prompt": "a dog", "seed": 1},
        {"image": "missing.png", "prompt": "a dog", "seed": 2},
        {"image": "truncated.png", "prompt": "a dog", "seed": 3},
        {"image": "text.png", "prompt": "a dog", "seed": 4},
        {"image": "empty.png", "prompt": "a dog", "seed": 5},
        {"image": "ok.png", "prompt": "", "seed": 6},
        {"image": "ok.png", "prompt": "a dog", "seed": 1},
    ]
    return write_csv(root / "bad.csv", rows)


def test_bad_rows_are_listed_and_the_run_goes_on(run_cli, tiny, tmp_path):
    manifest = _bad_dataset(tmp_path)
    out = tmp_path / "r.csv"
    result = run_eval(run_cli, tiny, manifest, "-o", out)
    assert result.code == 0, result.stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 7  # every row keeps its place
    assert df["error"].tolist() == [
        "",
        "image not found: missing.png",
        "cannot decode image: image file is truncated",
        "cannot decode image: not an image (unknown or unsupported format)",
        "empty file (0 bytes): empty.png",
        "missing prompt",
        "duplicate of row 1 (same image, prompt and variant)",
    ]
    assert df["clip_t"].iloc[0] != "" and (df["clip_t"].iloc[1:] == "").all()
    assert f"Warning: {manifest}: 6 row(s) could not be fully scored (see the error column)" in result.stderr
    assert "## Rows with problems (6)" in result.stdout


def test_strict_makes_bad_rows_fatal(run_cli, tiny, tmp_path):
    manifest = _bad_dataset(tmp_path)
    out = tmp_path / "r.csv"
    result = run_eval(run_cli, tiny, manifest, "-o", out, "--strict")
    assert result.code == 3
    assert result.stderr.startswith(
        f"Error: {manifest}: 4 bad row(s) with --strict: row 2 (missing.png): image not found"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.txt", "image,prompt\n", "not a manifest (expected .csv, .jsonl or .parquet, or a folder of images)"),
        (
            "m.csv",
            "img,caption_text\na.png,x\n",
            "no 'image' and no 'prompt' column (columns found: 'img', 'caption_text')",
        ),
        ("m.csv", "image,text2\na.png,x\n", "no 'prompt' column (columns found: 'image', 'text2')"),
        ("m.jsonl", '{"image": "a.png", "prompt": "x"}\n[1, 2]\n', "line 2 is not a JSON object"),
        ("m.jsonl", '{"image": "a.png", "prompt": \n', "not a readable JSONL manifest"),
        ("m.parquet", "PAR1 not really", "not a readable PARQUET manifest"),
        ("m.csv", "", "not a readable CSV manifest"),
    ],
)
def test_a_bad_manifest_is_exit_3(run_cli, tiny, tmp_path, name, content, message):
    manifest = tmp_path / name
    manifest.write_text(content)
    result = run_eval(run_cli, tiny, manifest, "-o", tmp_path / "r.csv")
    assert result.code == 3
    assert result.stderr.startswith(f"Error: {manifest}: {message}")
    assert not (tmp_path / "r.csv").exists()


def test_unknown_baseline_variant_is_exit_3(run_cli, tiny, dataset):
    root, rows = dataset
    manifest = write_csv(root / "m3.csv", rows)
    result = run_eval(run_cli, tiny, manifest, "--baseline-variant", "nope")
    assert result.code == 3
    assert result.stderr.startswith(f"Error: {manifest}: unknown baseline variant 'nope' (variants: base, hn)")


def test_existing_report_needs_force(run_cli, tiny, dataset, tmp_path):
    root, rows = dataset
    manifest = write_csv(root / "m4.csv", rows[:2])
    out = tmp_path / "r.md"
    out.write_text("keep me")
    result = run_eval(run_cli, tiny, manifest, "-o", out)
    assert result.code == 3
    assert result.stderr == f"Error: {out}: already exists\nHint: pass --force to overwrite it\n"
    assert out.read_text() == "keep me"
    assert run_eval(run_cli, tiny, manifest, "-o", out, "--force").code == 0
    assert out.read_text().startswith(f"# hyperkit eval: {manifest}")
    assert run_eval(run_cli, tiny, manifest, "-o", tmp_path / "r.xlsx").code == 2


def test_gate_exit_codes(run_cli, tiny, dataset, tmp_path):
    root, rows = dataset
    manifest = write_csv(root / "m5.csv", rows)
    ok = run_eval(run_cli, tiny, manifest, "--fail-under", "clip_t=-1")
    assert ok.code == 0, ok.stderr
    assert "| clip_t ≥ -1 | (all) | clip_t |" in ok.stdout and "| True |" in ok.stdout
    out = tmp_path / "r.parquet"
    bad = run_eval(run_cli, tiny, manifest, "--fail-under", "clip_t=0.99", "-o", out)
    assert bad.code == 1
    assert "| False |" in bad.stdout
    assert bad.stderr.splitlines()[-1].startswith(
        f"Error: {manifest}: gate failed, 1 of 1 check(s): clip_t ≥ 0.99 ((all): mean "
    )
    assert out.exists()  # the report is written before the gate says no
    mean = pd.read_parquet(out)["clip_t"].mean()
    assert run_eval(run_cli, tiny, manifest, "--fail-under", f"clip_t={mean - 1e-6}").code == 0
    assert run_eval(run_cli, tiny, manifest, "--fail-under", f"clip_t={mean + 1e-6}").code == 1
    # against the old report: the same images give a zero drop; a huge negative allowance passes anyway
    assert run_eval(run_cli, tiny, manifest, "--max-drop", "clip_t=0", "--against", out).code == 0
    # against the baseline variant of the same run: hn - base must not drop more than -1 (always true) ...
    assert run_eval(run_cli, tiny, manifest, "--max-drop", "clip_t=1").code == 0
    # ... and must not drop at all *and* rise by 1 (impossible): exit 1
    assert run_eval(run_cli, tiny, manifest, "--max-drop", "clip_t=-1").code == 1
    assert run_eval(run_cli, tiny, manifest, "--fail-under", "clip_t").code == 2
    unknown = run_eval(run_cli, tiny, manifest, "--fail-under", "nope=1")
    assert unknown.code == 2 and "no metric 'nope' to gate on" in unknown.stderr
    ci = run_eval(run_cli, tiny, manifest, "--fail-under", f"clip_t={mean + 1e-6}", "--gate-on", "ci_high")
    assert ci.code == 0  # the mean is below, but not significantly


def test_missing_weights_exit_4_without_any_request(tmp_path, tiny, dataset):
    """In a fresh process with the Hub pointed at a local server that records every request."""
    root, rows = dataset
    manifest = write_csv(root / "m6.csv", rows[:1])
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path / "home"),
    }
    env.pop("HF_HUB_OFFLINE", None)
    hyperkit = [sys.executable, "-c", "from hyperkit.cli import main; main()", "eval", str(manifest)]
    try:
        cases = [
            (
                ["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
                "Error: ViT-B-32: weights for tag 'laion2b_s34b_b79k' are not in the local cache "
                "(hyperkit never downloads)",
            ),
            (["--model", "hf-hub:org/clip"], "Error: hf-hub:org/clip: not in the local Hugging Face cache"),
        ]
        for args, message in cases:
            p = subprocess.run([*hyperkit, *args], env=env, capture_output=True, text=True, timeout=120)
            assert p.returncode == 4, p.stderr
            assert p.stderr.splitlines()[0].startswith(message)
            assert p.stderr.splitlines()[1].startswith("Hint: ")
    finally:
        server.shutdown()
    assert [r for r in requests if "/resolve/" in r or "/api/models" in r] == []


def test_missing_weights_messages(run_cli, tmp_path, dataset):
    root, rows = dataset
    manifest = write_csv(root / "m9.csv", rows[:1])
    none = run_cli("eval", manifest, "--model", "ViT-B-32")
    assert none.code == 4
    assert none.stderr.splitlines() == [
        "Error: ViT-B-32: no weights given (hyperkit never downloads)",
        "Hint: pass --pretrained FILE (.safetensors/.pt/.bin) or a tag already in the local cache ("
        + none.stderr.split("local cache (", 1)[1].splitlines()[0],
    ]
    missing = tmp_path / "nope.safetensors"
    result = run_cli("eval", manifest, "--model", "ViT-B-32", "--pretrained", missing)
    assert result.code == 4
    assert result.stderr.startswith(f"Error: {missing}: no such weights file, and not a pretrained tag of ViT-B-32\n")
    typo = run_cli("eval", manifest, "--model", "ViT-B-33", "--pretrained", missing)
    assert typo.code == 3 and typo.stderr.startswith("Error: ViT-B-33: unknown model name\nHint: did you mean ViT-B-32")


def test_cache_encodes_only_new_images(tiny, dataset, tmp_path):
    from hyperkit.eval import evaluate

    root, rows = dataset
    first = evaluate(write_csv(root / "c1.csv", rows[:6]), str(tiny[0]), str(tiny[1]), cache_dir=tmp_path / "c")
    assert first.stats["cache_hits"] == 0
    second = evaluate(write_csv(root / "c2.csv", rows), str(tiny[0]), str(tiny[1]), cache_dir=tmp_path / "c")
    # 6 images and the 2 references were cached by the first run: only the 6 new images are encoded
    assert second.stats["images"] == 14 and second.stats["cache_hits"] == 8
    np.testing.assert_allclose(second.frame["clip_t"][:6], first.frame["clip_t"], atol=1e-6)


def test_shards_merge_into_the_full_report(run_cli, tiny, dataset, tmp_path):
    root, rows = dataset
    manifest = write_csv(root / "m7.csv", rows)
    full = tmp_path / "full.parquet"
    assert run_eval(run_cli, tiny, manifest, "-o", full).code == 0
    parts = []
    for i in (1, 2, 3):
        part = tmp_path / f"part{i}.parquet"
        assert run_eval(run_cli, tiny, manifest, "--shard", f"{i}/3", "-o", part).code == 0
        parts.append(part)
    merged = tmp_path / "merged.parquet"
    result = run_cli("eval-merge", *parts, "-o", merged)
    assert result.code == 0, result.stderr
    a, b = pd.read_parquet(full), pd.read_parquet(merged)
    cols = ["image", "clip_t", "clip_i", "content_keep", "directional"]
    pd.testing.assert_frame_equal(a[cols], b[cols], atol=1e-6)
    dup = run_cli("eval-merge", parts[0], parts[0], "-o", tmp_path / "x.parquet")
    assert dup.code == 3 and "a shard is given twice" in dup.stderr
    assert run_cli("eval-merge", full, "-o", tmp_path / "y.parquet").code == 3  # no embeddings: not a shard
    assert run_eval(run_cli, tiny, manifest, "--shard", "1/3", "-o", tmp_path / "p.csv").code == 2
    assert run_eval(run_cli, tiny, manifest, "--shard", "4/3", "-o", tmp_path / "p.parquet").code == 2


def test_folder_prompts_from_a1111_comfyui_and_sidecar(run_cli, tiny, tmp_path):
    from PIL import PngImagePlugin

    folder = tmp_path / "outputs"
    a1111 = make_image(folder / "hn" / "a.png", seed=1)
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "a castle on a hill\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1234, Size: 96x80",
    )
    from PIL import Image

    Image.open(a1111).save(a1111, pnginfo=info)
    comfy = make_image(folder / "hn" / "b.png", seed=2)
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 77, "positive": ["6", 0], "negative": ["7", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat at sea", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
    }
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    Image.open(comfy).save(comfy, pnginfo=info)
    make_image(folder / "c.png", seed=3)
    (folder / "c.txt").write_text("a tree\n")
    make_image(folder / "d.png", seed=4)
    out = tmp_path / "r.csv"
    result = run_eval(run_cli, tiny, folder, "-o", out)
    assert result.code == 0, result.stderr
    df = pd.read_csv(out, keep_default_na=False)
    got = {r.image: (r.prompt, r.variant, str(r.seed), r.error) for r in df.itertuples()}
    assert got == {
        "c.png": ("a tree", "default", "", ""),
        "d.png": ("", "default", "", "no prompt found (no A1111 'parameters', no ComfyUI 'prompt', no sidecar .txt)"),
        "hn/a.png": ("a castle on a hill", "hn", "1234", ""),
        "hn/b.png": ("a boat at sea", "hn", "77", ""),
    }


def test_long_prompts_are_counted_not_silently_cut(run_cli, tiny, tmp_path):
    model, preprocess, tokenizer = reference_model(*tiny)
    long_prompt = " ".join(["a very detailed painting of a mountain village"] * 20)
    img = make_image(tmp_path / "x.png", seed=5)
    manifest = write_csv(
        tmp_path / "m.csv", [{"image": "x.png", "prompt": long_prompt}, {"image": "x.png", "prompt": "short"}]
    )
    out = tmp_path / "r.parquet"
    result = run_eval(run_cli, tiny, manifest, "-o", out)
    assert result.code == 0
    assert "1 prompt(s) are longer than the model's 77-token context" in result.stderr
    df = pd.read_parquet(out)
    assert df["truncated"].tolist() == [True, False] and df["n_tokens"].iloc[0] > 77
    # open_clip keeps the end token at position 76: the score is that of its truncated tokens
    expected = cos(
        reference_image_embedding(model, preprocess, img), reference_text_embedding(model, tokenizer, long_prompt)
    )
    assert df["clip_t"].iloc[0] == pytest.approx(expected, abs=2e-5)


def test_batched_preprocessing_and_short_text_context_equal_open_clip(tiny, tmp_path):
    import torch
    from PIL import Image

    from hyperkit.eval.encode import ImagePipeline, _encode_tokens

    model, preprocess, tokenizer = reference_model(*tiny)
    pipe = ImagePipeline(preprocess)
    paths = [make_image(tmp_path / "a.png", 1, (300, 200)), make_image(tmp_path / "b.png", 2, (50, 90))]
    Image.open(paths[1]).convert("RGBA").save(paths[1])
    prepared = [pipe.prepare(p, None) for p in paths]
    batch = pipe.batch(prepared)
    expected = torch.stack([preprocess(Image.open(p)) for p in paths])
    assert torch.equal(batch, expected)  # bit-identical to the model's own transform
    tokens = tokenizer(["a cat", "a much longer prompt about a dog on a skateboard in a park"])
    with torch.no_grad():
        torch.testing.assert_close(_encode_tokens(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)


class _Structure(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.imgs, self.svgs, self.external, self.scripts, self.tables = [], [], 0, [], 0, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "svg":
            self.svgs += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables += 1
        for k in ("src", "href"):
            if a.get(k, "").startswith(("http:", "https:", "//")):
                self.external.append(a[k])


def test_html_report_is_one_self_contained_page(run_cli, tiny, dataset, tmp_path):
    root, rows = dataset
    manifest = write_csv(
        root / "m8.csv", [*rows, {"image": "img/missing.png", "prompt": "x", "variant": "hn", "seed": 9}]
    )
    out = tmp_path / "report.html"
    assert run_eval(run_cli, tiny, manifest, "-o", out).code == 0
    page = _Structure()
    page.feed(out.read_text(encoding="utf-8"))
    assert page.sections == ["summary", "comparisons", "plots", "grid", "problems"]
    assert len(page.imgs) == 12 and all(s.startswith("data:image/jpeg;base64,") for s in page.imgs)
    assert page.svgs == 4  # clip_t, clip_i, content_keep, directional
    assert page.external == [] and page.scripts == 0
    assert page.tables == 4  # summary, comparisons, grid, problems
