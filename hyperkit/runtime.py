"""ONNX Runtime sessions that prefer CUDA, fall back to the CPU, and say which one really runs.

``get_available_providers()`` lists what the wheel was built with, not what can load, so the only
truth is ``session.get_providers()`` after creation. The CUDA probe's loud log lines are muted
while the session is created; the caller reports the provider actually used instead.

Example:
    >>> from hyperkit.demo import fixture_path
    >>> import tempfile, pathlib, hyperkit
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "b.onnx"
    >>> hyperkit.save(hyperkit.load(fixture_path("b_a1111_default.pt")), out)
    >>> session, provider = make_session(out, prefer_gpu=False)
    >>> provider
    'CPUExecutionProvider'
"""

from __future__ import annotations

import os
from typing import Any

from hyperkit.errors import require


def make_session(path: str | os.PathLike[str], *, prefer_gpu: bool = True) -> tuple[Any, str]:
    """An ``InferenceSession`` for ``path`` and the name of the provider it actually uses."""
    require("onnxruntime", "onnx")
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ort.set_default_logger_severity(4)  # only severity 4 hides the CUDA library probe's error lines
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)
    return session, session.get_providers()[0]
