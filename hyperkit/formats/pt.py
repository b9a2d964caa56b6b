"""The ``.pt`` container for hyperkit's families, torch-free.

Reading goes through :mod:`hyperkit.formats.torchfile` (an allowlisting unpickler that never runs
anything, zip or legacy containers, storages as numpy arrays); the family is told by the shape of
the top-level object (:func:`hyperkit.families.for_pt_object`): a ``{"hyperkit_spec", "tensors"}``
dict is a generator, anything else goes to the sd-kv decoder (A1111, NovelAI, kohya), which also
explains what a file that is no hypernetwork holds. Writing asks the family for the plain object
and writes the minimal zip layout A1111's safety check and ``torch.load(weights_only=True)``
accept.

Example:
    >>> import numpy as np, tempfile, os
    >>> from hyperkit.sdkv.model import SDKVHypernetwork
    >>> sd = {"linear.0.weight": np.ones((16, 8), "f4"), "linear.0.bias": np.ones(16, "f4"),
    ...       "linear.1.weight": np.ones((8, 16), "f4"), "linear.1.bias": np.ones(8, "f4")}
    >>> path = os.path.join(tempfile.mkdtemp(), "demo.pt")
    >>> write(SDKVHypernetwork({8: (sd, sd)}, {"name": "demo"}), path, stem="demo")
    >>> read(path).effective_metadata()["activation_func"]
    'linear'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hyperkit import families
from hyperkit.formats.torchfile import TorchFile, read_torch_file, write_torch_zip
from hyperkit.paths import text_name


def read_with_info(path: str | os.PathLike[str]) -> tuple[Any, TorchFile]:
    """Read a hypernetwork ``.pt`` and also return the container facts (globals, locations)."""
    tf = read_torch_file(path)
    codec = families.for_pt_object(tf.obj).load()
    return codec.decode_pt(tf.obj, str(path), text_name(Path(path).stem)), tf


def read(path: str | os.PathLike[str]) -> Any:
    """Read a hypernetwork ``.pt`` of any family without executing anything in it."""
    return read_with_info(path)[0]


def normalize(model: Any) -> Any:
    """What :func:`write` stores for ``model``, as :func:`read` will return it (used to verify)."""
    normalize_pt = getattr(families.for_model(model).load(), "normalize_pt", None)
    return normalize_pt(model) if normalize_pt else model


def write(model: Any, path: str | os.PathLike[str], *, stem: str) -> None:
    """Write a ``.pt`` every consumer loads; ``stem`` names the archive's top folder."""
    write_torch_zip(path, families.for_model(model).load().pt_object(model), stem)
