"""Apply sd-kv hypernetworks to a diffusers ``UNet2DConditionModel`` at run time, as A1111 does.

diffusers has no hypernetwork support. A1111 changes only the *inputs* of each attention layer's
``to_k`` and ``to_v``, by the input's last dimension (the context width: the text width in
cross-attention, the channel width in self-attention), chaining every loaded hypernetwork in
order, in float32, and casting back. Forward pre-hooks on the ``to_k``/``to_v`` Linear modules do
exactly that, whatever attention processor (SDPA, xformers, sliced) the model uses; only fused
QKV projections (``fuse_qkv_projections``) bypass them, which :func:`apply_hypernetworks` refuses.
This is the reference of every parity test, and usable on its own::

    handle = apply_hypernetworks(pipe.unet, [hyperkit.load("anime.pt")], strengths=[0.8])
    image = pipe(prompt).images[0]
    handle.remove()

Example:
    >>> import numpy as np
    >>> from hyperkit.sdkv.model import SDKVHypernetwork
    >>> w = {"linear.0.weight": np.eye(4, dtype="f4"), "linear.0.bias": np.zeros(4, "f4")}
    >>> hn = SDKVHypernetwork(modules={4: (w, w)}, metadata={"layer_structure": [1, 1]})
    >>> mlp = torch_chain([(hn, 0.5)], 4, 0)
    >>> import torch
    >>> mlp(torch.ones(1, 4)).tolist()
    [[1.5, 1.5, 1.5, 1.5]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyperkit.errors import UnsupportedError, require
from hyperkit.sdkv import structure
from hyperkit.sdkv.model import SDKVHypernetwork


def _activation(name: str) -> Any:
    import torch

    classes = {cls.__name__.lower(): cls for cls in vars(torch.nn.modules.activation).values() if isinstance(cls, type)}
    if name not in classes:
        raise UnsupportedError(f"activation '{name}' is not a torch.nn activation")
    return classes[name]()


def torch_module(hn: SDKVHypernetwork, dim: int, which: int) -> Any:
    """A1111's ``nn.Sequential`` for one module of ``hn``, in float32 and eval mode."""
    require("torch", "torch")
    import torch

    state = hn.modules[dim][which]
    members: list[Any] = []
    params: dict[str, Any] = {}
    for layer in structure.resolved_layout(hn, dim, which):
        idx = len(members)
        if layer.kind == "linear":
            members.append(torch.nn.Linear(layer.in_features, layer.out_features))
            params[f"{idx}.weight"], params[f"{idx}.bias"] = state[layer.weight], state[layer.bias]
        elif layer.kind == "layernorm":
            members.append(torch.nn.LayerNorm(layer.out_features, eps=structure.LN_EPS))
            params[f"{idx}.weight"], params[f"{idx}.bias"] = state[layer.weight], state[layer.bias]
        elif layer.kind == "act":
            members.append(_activation(layer.activation))
            if layer.weight:
                params[f"{idx}.weight"] = state[layer.weight]
        else:
            members.append(torch.nn.Dropout(layer.p))
    seq = torch.nn.Sequential(*members)
    seq.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in params.items()})
    return seq.float().eval()


class _Chain:
    """``x ← x + s·MLP(x)`` for each link, in float32, cast back to the input's dtype."""

    def __init__(self, modules: list[tuple[Any, float]]) -> None:
        self.modules = modules

    def __call__(self, x: Any) -> Any:
        out = x.float()
        for module, strength in self.modules:
            module.to(out.device)
            out = out + module(out) * strength
        return out.to(x.dtype)


def torch_chain(links: Sequence[tuple[SDKVHypernetwork, float]], dim: int, which: int) -> _Chain:
    """The runtime transform of a K (``which=0``) or V (``1``) input of width ``dim``."""
    return _Chain([(torch_module(hn, dim, which), s) for hn, s in links if dim in hn.modules])


@dataclass
class Handle:
    """The installed hooks; :meth:`remove` restores the model."""

    hooks: list[Any] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    def remove(self) -> None:
        """Take every hook out again."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


def apply_hypernetworks(
    unet: Any, hypernetworks: Sequence[SDKVHypernetwork], strengths: Sequence[float] | None = None
) -> Handle:
    """Hook ``hypernetworks`` (chained, in order) into every attention layer of ``unet`` whose
    context width one of them has; return the handle that removes them."""
    require("torch", "torch")
    strengths = list(strengths) if strengths is not None else [1.0] * len(hypernetworks)
    if len(strengths) != len(hypernetworks):
        raise ValueError("give one strength per hypernetwork")
    links = list(zip(hypernetworks, strengths, strict=True))
    chains: dict[tuple[int, int], _Chain] = {}
    handle = Handle()
    for name, module in unet.named_modules():
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if to_k is None or to_v is None or not hasattr(to_k, "in_features"):
            if getattr(module, "fused_projections", False):
                raise UnsupportedError(f"{name}: fused QKV projections bypass to_k/to_v; unfuse them first")
            continue
        width = int(to_k.in_features)
        if not any(width in hn.modules for hn, _ in links):
            continue
        for which, proj in ((0, to_k), (1, to_v)):
            chain = chains.setdefault((width, which), torch_chain(links, width, which))
            handle.hooks.append(proj.register_forward_pre_hook(_hook(chain)))
        handle.layers.append(name)
    return handle


def _hook(chain: _Chain) -> Any:
    def pre_hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (chain(args[0]), *args[1:])

    return pre_hook
