"""The one in-memory model of an ``sd-kv`` hypernetwork (A1111 / NovelAI / kohya).

Every reader returns a :class:`SDKVHypernetwork` and every writer takes one, so formats never talk
to each other directly. The model keeps the file's content *as found* (metadata values with their
Python types, key order, tuple-vs-list containers, legacy ``linear1`` names); what A1111 would
assume for missing keys is derived on demand by :meth:`SDKVHypernetwork.effective_metadata`.

Example:
    >>> import numpy as np
    >>> sd = {"linear.0.weight": np.zeros((16, 8), "f4"), "linear.0.bias": np.zeros(16, "f4"),
    ...       "linear.1.weight": np.zeros((8, 16), "f4"), "linear.1.bias": np.zeros(8, "f4")}
    >>> hn = SDKVHypernetwork(modules={8: (sd, dict(sd))}, metadata={"name": "demo"})
    >>> hn.dims, hn.parameter_count
    ([8], 560)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FAMILY = "sd-kv"

#: A1111's 13 metadata keys, in the order ``Hypernetwork.save`` writes them.
A1111_METADATA_KEYS: tuple[str, ...] = (
    "step",
    "name",
    "layer_structure",
    "activation_func",
    "is_layer_norm",
    "weight_initialization",
    "sd_checkpoint",
    "sd_checkpoint_name",
    "activate_output",
    "use_dropout",
    "dropout_structure",
    "last_layer_dropout",
    "optional_info",
)

#: Which of the two modules per dim: index 0 transforms the K input, index 1 the V input.
KV_NAMES: tuple[str, str] = ("k", "v")

StateDict = dict[str, np.ndarray]


def parse_dropout_structure(layer_structure: list[float], use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """Rebuild a missing ``dropout_structure`` exactly as A1111 does.

    Example:
        >>> parse_dropout_structure([1, 2, 2, 1], True, False)
        [0, 0.3, 0, 0]
    """
    n = len(layer_structure)
    if not use_dropout:
        return [0] * n
    return [0] + [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0] + [0]


@dataclass
class SDKVHypernetwork:
    """A key/value hypernetwork: per context width, two residual MLPs (K and V).

    Attributes:
        modules: ``dim -> (k_state_dict, v_state_dict)``, each an ordered ``key -> array`` map in
            module order (``linear.0.weight``, ``linear.0.bias``, ...).
        metadata: every non-dim top-level entry of the file, exactly as found (values keep their
            Python types: ``1`` vs ``1.0``, ``None``, tuples vs lists).
        key_order: the top-level keys (dims and metadata names) in file order.
        container: ``"tuple"`` (A1111) or ``"list"`` (NovelAI / kohya) for the per-dim pair.
        default_name: what A1111 uses when ``name`` is missing: the file stem.
    """

    modules: dict[int, tuple[StateDict, StateDict]]
    metadata: dict[str, Any] = field(default_factory=dict)
    key_order: list[int | str] = field(default_factory=list)
    container: str = "tuple"
    default_name: str = "hypernetwork"

    def __post_init__(self) -> None:
        if not self.key_order:
            self.key_order = [*self.modules, *self.metadata]

    @property
    def dims(self) -> list[int]:
        """Context widths in file order."""
        return list(self.modules)

    @property
    def parameter_count(self) -> int:
        """Number of scalar parameters over every tensor."""
        return sum(int(a.size) for _, a in self.tensors())

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``("{dim}.{k|v}.{key}", array)`` in file order: the canonical flat names."""
        for dim, pair in self.modules.items():
            for kv, state in zip(KV_NAMES, pair, strict=True):
                for key, arr in state.items():
                    yield f"{dim}.{kv}.{key}", arr

    def dtypes(self) -> list[str]:
        """The distinct tensor dtypes, e.g. ``["float32"]``."""
        return sorted({str(a.dtype) for _, a in self.tensors()})

    def effective_metadata(self) -> dict[str, Any]:
        """All 13 A1111 metadata keys as A1111 would see them, defaults filled in for missing ones.

        Note ``activate_output`` defaults to ``True`` (old files applied the activation after the
        last layer) and ``use_dropout`` is forced on when ``dropout_structure`` has a non-zero.
        """
        md = self.metadata
        layer_structure = md.get("layer_structure", [1, 2, 1])
        dropout_structure = md.get("dropout_structure")
        use_dropout = md.get("use_dropout", False)
        if isinstance(dropout_structure, list | tuple) and any(dropout_structure):
            use_dropout = True
        last_layer_dropout = md.get("last_layer_dropout", False)
        if dropout_structure is None and isinstance(layer_structure, list | tuple):
            dropout_structure = parse_dropout_structure(
                list(layer_structure), bool(use_dropout), bool(last_layer_dropout)
            )
        return {
            "step": md.get("step", 0),
            "name": md.get("name", self.default_name),
            "layer_structure": layer_structure,
            "activation_func": md.get("activation_func"),
            "is_layer_norm": md.get("is_layer_norm", False),
            "weight_initialization": md.get("weight_initialization", "Normal"),
            "sd_checkpoint": md.get("sd_checkpoint"),
            "sd_checkpoint_name": md.get("sd_checkpoint_name"),
            "activate_output": md.get("activate_output", True),
            "use_dropout": use_dropout,
            "dropout_structure": dropout_structure,
            "last_layer_dropout": last_layer_dropout,
            "optional_info": md.get("optional_info"),
        }

    def missing_metadata(self) -> list[str]:
        """The A1111 metadata keys this file does not carry (A1111 defaults apply to them)."""
        return [k for k in A1111_METADATA_KEYS if k not in self.metadata]

    def extra_metadata(self) -> dict[str, Any]:
        """Top-level entries that are neither dims nor one of A1111's 13 keys."""
        return {k: v for k, v in self.metadata.items() if k not in A1111_METADATA_KEYS}

    def architecture(self) -> str | None:
        """Base-model family inferred from the dims, or ``None`` when the dims do not say.

        ``2048`` only exists on SDXL base, ``1024`` is SD2's text width, ``768`` (without 1024) SD1's.

        Example:
            >>> SDKVHypernetwork(modules={768: ({}, {}), 320: ({}, {})}).architecture()
            'stable-diffusion-v1'
        """
        dims = set(self.modules)
        if 2048 in dims:
            return "stable-diffusion-xl-v1-base"
        if 1024 in dims:
            return "stable-diffusion-v2-512"
        if 768 in dims:
            return "stable-diffusion-v1"
        return None

    def with_tensors(self, fn: Any) -> SDKVHypernetwork:
        """A copy whose every tensor is ``fn(array)`` (e.g. a dtype cast); metadata is shared."""
        modules = {
            dim: (
                {k: fn(a) for k, a in pair[0].items()},
                {k: fn(a) for k, a in pair[1].items()},
            )
            for dim, pair in self.modules.items()
        }
        return SDKVHypernetwork(
            modules=modules,
            metadata=dict(self.metadata),
            key_order=list(self.key_order),
            container=self.container,
            default_name=self.default_name,
        )
