"""The spec-driven torch modules: one condition or a batch (vmap), authoring and saving, vs a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from generatorkit import condition_arg, generator, grid, numpy_reference

import hyperkit
from hyperkit.generator.examples import conv_document, mlp_document
from hyperkit.generator.torch_modules import GeneratorModule


@pytest.mark.parametrize(("name", "doc"), grid(), ids=[g[0] for g in grid()])
def test_module_matches_the_numpy_reference_of_the_spec(name, doc):
    gen = generator(doc, seed=3)
    module = GeneratorModule.from_generator(gen)
    x = np.random.default_rng(1).standard_normal((3, *gen.spec.input_shape)).astype(np.float32)
    cond = condition_arg(gen)
    kwargs = (
        {"task_id": int(cond)}
        if gen.spec.condition_kind == "task_id"
        else {"condition": [float(v) for v in cond.split(",")]}
    )
    with torch.no_grad():
        got = module(torch.from_numpy(x), **kwargs).numpy()
    assert np.abs(got - numpy_reference(gen, x, cond)).max() <= 1e-5


def test_a_batch_of_conditions_equals_one_at_a_time():
    module = GeneratorModule.from_generator(generator(conv_document()))
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([3, 0, 2, 0])
    with torch.no_grad():
        batched = module(x, task_id=ids)
        looped = torch.cat([module(x[i : i + 1], task_id=int(t)) for i, t in enumerate(ids)])
        thetas = module.theta(task_id=ids)
    assert torch.allclose(batched, looped, atol=1e-6)
    assert thetas.shape == (4, module.spec.total) and torch.equal(thetas[1], thetas[3])


def test_author_train_and_save(tmp_path):
    torch.manual_seed(0)
    module = GeneratorModule(mlp_document(condition="continuous", mode="lora"))
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    x, z = torch.randn(16, 6), torch.randn(16, 4)
    losses = []
    for _ in range(5):
        loss = module(x, condition=z).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(not b.requires_grad for b in module.buffers())  # bases stay frozen
    hyperkit.save(module, tmp_path / "trained.safetensors")
    back = GeneratorModule.from_generator(hyperkit.load(tmp_path / "trained.safetensors"))
    with torch.no_grad():
        assert torch.equal(back(x, condition=z), module(x, condition=z))


def test_wrong_condition_kind_is_a_clear_error():
    module = GeneratorModule.from_generator(generator(conv_document()))
    with pytest.raises(ValueError, match="takes a task id"):
        module.theta(condition=torch.zeros(8))
