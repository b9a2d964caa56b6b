"""Embedding cache: one ``.npy`` per image, keyed by the image's content hash and the model.

Re-running a report after adding ten images encodes ten images. The key includes everything that
changes an embedding (model name, weights hash, precision, device type, preprocessing), so a
cached vector is never reused for another model. Each entry is written to a temporary name and
renamed, so concurrent runs (shards on one machine) and kills never leave a torn entry.

Example:
    >>> import tempfile, numpy as np
    >>> c = EmbeddingCache(tempfile.mkdtemp(), {"model": "tiny"})
    >>> c.put("ab" * 32, np.ones(4, "f4")); c.get("ab" * 32).tolist()
    [1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def default_cache_dir() -> Path:
    """``$HYPERKIT_CACHE``, else ``$XDG_CACHE_HOME/hyperkit``, else ``~/.cache/hyperkit``; plus ``eval``."""
    if env := os.environ.get("HYPERKIT_CACHE"):
        return Path(env) / "eval"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hyperkit" / "eval"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, memoised per (path, size, mtime) so a 600 MB weights file is hashed
    once, not on every run.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w"; _ = p.write_bytes(b"abc")
        >>> file_sha256(p)[:12]
        'ba7816bf8f01'
    """
    st = path.stat()
    memo_key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = default_cache_dir() / "weights-sha256.json"
    known: dict[str, str] = {}
    with suppress(OSError, ValueError):
        known = json.loads(memo.read_text())
    if memo_key in known:
        return known[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    if st.st_size > 1 << 24:  # only big files are worth remembering
        with suppress(OSError):
            known[memo_key] = digest
            _atomic_write_bytes(memo, json.dumps(known).encode())
    return digest


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.hyperkit-tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


class EmbeddingCache:
    """Image embeddings on disk under ``root/<model key>/<hash[:2]>/<hash>.npy``."""

    def __init__(self, root: str | os.PathLike[str], model_identity: dict[str, Any]) -> None:
        key = hashlib.sha256(json.dumps(model_identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.folder = Path(root) / key
        self.hits = 0
        self.misses = 0

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> NDArray[np.float32] | None:
        """The cached embedding, or None (also for an unreadable entry, which is then re-encoded)."""
        try:
            v = np.load(self._path(digest), allow_pickle=False)
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return v

    def put(self, digest: str, embedding: NDArray[np.float32]) -> None:
        """Store one embedding; a cache that cannot be written only costs speed, never the run."""
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(embedding, dtype=np.float32), allow_pickle=False)
        with suppress(OSError):
            _atomic_write_bytes(self._path(digest), buf.getvalue())
