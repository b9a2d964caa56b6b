"""The CLIP model: open_clip by name, weights only from a local file or the local cache.

open_clip downloads a tag's weights on first use, and with ``HF_HUB_OFFLINE`` unset it asks the
Hub even for cached files; a CI gate must instead fail fast and say what to pass. So hyperkit
resolves every weight source to a local path *before* calling open_clip: a file, a tag found in
the Hugging Face or ``~/.cache/clip`` cache, or a ``local-dir:``/``hf-hub:`` folder. Anything
else is :class:`EnvironmentProblem` (exit 4) with the exact hint. ``--model`` may also be a JSON
model config (open_clip's format), registered under its file stem: that is how the tests and the
demo load a tiny random-weight CLIP through the real ``--pretrained`` path.

Example:
    >>> resolve_weights("ViT-B-32", None)
    Traceback (most recent call last):
    ...
    hyperkit.errors.EnvironmentProblem: ViT-B-32: no weights given (hyperkit never downloads)
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperkit.errors import BadInputError, EnvironmentProblem, UsageProblem, require

# Set before huggingface_hub is first imported (open_clip imports it): a cached file is then used
# without asking the Hub, and an uncached one fails at once instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "model.pth")


@dataclass
class Weights:
    """Where a model's config and weights come from, resolved to local files."""

    name: str  # what open_clip's create_model gets (a built-in/registered name or local-dir:)
    pretrained: str | None  # a local weights file, or None for local-dir: (weights inside)
    source: str  # what the user passed, for the report
    preprocess: dict[str, Any] = field(default_factory=dict)  # a tag's mean/std/interpolation
    warnings: list[str] = field(default_factory=list)


@dataclass
class Clip:
    """A loaded model with its tokenizer and preprocessing, ready for :mod:`hyperkit.eval.encode`."""

    model: Any
    tokenizer: Any
    preprocess: Any  # open_clip's validation transform (a torchvision Compose)
    device: str
    precision: str
    context_length: int
    provenance: dict[str, str]
    warnings: list[str]


def _open_clip() -> Any:
    require("open_clip", "eval")
    import open_clip

    return open_clip


def register_config(path: Path) -> str:
    """Register an open_clip model config JSON under its file stem; return the name."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInputError(f"{path}: not a readable model config: {e}") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise BadInputError(f"{path}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    _open_clip().add_model_config(str(path))
    return path.stem


def resolve_weights(model: str, pretrained: str | None, cache_dir: str | None = None) -> Weights:
    """Turn ``--model``/``--pretrained`` into local files, or raise with what to pass instead."""
    if model.startswith("local-dir:"):
        return _local_dir(model, Path(model.removeprefix("local-dir:")), pretrained)
    if model.startswith("hf-hub:"):
        return _hf_hub(model, cache_dir)
    oc = _open_clip()
    name = model
    if model.endswith(".json") and Path(model).is_file():
        name = register_config(Path(model))
    name = name.replace("/", "-")
    cfg = oc.get_model_config(name)
    if cfg is None:
        import difflib

        close = difflib.get_close_matches(name, oc.list_models(), n=3)
        raise BadInputError(
            f"{model}: unknown model name",
            hint=f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()",
        )
    if not pretrained:
        tags = oc.list_pretrained_tags_by_model(name)
        raise EnvironmentProblem(
            f"{model}: no weights given (hyperkit never downloads)",
            hint="pass --pretrained FILE (.safetensors/.pt/.bin)"
            + (f" or a tag already in the local cache ({', '.join(tags)})" if tags else ""),
        )
    if Path(pretrained).is_file():
        return Weights(name, pretrained, pretrained)
    tag_cfg = oc.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = oc.list_pretrained_tags_by_model(name)
        raise EnvironmentProblem(
            f"{pretrained}: no such weights file, and not a pretrained tag of {name}",
            hint="pass --pretrained with an existing weights file"
            + (f", or one of the tags {', '.join(tags)} once cached" if tags else ""),
        )
    path = _cached_tag_file(tag_cfg, cache_dir)
    if path is None:
        where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "?"
        raise EnvironmentProblem(
            f"{name}: weights for tag '{pretrained}' are not in the local cache (hyperkit never downloads)",
            hint=f"download {where} once (e.g. with huggingface-cli) and pass --pretrained PATH to the file",
        )
    w = Weights(name, str(path), f"{pretrained} ({path})")
    w.preprocess = {
        k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if tag_cfg.get(k) is not None
    }
    if bool(tag_cfg.get("quick_gelu", False)) != bool(cfg.get("quick_gelu", False)):
        # open_clip only warns and then runs the other activation: embeddings silently differ
        fix = f"use {name}-quickgelu" if not name.endswith("-quickgelu") else "use the name without -quickgelu"
        w.warnings.append(
            f"QuickGELU mismatch between model config (quick_gelu={bool(cfg.get('quick_gelu', False))}) and "
            f"pretrained tag '{pretrained}' (quick_gelu={bool(tag_cfg.get('quick_gelu', False))}): "
            f"the embeddings are not the tag's; {fix}"
        )
    return w


def _cached_tag_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> Path | None:
    if tag_cfg.get("file") and Path(tag_cfg["file"]).is_file():
        return Path(tag_cfg["file"])
    if hub := tag_cfg.get("hf_hub"):
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_pytorch_model.bin"]
        if names[0] == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        elif names[0].endswith((".bin", ".pth")):
            names.insert(0, names[0][:-4] + ".safetensors")
        for n in names:
            if (found := _hub_cache(repo, n, cache_dir)) is not None:
                return found
    if url := tag_cfg.get("url"):
        p = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if p.is_file():
            return p
    return None


def _hub_cache(repo: str, filename: str, cache_dir: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _local_dir(model: str, folder: Path, pretrained: str | None) -> Weights:
    if not (folder / "open_clip_config.json").is_file():
        raise BadInputError(f"{folder}: no open_clip_config.json (needed for {model})")
    if not any((folder / n).is_file() for n in WEIGHT_NAMES):
        raise EnvironmentProblem(
            f"{folder}: no weights file ({', '.join(WEIGHT_NAMES)})",
            hint="put the weights beside open_clip_config.json",
        )
    w = Weights(f"local-dir:{folder}", None, model)
    if pretrained:
        w.warnings.append(f"--pretrained {pretrained} is ignored: {model} holds its own weights")
    return w


def _hf_hub(model: str, cache_dir: str | None) -> Weights:
    repo = model.removeprefix("hf-hub:")
    config = _hub_cache(repo, "open_clip_config.json", cache_dir)
    if config is None or not any((config.parent / n).is_file() for n in WEIGHT_NAMES):
        raise EnvironmentProblem(
            f"{model}: not in the local Hugging Face cache (hyperkit never downloads)",
            hint=f"run `huggingface-cli download {repo}` once, or pass local-dir:/path/to/folder",
        )
    return Weights(f"local-dir:{config.parent}", None, model)


def load_clip(
    model: str,
    pretrained: str | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> Clip:
    """Resolve the weights, build the model in eval mode, its tokenizer and preprocessing."""
    weights = resolve_weights(model, pretrained, cache_dir)
    import torch

    device = _check_device(device, precision, torch)
    oc = _open_clip()
    kwargs: dict[str, Any] = {}
    pre = weights.preprocess
    for src, dst in (("mean", "image_mean"), ("std", "image_std")):
        if src in pre:
            kwargs[dst] = tuple(pre[src])
    if "interpolation" in pre:
        kwargs["image_interpolation"] = pre["interpolation"]
    if "resize_mode" in pre:
        kwargs["image_resize_mode"] = pre["resize_mode"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            clip, _, preprocess = oc.create_model_and_transforms(
                weights.name, pretrained=weights.pretrained, precision=precision, device=device, **kwargs
            )
        except (RuntimeError, ValueError, KeyError, OSError, EOFError) as e:
            what = weights.pretrained or weights.name
            raise BadInputError(f"{what}: cannot load it as weights of {weights.name}: {_short(e)}") from None
        tokenizer = oc.get_tokenizer(weights.name)
    clip.eval()
    from hyperkit._version import __version__

    provenance = {
        "model": model,
        "pretrained": weights.source,
        "pretrained_sha256": _weights_hash(weights),
        "hyperkit_version": __version__,
        "torch_version": torch.__version__,
        "open_clip_version": getattr(oc, "__version__", "?"),
        "device": device,
        "precision": precision,
    }
    notes = [*weights.warnings, *(str(w.message) for w in caught if "QuickGELU" in str(w.message))]
    ctx = int(getattr(tokenizer, "context_length", 0) or getattr(clip, "context_length", 77))
    return Clip(clip, tokenizer, preprocess, device, precision, ctx, provenance, notes)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def _check_device(device: str, precision: str, torch: Any) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentProblem(f"--device {device}: CUDA is not available here", hint="use --device cpu")
    if not device.startswith(("cpu", "cuda", "mps")):
        raise UsageProblem(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    if precision == "fp16" and device == "cpu":
        raise UsageProblem("--precision fp16 needs a GPU (--device cuda); use fp32 or bf16 on the CPU")
    return device


def _weights_hash(weights: Weights) -> str:
    from hyperkit.eval.cache import file_sha256

    if weights.pretrained:
        return file_sha256(Path(weights.pretrained))
    folder = Path(weights.name.removeprefix("local-dir:"))
    for n in WEIGHT_NAMES:
        if (folder / n).is_file():
            return file_sha256(folder / n)
    return ""


def count_tokens(tokenizer: Any, texts: list[str], context_length: int) -> list[int | None]:
    """Tokens each text needs with the start and end tokens; None when the tokenizer cannot tell.
    More than ``context_length`` means open_clip scored a cut prompt (it keeps the end token).

    Example:
        >>> class Words:
        ...     def encode(self, t): return t.split()
        >>> count_tokens(Words(), ["a b c"], 77)
        [5]
    """
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        return [None] * len(texts)
    return [len(encode(t)) + 2 for t in texts]
