"""Shared test helpers: A1111-style hypernetworks built with real torch modules, and a CLI runner.

The torch modules here are the *independent reference*: they are built the way A1111's
``HypernetworkModule`` builds them (Linear, activation, LayerNorm, Dropout, in that order), not
with hyperkit's own layout code.
"""

from __future__ import annotations

import collections
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import settings

from hyperkit.cli import cli

# `make test` (CI) runs every property test derandomized and without the example database, so a
# run's outcome depends only on the code; `make fuzz` selects the "fuzz" profile: random draws,
# many more examples (HYPERKIT_FUZZ_SCALE / HYPERKIT_PROPERTY_SCALE), failures saved to replay.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ACT = {
    "relu": torch.nn.ReLU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "prelu": torch.nn.PReLU,
    "elu": torch.nn.ELU,
    "leakyrelu": torch.nn.LeakyReLU,
    "sigmoid": torch.nn.Sigmoid,
}


def torch_module(
    dim: int,
    layer_structure: list[float],
    activation: str | None = None,
    layer_norm: bool = False,
    dropout: list[float] | None = None,
    activate_output: bool = False,
) -> torch.nn.Sequential:
    """A1111's Sequential for one width, built from torch.nn directly."""
    n = len(layer_structure)
    dropout = dropout or [0] * n
    layers: list[torch.nn.Module] = []
    for i in range(n - 1):
        layers.append(torch.nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
        if activation not in (None, "linear") and (i < n - 2 or activate_output):
            layers.append(ACT[activation]())
        if layer_norm:
            layers.append(torch.nn.LayerNorm(int(dim * layer_structure[i + 1])))
        if dropout[i + 1] > 0:
            layers.append(torch.nn.Dropout(p=dropout[i + 1]))
    return torch.nn.Sequential(*layers).eval()


def state(seq: torch.nn.Module) -> collections.OrderedDict[str, torch.Tensor]:
    """The module's state dict with A1111's ``linear.`` prefix (and torch's ``_metadata``)."""
    return torch.nn.ModuleDict({"linear": seq}).state_dict()


def a1111_dict(
    dims: tuple[int, ...] = (8, 16),
    layer_structure: list[float] | None = None,
    activation: str = "linear",
    layer_norm: bool = False,
    dropout: list[float] | None = None,
    activate_output: bool = False,
    seed: int = 0,
    **extra: Any,
) -> dict[Any, Any]:
    """What A1111's ``Hypernetwork.save`` passes to ``torch.save``: dims, then the 13 keys."""
    torch.manual_seed(seed)
    ls = layer_structure or [1.0, 2.0, 1.0]
    ds = dropout or [0] * len(ls)
    obj: dict[Any, Any] = {}
    for d in dims:
        obj[d] = tuple(state(torch_module(d, ls, activation, layer_norm, ds, activate_output)) for _ in range(2))
    obj.update(
        step=1,
        name="test",
        layer_structure=ls,
        activation_func=activation,
        is_layer_norm=layer_norm,
        weight_initialization="Normal",
        sd_checkpoint=None,
        sd_checkpoint_name=None,
        activate_output=activate_output,
        use_dropout=any(ds),
        dropout_structure=ds,
        last_layer_dropout=False,
        optional_info=None,
    )
    obj.update(extra)
    return obj


def save_pt(obj: Any, path: Path) -> Path:
    """``torch.save`` as a user's tools would."""
    torch.save(obj, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every name in a folder, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


class Run:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns exit code, stdout and stderr separately."""

    def _run(*args: str) -> Run:
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    return _run
