"""Embeddings, fast: images decoded in threads beside the encoder, texts once per prompt.

Reading, hashing, PNG decoding and PIL's resize release the GIL, so a small thread pool
prepares images while the main thread runs the model. How the two share the machine depends on
where the model runs. On a GPU the pool decodes ahead while the device computes. On the CPU,
torch already runs the encoder on every core, and decoding *at the same time* only oversubscribes
them: each parallel region of the encoder then waits for whichever of its threads was preempted.
(ViT-B-32 on 2 shared cores, medians of 6 interleaved rounds: 0.87× the bare encoder with
overlapping decode threads, 0.93× in lock-step.) So on the CPU the pool decodes the next batch
with all its threads *between* encoder calls, and the encoder then has the cores to itself.

Only open_clip's *PIL* steps run per image (resize, centre crop, RGB); its ``ToTensor`` and
``Normalize`` run once per batch on the stacked uint8 array — the same float operations in the
same order, so the tensors are identical to the model's own transform. The embedding width comes
from the first vector produced (no extra model call). Texts are deduplicated and encoded over
only as many positions as the longest prompt needs: the text tower is causal and pools at the end
token, so the padding after it cannot change the result.

Example:
    >>> decode_error(b"")
    'empty file (0 bytes)'
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hyperkit.eval.cache import EmbeddingCache
from hyperkit.eval.model import Clip

Progress = Callable[[int, float], None]  # (images just finished, images/s so far)


def decode_error(data: bytes) -> str | None:
    """Why these bytes are not a decodable image, or None (the decoder says the rest)."""
    return "empty file (0 bytes)" if not data else None


class Prepared:
    """One image ready for the encoder: a uint8 HWC array (fast path) or a tensor (fallback)."""

    __slots__ = ("array", "digest", "embedding", "error")

    def __init__(self) -> None:
        self.array: Any = None
        self.digest = ""
        self.embedding: NDArray[np.float32] | None = None
        self.error = ""


class ImagePipeline:
    """open_clip's validation transform split into the per-image PIL part and a batched tail."""

    def __init__(self, preprocess: Any) -> None:
        ts = list(getattr(preprocess, "transforms", []))
        names = [type(t).__name__ for t in ts]
        self.full = preprocess
        self.pil: list[Any] | None = None
        if len(ts) >= 2 and names[-2] in ("MaybeToTensor", "ToTensor") and names[-1] == "Normalize":
            self.pil = ts[:-2]
            self.mean = np.asarray(ts[-1].mean, dtype=np.float32)
            self.std = np.asarray(ts[-1].std, dtype=np.float32)

    def prepare(self, path: Path, cache: EmbeddingCache | None) -> Prepared:
        """Read, hash, look up the cache, else decode and run the PIL steps (in a worker thread)."""
        from PIL import Image

        out = Prepared()
        try:
            data = path.read_bytes()
        except OSError as e:
            out.error = f"cannot read image: {e.strerror or e}"
            return out
        if err := decode_error(data):
            out.error = err
            return out
        out.digest = hashlib.sha256(data).hexdigest()
        if cache is not None and (hit := cache.get(out.digest)) is not None:
            out.embedding = hit
            return out
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if self.pil is None:
                    out.array = self.full(im)
                    return out
                x = im
                for t in self.pil:
                    x = t(x)
                out.array = np.asarray(x, dtype=np.uint8)
        except Exception as e:  # PIL raises many types for corrupt data; all mean "not decodable"
            out.error = f"cannot decode image: {_reason(e)}"
        return out

    def batch(self, items: list[Prepared]) -> Any:
        """Stack prepared images into the model's input tensor (ToTensor + Normalize, batched)."""
        import torch

        if self.pil is None or any(not isinstance(p.array, np.ndarray) for p in items):
            return torch.stack([p.array if not isinstance(p.array, np.ndarray) else self._one(p.array) for p in items])
        u8 = torch.from_numpy(np.stack([p.array for p in items])).permute(0, 3, 1, 2)
        # one pass from the NHWC uint8 view into a contiguous NCHW float tensor (same values as
        # ToTensor's contiguous() + to(float), without the intermediate uint8 copy)
        x = torch.empty(u8.shape, dtype=torch.get_default_dtype()).copy_(u8).div_(255)
        return x.sub_(torch.from_numpy(self.mean)[:, None, None]).div_(torch.from_numpy(self.std)[:, None, None])

    def _one(self, array: NDArray[np.uint8]) -> Any:
        import torch

        x = torch.from_numpy(array).permute(2, 0, 1).contiguous().to(dtype=torch.get_default_dtype()).div(255)
        return x.sub_(torch.from_numpy(self.mean)[:, None, None]).div_(torch.from_numpy(self.std)[:, None, None])


def _reason(e: BaseException) -> str:
    """A stable one-line reason (PIL's own message names an in-memory object address)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image (unknown or unsupported format)"
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def input_dtype(clip: Clip) -> Any:
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(clip.precision, torch.float32)


def encode_images(
    clip: Clip,
    paths: list[Path],
    *,
    batch_size: int = 32,
    workers: int = 2,
    cache: EmbeddingCache | None = None,
    progress: Progress | None = None,
) -> tuple[NDArray[np.float32], list[str], list[str]]:
    """``(embeddings [N, D] with NaN rows for failures, error per path, sha256 per path)``."""
    import torch

    pipe = ImagePipeline(clip.preprocess)
    n = len(paths)
    emb: NDArray[np.float32] | None = None  # allocated once the first vector gives the width
    errors = [""] * n
    digests = [""] * n
    pending: list[tuple[int, Prepared]] = []
    start = time.perf_counter()
    done = 0
    dtype = input_dtype(clip)

    def store(i: int, v: NDArray[np.float32]) -> None:
        nonlocal emb
        if emb is None:
            emb = np.full((n, v.shape[-1]), np.nan, dtype=np.float32)
        emb[i] = v

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        x = pipe.batch([p for _, p in pending]).to(clip.device, dtype=dtype)
        with torch.inference_mode():
            out = clip.model.encode_image(x).float().cpu().numpy()
        for (i, p), v in zip(pending, out, strict=True):
            store(i, v)
            if cache is not None:
                cache.put(p.digest, v)
        done += len(pending)
        if progress:
            progress(len(pending), done / max(time.perf_counter() - start, 1e-9))
        pending.clear()

    # CPU: lock-step, one batch at a time between encoder calls; GPU: up to two batches ahead
    ahead = batch_size if clip.device == "cpu" or clip.device.startswith("cpu:") else max(2 * batch_size, 8)
    lockstep = ahead == batch_size
    for i, prep in _prefetch(pipe, paths, cache, workers, window=ahead, lockstep=lockstep):
        digests[i] = prep.digest
        if prep.error:
            errors[i] = prep.error
        elif prep.embedding is not None:
            store(i, prep.embedding)
        else:
            pending.append((i, prep))
            if len(pending) >= batch_size:
                flush()
                continue
            continue
        done += 1
        if progress:
            progress(1, done / max(time.perf_counter() - start, 1e-9))
    flush()
    if emb is None:  # nothing encoded (every image failed): ask the model for the width
        emb = np.full((n, _probe_dim(clip)), np.nan, dtype=np.float32)
    return emb, errors, digests


def _prefetch(
    pipe: ImagePipeline,
    paths: list[Path],
    cache: EmbeddingCache | None,
    workers: int,
    window: int,
    lockstep: bool = False,
) -> Iterator[tuple[int, Prepared]]:
    """Prepared images in order, at most ``window`` in flight (bounded memory for big runs).

    ``lockstep``: submit ``window`` images only once the previous ones have all been taken, so
    nothing decodes while the caller works on what it was given (the CPU encoder).
    """
    if workers <= 0:
        for i, p in enumerate(paths):
            yield i, pipe.prepare(p, cache)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hyperkit-decode") as pool:
        futures: dict[int, Future[Prepared]] = {}
        nxt = 0
        for i in range(len(paths)):
            if not lockstep or not futures:
                while nxt < len(paths) and nxt < i + window:
                    futures[nxt] = pool.submit(pipe.prepare, paths[nxt], cache)
                    nxt += 1
            yield i, futures.pop(i).result()


def _probe_dim(clip: Clip) -> int:
    import torch

    with torch.inference_mode():
        return int(_encode_tokens(clip.model, clip.tokenizer(["a"]).to(clip.device)).shape[-1])


def encode_texts(clip: Clip, texts: list[str], *, batch_size: int = 256) -> NDArray[np.float32]:
    """Embeddings of the given (already unique) texts, ``[len(texts), D]``."""
    import torch

    chunks = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            tokens = clip.tokenizer(texts[s : s + batch_size]).to(clip.device)
            chunks.append(_encode_tokens(clip.model, tokens).float().cpu().numpy())
    dim = chunks[0].shape[1] if chunks else 0
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


def _encode_tokens(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` over the first L positions only (L = last end token + 1) for the
    plain causal CLIP text tower; every other tower runs the full context."""
    import torch

    mask = getattr(model, "attn_mask", None)
    if (
        getattr(model, "text_pool_type", None) != "argmax"
        or mask is None
        or not hasattr(model, "token_embedding")
        or not hasattr(model, "positional_embedding")
    ):
        return model.encode_text(tokens)
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    t = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=mask[:length, :length]))
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
