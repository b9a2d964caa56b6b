"""Folding into checkpoint bases: worker threads fold the layers while the files stream.

A base is one or more safetensors files (:meth:`hyperkit.bake.sd_base.Base.files`: a sharded
diffusers folder has several) or a checkpoint's unpickled arrays. Every layer is queued at once,
in file order, on two worker threads; each output file is written by
:func:`hyperkit.bake.stream.write_streaming`, which copies the untouched bytes while the folds
compute and writes each folded tensor when it is ready. A few folded tensors are read back from
what was written.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with atomic_folder(d, force=False, src=d.parent / "base") as tmp:
    ...     _ = (tmp / "config.json").write_text("{}")
    >>> sorted(p.name for p in d.iterdir())
    ['config.json']
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from hyperkit.bake.fold import PARTS, FoldedLayer, Folds, LayerParity, blas_threads, fold_layer, guess_heads
from hyperkit.bake.hnmath import Link
from hyperkit.bake.sd_base import Attention, Base, TensorInfo
from hyperkit.errors import OutputPathError, VerificationError

#: The tensors of a layer the fold changes.
CHANGED = ("to_k.weight", "to_v.weight", "to_out.0.bias")
#: Fold worker threads (each runs numpy's BLAS on one thread, see :class:`Folder`).
WORKERS = 2


@contextmanager
def atomic_folder(dst: Path, *, force: bool, src: Path) -> Iterator[Path]:
    """Like :func:`hyperkit.paths.atomic_output` for a folder: built beside, renamed into place."""
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise OutputPathError(f"{dst}: output is the base folder (or inside it); refusing to write there")
    if not dst.parent.is_dir():
        raise OutputPathError(f"{dst}: output folder '{dst.parent}' does not exist")
    if dst.exists() and not force:
        raise OutputPathError(f"{dst}: already exists", hint="pass --force to overwrite it")
    if dst.exists() and not dst.is_dir():
        raise OutputPathError(f"{dst}: is a file, expected a folder for a diffusers UNet")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.hyperkit-tmp")
    old = dst.with_name(f".{dst.name}.{os.getpid()}.hyperkit-old")
    try:
        tmp.mkdir()
        yield tmp
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
    except OSError as e:
        raise OutputPathError(f"{dst}: cannot write: {e.strerror or e}", hint="check permissions and free space") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


class Folder:
    """Folded tensors computed on worker threads, every layer queued at once in file order.

    Run it under ``blas_threads(1)``: two workers with one BLAS thread each keep both cores
    busy through the parts numpy runs on one thread (dtype conversions, the parity pass), where
    one worker with a two-thread BLAS left a core idle; the kernel copies meanwhile.
    """

    def __init__(self, base: Base, targets: list[Attention], links: list[Link], dtype: type) -> None:
        self.base, self.links, self.folds = base, links, Folds(links, dtype)
        if base.arrays:
            self.order = list(targets)
        else:
            self.order = sorted(targets, key=lambda a: min(base.locate(a.key(p)) for p in CHANGED))
            prefetch(base, [a.key(p) for a in self.order for p in PARTS])
        self.owner = {att.key(p): i for i, att in enumerate(self.order) for p in CHANGED}
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="hyperkit-fold")
        self.futures: dict[int, Future[FoldedLayer]] = {}
        for i, att in enumerate(self.order):
            heads = guess_heads(att.channels, base.architecture)
            self.futures[i] = self.pool.submit(self._fold, att, heads)

    def _fold(self, att: Attention, heads: int) -> FoldedLayer:
        return fold_layer(att, self.base.array, self.links, self.folds, heads=heads)

    @property
    def names(self) -> list[str]:
        """Every tensor the fold replaces."""
        return list(self.owner)

    def ready(self, name: str) -> bool:
        """Whether the layer of ``name`` is folded."""
        return self.futures[self.owner[name]].done()

    def value(self, name: str) -> np.ndarray:
        """The folded tensor ``name``, waiting for it; handed out once (then dropped here)."""
        return self.futures[self.owner[name]].result().tensors.pop(name)

    def finish(self) -> list[LayerParity]:
        """Every layer's parity row, in file order."""
        parity = [self.futures[i].result().parity for i in range(len(self.order))]
        self.pool.shutdown()
        return parity


def prefetch(base: Base, names: list[str]) -> None:
    """Ask the kernel to read these tensors ahead, in the background.

    From a cold page cache, the fold workers would otherwise fault them in through the memory
    map a few pages at a time, waiting on the disk between matmuls while the copy reads the rest
    of the file; read ahead, they arrive at the disk's streaming speed. Advice only.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    files = base.files()
    spans: dict[int, list[TensorInfo]] = {}
    for name in names:
        index, _ = base.locate(name)
        spans.setdefault(index, []).append(files[index].infos[name])
    for index, infos in spans.items():
        fd = os.open(files[index].weights, os.O_RDONLY)
        try:
            for span in infos:
                with suppress(OSError):
                    os.posix_fadvise(fd, span.begin, span.end - span.begin, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def verify(out: Path, base: Base, written: dict[str, np.ndarray]) -> None:
    """Re-read the header and the changed tensors ``written`` of one output file."""
    from hyperkit.bake.sd_base import open_safetensors
    from hyperkit.formats.arrays import bit_equal

    back = open_safetensors(out, layout=False)
    if base.infos and [(n, i.dtype, i.shape) for n, i in back.infos.items()] != [
        (n, i.dtype, i.shape) for n, i in base.infos.items()
    ]:
        raise VerificationError(f"{out}: the written tensor list differs from the base's")
    for name, arr in written.items():
        if not bit_equal(back.array(name), arr):
            raise VerificationError(f"{out}: tensor '{name}' does not read back as written")


def bake_checkpoint(
    base: Base,
    targets: list[Attention],
    links: list[Link],
    outs: list[Path],
    metas: list[dict[str, str]],
    dtype: type,
    progress: Callable[[int, int], None] | None = None,
) -> list[LayerParity]:
    """Fold into a safetensors/diffusers/ckpt base in ``dtype`` (the working precision) and
    write ``outs`` (.safetensors), one per file of :meth:`Base.files` with its metadata."""
    from hyperkit.bake.stream import write_streaming
    from hyperkit.formats.safetensors_io import write_safetensors

    with blas_threads(1):  # see Folder
        folder = Folder(base, targets, links, dtype)
        kept: dict[str, np.ndarray] = {}
        sample = {att.key("to_k.weight") for att in targets[:4]}  # re-read a few after writing

        def value(name: str) -> np.ndarray:
            arr = folder.value(name)
            if name in sample:
                kept[name] = arr
            return arr

        def take(name: str, wait: bool) -> np.ndarray | None:
            return value(name) if wait or folder.ready(name) else None

        total = sum(i.end - i.begin for f in base.files() for i in f.infos.values())

        def report(n: int, _file_total: int) -> None:  # one bar over every file
            if progress:
                progress(n, total)

        try:
            if base.arrays:
                items = [(n, value(n) if n in folder.owner else a) for n, a in base.arrays.items()]
                write_safetensors(outs[0], items, metas[0])
            else:
                for part, out, meta in zip(base.files(), outs, metas, strict=True):
                    names = [n for n in folder.names if n in part.infos]
                    write_streaming(part.weights, out, part.infos, take, names, meta, report)
            parity = folder.finish()
        finally:
            folder.pool.shutdown(cancel_futures=True)
    for part, out in zip(base.files(), outs, strict=True):
        verify(out, part, {n: a for n, a in kept.items() if base.arrays or n in part.infos})
    return parity
