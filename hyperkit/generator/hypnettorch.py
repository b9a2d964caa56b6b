"""Import hypnettorch ``HMLP`` / ``ChunkedHMLP`` hypernetworks of an ``MLP`` target as generators.

hypnettorch checkpoints are bare state dicts: the architecture lives in the training script, so
the importer takes the constructor arguments as a small JSON document (:data:`EXAMPLE_CONFIG`).
Its state dicts list each tensor two or three times over one storage (``_internal_params.k``,
``_layer_weight_tensors.j``, and for ``ChunkedHMLP`` again under ``_hnet.``); the importer reads
the canonical ``_internal_params`` order — condition embeddings, then weight and bias per layer,
then (chunked) the chunk embeddings — checks that every alias present holds the same values, and
names the result canonically. Semantics carried over exactly: the hypernet input is
``[chunk embedding | condition]`` (hypnettorch's ``[uncond | chunk | cond]`` without an
unconditional input), activations after hidden layers only, the flat output split in the order of
``MLP.param_shapes`` (weight ``[out, in]`` then bias, per layer), the last chunk's tail discarded.
Options hypnettorch has but the spec cannot express (unconditional inputs, per-condition chunk
embeddings, dropout, batch or spectral norm, an output function, context modulation) are refused.
No torch is needed: the ``.pt`` file is read with hyperkit's allowlisting reader.

Example:
    >>> import numpy as np
    >>> cfg = {"hnet": {"type": "HMLP", "layers": [3], "cond_in_size": 2, "num_cond_embs": 2},
    ...        "mnet": {"type": "MLP", "n_in": 2, "n_out": 1, "hidden_layers": []}}
    >>> state = {"_internal_params.0": np.zeros(2, "f4"), "_internal_params.1": np.ones(2, "f4"),
    ...          "_internal_params.2": np.zeros((3, 2), "f4"), "_internal_params.3": np.zeros(3, "f4"),
    ...          "_internal_params.4": np.zeros((3, 3), "f4"), "_internal_params.5": np.zeros(3, "f4")}
    >>> g = from_state_dict(state, cfg, "hnet.pt")
    >>> g.spec.total, [name for name, _ in g.tensors()][:2]
    (3, ['hnet.cond_table', 'hnet.layers.0.weight'])
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from hyperkit.errors import BadInputError, UnsupportedError
from hyperkit.generator.model import Generator
from hyperkit.generator.spec import SPEC_VERSION, SpecError, canonical_text

#: The configuration document: hypnettorch's constructor arguments (defaults as hypnettorch's).
EXAMPLE_CONFIG: dict[str, Any] = {
    "hnet": {
        "type": "ChunkedHMLP",
        "layers": [100, 100],
        "activation": "relu",
        "cond_in_size": 8,
        "num_cond_embs": 5,
        "chunk_size": 4096,
        "chunk_emb_size": 8,
    },
    "mnet": {
        "type": "MLP",
        "n_in": 784,
        "n_out": 10,
        "hidden_layers": [100, 100],
        "activation": "relu",
        "use_bias": True,
    },
}
ACTIVATIONS = {
    "relu": "relu",
    "elu": "elu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "leaky_relu": "leaky_relu",
    "gelu": "gelu",
    "silu": "silu",
    "identity": "identity",
    None: "identity",
}
#: hypnettorch options the spec cannot express, with the value that means "off".
_REFUSED_HNET = {
    "uncond_in_size": 0,
    "no_uncond_weights": False,
    "no_cond_weights": False,
    "cond_chunk_embs": False,
    "dropout_rate": -1,
    "use_spectral_norm": False,
    "use_batch_norm": False,
    "use_bias": True,
}
_REFUSED_MNET = {
    "dropout_rate": -1,
    "use_spectral_norm": False,
    "use_batch_norm": False,
    "out_fn": None,
    "use_context_mod": False,
}


def _options(section: Any, name: str, known: dict[str, Any], refused: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise BadInputError(f"{where}: config '{name}' must be an object")
    if unknown := sorted(set(section) - set(known) - set(refused) - {"type"}):
        raise BadInputError(f"{where}: config '{name}.{unknown[0]}' is not a known option (known: {', '.join(known)})")
    for key, off in refused.items():
        if section.get(key, off) != off:
            raise UnsupportedError(
                f"{where}: config '{name}.{key}' = {section[key]!r} cannot be expressed in a "
                f"{SPEC_VERSION} spec (only {off!r})"
            )
    out = {**known, **{k: v for k, v in section.items() if k in known}}
    act = out.get("activation", "relu")
    if act not in ACTIVATIONS:
        raise UnsupportedError(
            f"{where}: config '{name}.activation' {act!r} is not one of {sorted(map(str, ACTIVATIONS))}"
        )
    return out


def spec_document(config: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """The generator spec for hypnettorch's constructor arguments."""
    if not isinstance(config, dict) or set(config) - {"hnet", "mnet"}:
        raise BadInputError(f"{where}: config must be an object with 'hnet' and 'mnet'")
    htype = config.get("hnet", {}).get("type") if isinstance(config.get("hnet"), dict) else None
    if htype not in ("HMLP", "ChunkedHMLP"):
        raise UnsupportedError(f"{where}: config 'hnet.type' must be HMLP or ChunkedHMLP, got {htype!r}")
    known = {"layers": [100, 100], "activation": "relu", "cond_in_size": 8, "num_cond_embs": 1}
    if htype == "ChunkedHMLP":
        known |= {"chunk_size": None, "chunk_emb_size": 8}
    h = _options(config["hnet"], "hnet", known, _REFUSED_HNET, where)
    mnet = config.get("mnet")
    if not isinstance(mnet, dict) or mnet.get("type") != "MLP":
        raise UnsupportedError(f"{where}: config 'mnet.type' must be MLP (the only target imported so far)")
    m = _options(
        mnet,
        "mnet",
        {"n_in": 1, "n_out": 1, "hidden_layers": [10, 10], "activation": "relu", "use_bias": True},
        _REFUSED_MNET,
        where,
    )
    widths = [m["n_in"], *m["hidden_layers"], m["n_out"]]
    layers: list[dict[str, Any]] = []
    for i in range(len(widths) - 1):
        layers.append({"op": "linear", "name": f"fc{i}", "in": widths[i], "out": widths[i + 1], "bias": m["use_bias"]})
        if i < len(widths) - 2 and ACTIVATIONS[m["activation"]] != "identity":
            layers.append({"op": ACTIVATIONS[m["activation"]]})
    slots = [
        {"param": f"{layer['name']}.{p}", "mode": "full"}
        for layer in layers
        if "name" in layer
        for p in (("weight", "bias") if m["use_bias"] else ("weight",))
    ]
    hypernet: dict[str, Any] = {"type": "mlp", "hidden": list(h["layers"]), "activation": ACTIVATIONS[h["activation"]]}
    if htype == "ChunkedHMLP":
        hypernet = {
            **hypernet,
            "type": "chunked_mlp",
            "chunk": {
                "size": h["chunk_size"],
                "emb_dim": h["chunk_emb_size"],
                "input_order": ["chunk_emb", "condition"],
            },
        }
    return {
        "hyperkit_spec": SPEC_VERSION,
        "condition": {"kind": "task_id", "num": h["num_cond_embs"], "dim": h["cond_in_size"]},
        "hypernet": hypernet,
        "target": {"input": [m["n_in"]], "layers": layers},
        "slots": slots,
        "provenance": {"source": f"hypnettorch {htype} + MLP", "config": json.dumps(config, sort_keys=True)},
    }


def from_state_dict(state: dict[str, Any], config: dict[str, Any], where: str = "state dict") -> Generator:
    """The generator of a hypnettorch hypernet state dict (numpy arrays) and its config."""
    from hyperkit.generator.spec import parse_spec

    doc = spec_document(config, where)
    try:
        spec = parse_spec(doc, where)
    except SpecError as e:
        raise BadInputError(f"{e.message} (built from the hypnettorch config)") from None
    if isinstance(state.get("state_dict"), dict):  # hypnettorch's save_checkpoint wraps it
        state = state["state_dict"]
    chunked = spec.hypernet_type == "chunked_mlp"
    inner = "_hnet." if chunked else ""
    num, n_layers = spec.condition_num, len(spec.hidden) + 1

    def internal(k: int, shape: tuple[int, ...], prefix: str = inner) -> np.ndarray:
        for key in (f"{prefix}_internal_params.{k}", f"_internal_params.{k}"):
            if key in state:
                arr = np.asarray(state[key])
                if tuple(arr.shape) != shape:
                    raise BadInputError(
                        f"{where}: hypnettorch tensor '{key}' has shape {list(arr.shape)}, the config "
                        f"implies {list(shape)} (does the config match the checkpoint?)"
                    )
                return arr
        raise BadInputError(
            f"{where}: hypnettorch tensor '{prefix}_internal_params.{k}' is missing "
            "(does the config match the checkpoint?)"
        )

    shapes = spec.tensor_shapes()
    tensors = {"hnet.cond_table": np.stack([internal(k, (spec.condition_dim,)) for k in range(num)])}
    if chunked:
        tensors["hnet.chunk_emb"] = internal(num + 2 * n_layers, shapes["hnet.chunk_emb"], "")
    for i in range(n_layers):
        tensors[f"hnet.layers.{i}.weight"] = internal(num + 2 * i, shapes[f"hnet.layers.{i}.weight"])
        tensors[f"hnet.layers.{i}.bias"] = internal(num + 2 * i + 1, shapes[f"hnet.layers.{i}.bias"])
        for alias, name in (
            (f"{inner}_layer_weight_tensors.{i}", "weight"),
            (f"{inner}_layer_bias_vectors.{i}", "bias"),
        ):
            if alias in state and not np.array_equal(np.asarray(state[alias]), tensors[f"hnet.layers.{i}.{name}"]):
                raise BadInputError(f"{where}: hypnettorch alias '{alias}' differs from its _internal_params tensor")
    return Generator.build(canonical_text(doc), tensors, where)


def import_file(path: str | os.PathLike[str], config: dict[str, Any]) -> Generator:
    """Read a hypnettorch ``.pt`` state dict safely (nothing in it runs) and import it."""
    from hyperkit.formats.torchfile import read_torch_file
    from hyperkit.paths import check_input

    p = check_input(path)
    try:
        obj = read_torch_file(p).obj
    except BadInputError as e:
        raise BadInputError(f"{p}: {e.message}", hint=e.hint) from None
    if not isinstance(obj, dict):
        raise BadInputError(f"{p}: expected a hypnettorch state dict, got a {type(obj).__name__}")
    return from_state_dict(obj, config, str(p))
