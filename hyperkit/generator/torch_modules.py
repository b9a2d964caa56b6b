"""Spec-driven PyTorch modules: the hypernetwork H, the target f, and the generator H -> θ -> f.

:class:`GeneratorModule` is what users author and train: its ``state_dict()`` keys *are* the
canonical tensor names (``hnet.cond_table``, ``hnet.layers.0.weight``, ``base.fc.weight``,
``target.ln.weight``), so ``hyperkit.save(module, "g.safetensors")`` stores it as it is and
:meth:`GeneratorModule.from_generator` loads any container back. The target is an ordinary
module built from the spec (``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm``…) kept on the ``meta``
device: it never holds weights of its own, ``torch.func.functional_call`` runs it with the
generated ones, and ``torch.func.vmap`` runs it with a different θ per sample.

Example:
    >>> import torch
    >>> from hyperkit.generator.examples import tiny_generator
    >>> module = GeneratorModule.from_generator(tiny_generator())
    >>> x = torch.zeros(2, 2, 4, 4)
    >>> module(x, task_id=1).shape, module(x, task_id=torch.tensor([0, 3])).shape
    (torch.Size([2, 5]), torch.Size([2, 5]))
    >>> module.theta(task_id=torch.tensor([0, 3])).shape
    torch.Size([2, 168])
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from hyperkit.generator.model import Generator
from hyperkit.generator.spec import Spec, canonical_text, parse_spec

ACTIVATIONS: dict[str, Any] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,  # exact (erf), as the spec says
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "identity": nn.Identity,
}


class HyperNet(nn.Module):
    """H: condition vectors ``[B, dim]`` -> θ ``[B, total]`` (``mlp`` or ``chunked_mlp``)."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        if spec.condition_kind == "task_id":
            self.cond_table = nn.Parameter(torch.randn(spec.condition_num, spec.condition_dim))
        if spec.hypernet_type == "chunked_mlp":
            self.chunk_emb = nn.Parameter(torch.randn(spec.chunk_count, spec.chunk_emb_dim))
        widths = spec.hnet_widths
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.act = ACTIVATIONS[spec.activation]()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        h = z
        if spec.hypernet_type == "chunked_mlp":
            count = spec.chunk_count
            emb = self.chunk_emb.expand(z.shape[0], count, spec.chunk_emb_dim)
            zs = z[:, None, :].expand(z.shape[0], count, spec.condition_dim)
            h = torch.cat([emb, zs] if spec.input_order[0] == "chunk_emb" else [zs, emb], dim=-1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        # chunked: the chunks in order, the tail of the last one discarded
        return h.reshape(z.shape[0], -1)[:, : spec.total]


class Target(nn.Module):
    """f: the spec's layers as stock modules, parameters named ``NAME.weight`` / ``NAME.bias``."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.order: list[str] = []
        for i, layer in enumerate(spec.layers):
            f = layer.fields
            module: nn.Module
            if layer.op == "linear":
                module = nn.Linear(f["in"], f["out"], bias=f["bias"])
            elif layer.op == "conv2d":
                module = nn.Conv2d(f["in"], f["out"], f["kernel"], f["stride"], f["padding"], bias=f["bias"])
            elif layer.op == "layernorm":
                module = nn.LayerNorm(f["shape"], eps=f["eps"])
            elif layer.op == "flatten":
                module = nn.Flatten(1)
            else:
                module = ACTIVATIONS[layer.op]()
            name = layer.name or f"_{i}_{layer.op}"
            self.add_module(name, module)
            self.order.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)
        return x


def _holder(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """The (created on demand) submodule of ``root`` that holds ``dotted``'s last part."""
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module, leaf


class GeneratorModule(nn.Module):
    """H and f together: ``forward(x, task_id=...)`` or ``forward(x, condition=...)``.

    ``base.*`` tensors are buffers (frozen), ``target.*`` (static slots) are parameters.
    """

    def __init__(self, spec: Spec | dict[str, Any] | str) -> None:
        super().__init__()
        self.spec_text = (
            spec if isinstance(spec, str) else canonical_text(spec.document if isinstance(spec, Spec) else spec)
        )
        self.spec = parse_spec(self.spec_text)
        self.hnet = HyperNet(self.spec)
        self.base = nn.Module()
        self.target = nn.Module()
        for slot in self.spec.slots:
            if slot.mode in ("delta", "lora"):
                holder, leaf = _holder(self.base, slot.param)
                holder.register_buffer(leaf, torch.zeros(slot.shape))
            elif slot.mode == "static":
                holder, leaf = _holder(self.target, slot.param)
                holder.register_parameter(leaf, nn.Parameter(torch.ones(slot.shape)))
        # Kept out of the registered modules: its own (meta) parameters are never used or saved.
        self.__dict__["net"] = Target(self.spec).to("meta")

    @classmethod
    def from_generator(cls, gen: Generator) -> GeneratorModule:
        """A float32 module holding ``gen``'s tensors (cast from their stored dtype)."""
        module = cls(gen.spec_text)
        state = {n: torch.from_numpy(np.asarray(a, np.float32).copy()) for n, a in gen.tensors()}
        module.load_state_dict(state, strict=True)
        return module

    def to_hyperkit(self) -> Generator:
        """The in-memory model ``hyperkit.save`` writes (float32 numpy copies of every tensor)."""
        state = {n: t.detach().cpu().float().numpy().copy() for n, t in self.state_dict().items()}
        return Generator.build(self.spec_text, state)

    def condition_vectors(self, task_id: Any = None, condition: Any = None) -> torch.Tensor:
        """``z`` as ``[B, dim]``: table rows for task ids, or the given vectors."""
        if (task_id is None) == (condition is None):
            raise ValueError("pass exactly one of task_id and condition")
        if task_id is not None:
            if self.spec.condition_kind != "task_id":
                raise ValueError("this generator takes a continuous condition, not a task id")
            ids = torch.as_tensor(task_id, dtype=torch.long).reshape(-1)
            return self.hnet.cond_table[ids]
        if self.spec.condition_kind != "continuous":
            raise ValueError("this generator takes a task id, not a condition vector")
        return torch.as_tensor(condition, dtype=torch.float32).reshape(-1, self.spec.condition_dim)

    def theta(self, task_id: Any = None, condition: Any = None) -> torch.Tensor:
        """θ ``[total]`` for one condition (an int or a 1-D vector), ``[B, total]`` for a batch."""
        single = (task_id is not None and torch.as_tensor(task_id).dim() == 0) or (
            condition is not None and torch.as_tensor(condition).dim() == 1
        )
        theta = self.hnet(self.condition_vectors(task_id, condition))
        return theta[0] if single else theta

    def params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The target's effective parameters for one θ ``[total]``, by parameter name."""
        out: dict[str, torch.Tensor] = {}
        for slot in self.spec.slots:
            if slot.mode == "static":
                out[slot.param] = self.target.get_parameter(slot.param)
                continue
            value = theta[slot.offset : slot.offset + slot.numel]
            if slot.mode == "full":
                out[slot.param] = value.reshape(slot.shape)
            elif slot.mode == "delta":
                out[slot.param] = self.base.get_buffer(slot.param) + value.reshape(slot.shape)
            else:
                a_len = slot.rank * slot.fan_in
                a = value[:a_len].reshape(slot.rank, slot.fan_in)
                b = value[a_len:].reshape(slot.fan_out, slot.rank)
                delta = ((slot.alpha / slot.rank) * (b @ a)).reshape(slot.shape)
                out[slot.param] = self.base.get_buffer(slot.param) + delta
        return out

    def run_target(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """f(x; params) through ``torch.func.functional_call``."""
        net: nn.Module = self.__dict__["net"]
        return torch.func.functional_call(net, params, (x,))

    def forward(self, x: torch.Tensor, task_id: Any = None, condition: Any = None) -> torch.Tensor:
        theta = self.theta(task_id, condition)
        if theta.dim() == 1:
            return self.run_target(self.params(theta), x)
        if theta.shape[0] != x.shape[0]:
            raise ValueError(f"{theta.shape[0]} conditions for a batch of {x.shape[0]} inputs")

        def one(t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:  # per sample: its own θ
            return self.run_target(self.params(t), xi[None])[0]

        return torch.func.vmap(one)(theta, x)
