"""The eval step of ``hyperkit demo``: the bundled images scored with the bundled tiny CLIP.

The tiny model has random weights, so its numbers mean nothing about the images; the step shows
the pipeline end to end offline (manifest, model from a JSON config and a local weights file,
every metric, bootstrap CIs, the paired comparison and a gate) and prints what it found.

Example:
    >>> DEMO_MODEL
    'tiny-clip.json'
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

DEMO_MODEL = "tiny-clip.json"
DEMO_WEIGHTS = "tiny-clip.safetensors"


def demo_lines() -> Iterator[str]:
    """Evaluate ``fixtures/eval/manifest.csv``; one line per finding (skipped without the extra)."""
    missing = [m for m in ("open_clip", "pandas", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        yield f"  eval: skipped ({', '.join(missing)} not installed: pip install 'hyperkit[eval]')"
        return
    from hyperkit.demo import fixture_path
    from hyperkit.eval import evaluate
    from hyperkit.eval.cache import default_cache_dir

    # importing open_clip imports torch._dynamo, which creates its cache folder in the temporary
    # directory; the demo leaves nothing behind there, so that folder goes to hyperkit's cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir().parent / "torchinductor"))
    from hyperkit.eval.gate import check

    manifest = fixture_path("eval/manifest.csv")
    result = evaluate(
        manifest,
        str(fixture_path(f"eval/{DEMO_MODEL}")),
        str(fixture_path(f"eval/{DEMO_WEIGHTS}")),
        use_cache=False,
        workers=0,
        n_resamples=500,
    )
    frame = result.frame
    yield (
        f"  eval: {len(frame)} bundled images, {frame['prompt_id'].nunique()} prompts, variants "
        f"{', '.join(dict.fromkeys(frame['variant']))}; tiny random-weight CLIP from {DEMO_MODEL} + {DEMO_WEIGHTS}"
    )
    s = result.summary.set_index(["variant", "metric"])
    for (variant, metric), r in s.iterrows():
        if metric in ("clip_t", "content_keep", "diversity", "cmmd"):
            ci = "" if r["ci_low"] != r["ci_low"] else f" [95% CI {r['ci_low']:.4f}, {r['ci_high']:.4f}]"
            yield f"    {variant:>5} {metric:<13} {r['mean']:.4f}{ci}"
    for c in result.comparisons.itertuples():
        yield (
            f"    {c.variant} vs {c.baseline} {c.metric}: Δ {c.delta_mean:+.4f} "
            f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}], win rate {c.win_rate:.2f} over {c.n_pairs} pairs"
        )
    gate = check(result, fail_under={"clip_t": -1.0}, max_drop={}, n_resamples=500)
    yield f"    gate --fail-under clip_t=-1: {'pass (exit 0)' if gate['passed'].all() else 'FAIL (exit 1)'}"
