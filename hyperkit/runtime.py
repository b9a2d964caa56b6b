"""The one ONNX Runtime session factory: providers, options, threads, and the truth about which ran.

``get_available_providers()`` lists what the wheel was built with, not what can load, so the only
truth is ``session.get_providers()`` after creation. The provider list is explicit and always
ends with the CPU; CUDA gets its EP options; the CUDA library probe's red log lines are muted
while the session is created (only severity 4 hides them), and when CUDA was asked for but did
not load, :class:`Session` says so in one quiet line (``note``) instead. On a GPU, :meth:`Session.run`
binds inputs and outputs with IOBinding, so copies happen once per call and outside ORT's graph.

Example:
    >>> from hyperkit.demo import fixture_path
    >>> import tempfile, pathlib, hyperkit
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "b.onnx"
    >>> hyperkit.save(hyperkit.load(fixture_path("b_a1111_default.pt")), out)
    >>> session, provider = make_session(out, prefer_gpu=False)
    >>> provider
    'CPUExecutionProvider'
    >>> open_session(out, prefer_gpu=False, threads=1).describe()
    'CPUExecutionProvider (1 thread)'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, require

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
#: CUDA EP options hyperkit sets (the rest keep ORT's defaults). HEURISTIC avoids the exhaustive
#: cuDNN search that makes the first run of every new shape slow; a baked model has static weights
#: and is run at a few batch sizes, where the heuristic choice is close to the best one.
CUDA_OPTIONS: dict[str, str] = {
    "device_id": "0",
    "arena_extend_strategy": "kSameAsRequested",
    "cudnn_conv_algo_search": "HEURISTIC",
    "do_copy_in_default_stream": "1",
}


@dataclass
class Session:
    """An ``InferenceSession`` with the provider that really runs it and how it was asked for."""

    session: Any
    provider: str
    requested: list[str]
    threads: int
    note: str = ""
    _binding: Any = field(default=None, repr=False)

    @property
    def on_gpu(self) -> bool:
        return self.provider == CUDA

    def describe(self) -> str:
        """One line: the provider actually used, the CPU threads, and any fallback note."""
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "ORT default threads"
        return f"{self.provider} ({threads})" + (f"; {self.note}" if self.note else "")

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; on CUDA through IOBinding (inputs copied to the device once, outputs back once)."""
        if not self.on_gpu:
            return list(self.session.run(None, feeds))
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0))
        for out in self.session.get_outputs():
            binding.bind_output(out.name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


def open_session(
    path: str | os.PathLike[str],
    *,
    prefer_gpu: bool = True,
    threads: int | None = None,
    cuda_options: dict[str, str] | None = None,
) -> Session:
    """A :class:`Session` for ``path``: CUDA first when asked for and built in, then the CPU.

    ``threads`` sets ``intra_op_num_threads`` (``None``: ORT's default, one per physical core);
    inter-op parallelism stays at one thread, as a sequential graph needs no more.
    """
    require("onnxruntime", "onnx")
    import onnxruntime as ort

    requested: list[Any] = [CPU]
    note = ""
    if prefer_gpu:
        if CUDA in ort.get_available_providers():
            requested.insert(0, (CUDA, {**CUDA_OPTIONS, **(cuda_options or {})}))
        else:
            note = "this onnxruntime build has no CUDA provider; running on the CPU"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    ort.set_default_logger_severity(4)  # only severity 4 hides the CUDA library probe's error lines
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
    except Exception as e:  # ORT raises its own types (InvalidGraph, Fail, ...) for unusable models
        raise BadInputError(f"{path}: ONNX Runtime cannot load the model: {str(e).splitlines()[0][:300]}") from e
    finally:
        ort.set_default_logger_severity(2)
    provider = session.get_providers()[0]
    if prefer_gpu and not note and provider != CUDA:
        note = "CUDA was requested but its libraries did not load (CUDA/cuDNN missing?); running on the CPU"
    names = [p if isinstance(p, str) else p[0] for p in requested]
    return Session(session, provider, names, threads or 0, note)


def make_session(path: str | os.PathLike[str], *, prefer_gpu: bool = True) -> tuple[Any, str]:
    """An ``InferenceSession`` for ``path`` and the name of the provider it actually uses."""
    s = open_session(path, prefer_gpu=prefer_gpu)
    return s.session, s.provider
