"""A replay of ComfyUI's *Load Hypernetwork* builder, to say whether it computes what A1111 does.

ComfyUI (``comfy_extras/nodes_hypernetwork.py``, ``load_hypernetwork_patch``) ignores
``layer_structure`` and the key indices. Per module it lists the keys ending in ``.weight`` in
dict insertion order and walks that list: a Linear sized from the weight, an activation unless it
is the last entry (or ``activate_output``), then — with layer norm — the *next* ``.weight`` key as
a LayerNorm, then ``Dropout(0.3)`` if ``use_dropout`` and neither last nor penultimate (unless
``last_layer_dropout``). "Last" and "penultimate" count layer-norm weights too, and the
Sequentials are never put in eval mode, so dropout stays active while sampling. :func:`build`
replays that walk as :class:`~hyperkit.sdkv.structure.Layer` lists; :func:`verdict` compares them
with A1111's :func:`~hyperkit.sdkv.structure.resolved_layout` and says how the outputs differ.

Example:
    >>> import numpy as np
    >>> state = {"linear.0.weight": np.zeros((16, 8)), "linear.0.bias": np.zeros(16),
    ...          "linear.2.weight": np.zeros(16), "linear.2.bias": np.zeros(16),
    ...          "linear.3.weight": np.zeros((8, 16)), "linear.3.bias": np.zeros(8),
    ...          "linear.4.weight": np.zeros(8), "linear.4.bias": np.zeros(8)}
    >>> opts = options({"activation_func": "relu", "is_layer_norm": True})
    >>> [x.kind for x in build(state, opts)]  # a relu after the last linear, unlike A1111
    ['linear', 'act', 'layernorm', 'linear', 'act', 'layernorm']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperkit.errors import HyperkitError
from hyperkit.sdkv import structure
from hyperkit.sdkv.model import KV_NAMES, SDKVHypernetwork
from hyperkit.sdkv.structure import Layer

#: ComfyUI's fixed dropout probability (the file's ``dropout_structure`` is ignored).
DROPOUT_P = 0.3


@dataclass(frozen=True)
class Options:
    """The five metadata keys ComfyUI reads, with ComfyUI's defaults (not A1111's)."""

    activation: str
    layer_norm: bool
    use_dropout: bool
    activate_output: bool
    last_layer_dropout: bool


class BuildError(Exception):
    """ComfyUI raises while building (or running) the modules; the message says where and why."""


def options(metadata: Mapping[str, Any]) -> Options:
    """ComfyUI's options for a file; raises :class:`BuildError` for an activation it refuses.

    Example:
        >>> options({}).activate_output, options({}).activation
        (False, 'linear')
    """
    act = metadata.get("activation_func", "linear")
    if not (isinstance(act, str) and act in structure.COMFYUI_ACTIVATIONS):
        # A1111 treats None as identity and writes it; hyperkit's .pt writer spells it 'linear'
        fix = "; `hyperkit convert` to .pt writes None as 'linear'" if act is None else ""
        raise BuildError(
            f"activation_func {act!r} is not one of ComfyUI's "
            f"{', '.join(sorted(structure.COMFYUI_ACTIVATIONS))}: 'Unsupported Hypernetwork format'{fix}"
        )
    return Options(
        activation=act,
        # ComfyUI tests these with plain truthiness, so keep Python's rules rather than `is True`
        layer_norm=bool(metadata.get("is_layer_norm", False)),
        use_dropout=bool(metadata.get("use_dropout", False)),
        activate_output=bool(metadata.get("activate_output", False)),
        last_layer_dropout=bool(metadata.get("last_layer_dropout", False)),
    )


def _pair(state: Mapping[str, np.ndarray], name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    bias = state.get(f"{name}.bias")
    if bias is None:
        raise BuildError(f"KeyError: '{name}.bias' (ComfyUI reads a bias for every '.weight' key)")
    return tuple(state[f"{name}.weight"].shape), tuple(bias.shape)


def build(state: Mapping[str, np.ndarray], opts: Options) -> list[Layer]:
    """ComfyUI's Sequential for one module, as layers naming the file keys they use.

    Raises :class:`BuildError` where ComfyUI's own code raises (missing bias, a 1-D weight taken
    for a Linear, no key left for a LayerNorm, shapes ``load_state_dict`` refuses).
    """
    names = [k[: -len(".weight")] for k in state if k.endswith(".weight")]
    act = structure.ALIASES.get(opts.activation, opts.activation)
    layers: list[Layer] = []
    i = 0
    while i < len(names):
        # computed once per step from the position among *all* .weight keys, layer norms included
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        (w, b), name = _pair(state, names[i]), names[i]
        if len(w) < 2:
            raise BuildError(f"IndexError: '{name}.weight' has shape {w}, but ComfyUI builds a Linear from it")
        if len(w) > 2 or b != (w[0],):
            raise BuildError(f"load_state_dict fails: Linear '{name}' has weight {w} and bias {b}")
        layers.append(Layer("linear", len(layers), w[1], w[0], weight=f"{name}.weight", bias=f"{name}.bias"))
        if opts.activation != "linear" and (not last or opts.activate_output):
            layers.append(Layer("act", len(layers), activation=act))
        if opts.layer_norm:
            i += 1
            if i >= len(names):
                raise BuildError(f"IndexError: no '.weight' key after '{name}.weight' for the layer norm")
            (lw, lb), ln = _pair(state, names[i]), names[i]
            if len(lw) != 1 or lb != lw:
                raise BuildError(f"load_state_dict fails: LayerNorm '{ln}' has weight {lw} and bias {lb}")
            layers.append(Layer("layernorm", len(layers), lw[0], lw[0], weight=f"{ln}.weight", bias=f"{ln}.bias"))
        if opts.use_dropout and not last and (not penultimate or opts.last_layer_dropout):
            layers.append(Layer("dropout", len(layers), p=DROPOUT_P))
        i += 1
    return layers


def flow_problem(layers: list[Layer], dim: int) -> str:
    """Why running the layers on width ``dim`` fails (``k + hn(k)`` needs width ``dim`` back), or ''."""
    width = dim
    for layer in layers:
        if layer.kind in ("linear", "layernorm") and layer.in_features != width:
            return f"{describe([layer])} receives width {width}"
        width = layer.out_features if layer.kind in ("linear", "layernorm") else width
    return "" if width == dim else f"the output has width {width}, but the residual needs {dim}"


def describe(layers: list[Layer]) -> str:
    """A compact human form, e.g. ``Linear(8→16), ReLU, LayerNorm(16)``.

    Example:
        >>> describe([Layer("linear", 0, 8, 16), Layer("act", 1, activation="relu")])
        'Linear(8→16), relu'
    """
    parts = []
    for x in layers:
        if x.kind == "linear":
            parts.append(f"Linear({x.in_features}→{x.out_features})")
        elif x.kind == "layernorm":
            parts.append(f"LayerNorm({x.out_features})")
        elif x.kind == "dropout":
            parts.append(f"Dropout({x.p:g})")
        else:
            parts.append(x.activation)
    return ", ".join(parts)


def _key(layer: Layer) -> tuple[Any, ...]:
    return (layer.kind, layer.in_features, layer.out_features, layer.activation, layer.weight, layer.bias)


def _without_final_act(layers: list[Layer]) -> list[Layer]:
    last = max((n for n, x in enumerate(layers) if x.kind == "linear"), default=-1)
    if 0 <= last < len(layers) - 1 and layers[last + 1].kind == "act":
        return layers[: last + 1] + layers[last + 2 :]
    return layers


def structure_difference(comfy: list[Layer], a1111: list[Layer], hn: SDKVHypernetwork, opts: Options) -> str:
    """How ComfyUI's network differs from A1111's once dropout is off in both ('' if it does not)."""
    c = [_key(x) for x in comfy if x.kind != "dropout"]
    a = [_key(x) for x in a1111 if x.kind != "dropout"]
    if c == a:
        return ""
    c_cut = [_key(x) for x in _without_final_act(comfy) if x.kind != "dropout"]
    a_cut = [_key(x) for x in _without_final_act(a1111) if x.kind != "dropout"]
    act = structure.ALIASES.get(opts.activation, opts.activation)
    if c_cut == a and opts.layer_norm:
        return f"ComfyUI adds a {act} after the last linear (it counts layer-norm weights as layers)"
    if c == a_cut and "activate_output" not in hn.metadata:
        return (
            f"ComfyUI leaves out the {act} after the last linear (activate_output is missing: ComfyUI "
            "assumes False, A1111 True; `hyperkit convert` to .pt writes A1111's value explicitly)"
        )
    plain = [x for x in comfy if x.kind != "dropout"]
    ref = [x for x in a1111 if x.kind != "dropout"]
    if [k[:4] for k in c] == [k[:4] for k in a]:
        wrong = next(n for n, (x, y) in enumerate(zip(plain, ref, strict=True)) if _key(x) != _key(y))
        return (
            f"ComfyUI takes layers in the file's key order: it uses '{plain[wrong].weight}' where A1111 "
            f"uses '{ref[wrong].weight}'"
        )
    return f"ComfyUI builds {describe(plain)} where A1111 builds {describe(ref)}"


def _nested(hn: SDKVHypernetwork) -> bool:
    return bool(hn.metadata.get("skip_connection")) or any(
        k.count(".") > 2 for pair in hn.modules.values() for state in pair for k in state
    )


def verdict(hn: SDKVHypernetwork, a1111_problem: str = "") -> dict[str, Any]:
    """``{"loads", "same_as_a1111", "reason"}`` for ComfyUI's builder on an already-loaded file.

    ``a1111_problem`` is why A1111 cannot build the modules ('' when it can); the comparison is
    with the network A1111 builds from the same tensors and metadata.
    """
    try:
        opts = options(hn.metadata)
        built = {}
        for dim, pair in hn.modules.items():
            for which, state in enumerate(pair):
                where = f"dim {dim} ({KV_NAMES[which]})"
                try:
                    built[dim, which] = layers = build(state, opts)
                except BuildError as e:
                    raise BuildError(f"its builder raises on {where}: {e}") from None
                if problem := flow_problem(layers, dim):
                    raise BuildError(f"sampling fails on {where}: {problem}")
    except BuildError as e:
        return {"loads": False, "same_as_a1111": False, "reason": str(e)}
    dropout = any(x.kind == "dropout" for layers in built.values() for x in layers)
    active = f"keeps dropout p={DROPOUT_P:g} active at inference (it never calls eval())" if dropout else ""
    if a1111_problem or not built:
        first = next(iter(built.values()), [])
        if _nested(hn):
            how = f"drops the skip connection and flattens the ResBlock linears into one Sequential ({describe(first)})"
        else:
            how = f"builds {describe(first) or 'nothing (no weights)'} from the tensor shapes"
        reasons = [how, active] if active else [how]
        refusal = f"A1111 refuses the file ({a1111_problem})" if a1111_problem else "the file has no dim keys"
        return {
            "loads": True,
            "same_as_a1111": False,
            "reason": f"ComfyUI loads it but {' and '.join(reasons)}; {refusal}",
        }
    diffs: list[str] = []
    try:
        for (dim, which), layers in built.items():
            diff = structure_difference(layers, structure.resolved_layout(hn, dim, which), hn, opts)
            if diff and diff not in diffs:
                diffs.append(diff)
    except HyperkitError as e:  # A1111 cannot build a layout after all: report, do not crash
        return verdict(hn, e.message)
    if active:
        diffs.append(active if diffs else f"ComfyUI {active}")
    if not diffs:
        return {"loads": True, "same_as_a1111": True, "reason": ""}
    return {"loads": True, "same_as_a1111": False, "reason": " and ".join(diffs) + ": outputs differ from A1111"}
