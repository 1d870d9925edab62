"""Every method on every backend and device (issue 14, item 7): tensors stay on the layer's device, and the
same seed gives the same topology on CPU and CUDA.

The CUDA cases skip where no GPU is present, so CI (CPU only) runs the CPU cases alone.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import evosparse
from evosparse.methods import METHODS, resolve_params
from support import counts_steps, saved_and_loaded

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

STEPS_PER_EPOCH, EPOCHS = 4, 2

#: Parameters that make each method act within the few steps trained here (the others update every epoch);
#: gmp starts sparse, so it runs on csr too.
PARAMS = {name: {"update_interval": 2} for name in METHODS if counts_steps(name)}
PARAMS["gmp"] = {**PARAMS["gmp"], "initial_density": 0.6}

#: (method, backend) for every registered method on every backend it supports with these parameters.
CASES = [
    (name, backend)
    for name, cls in sorted(METHODS.items())
    for backend in ("masked", "csr")
    if backend == "masked"
    or (cls.sparse and cls.supports_csr and not cls.starts_dense_with(resolve_params(cls, PARAMS.get(name, {}))))
]
CASE_IDS = [f"{name}-{backend}" for name, backend in CASES]


def build(method: str, backend: str, device: str):
    """A float64 MLP on ``device`` sparsified by ``method`` on ``backend``: (model, sparsifier).

    The model is drawn on the CPU and moved, so every device starts from the same numbers.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    model = model.double().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model,
        optimizer,
        method,
        density=0.3,
        backend=backend,
        seed=3,
        total_steps=STEPS_PER_EPOCH * EPOCHS,
        **PARAMS.get(method, {}),
    )
    return model, sparsifier


def train(model, sparsifier, epochs: range) -> None:
    """The given epochs of training on data drawn on the CPU (one fixed seed per epoch) and moved to the model."""
    device = next(model.parameters()).device
    for epoch in epochs:
        generator = torch.Generator().manual_seed(epoch)
        model.train()
        for _ in range(STEPS_PER_EPOCH):
            x = torch.randn(16, 12, generator=generator, dtype=torch.float64).to(device)
            y = torch.randint(0, 4, (16,), generator=generator).to(device)
            sparsifier.optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            sparsifier.optimizer.step()
            sparsifier.step()
        sparsifier.end_epoch()


def run(method: str, backend: str, device: str, seen: list[torch.Tensor] | None = None):
    """:func:`build`, then every epoch of training; ``seen`` (optional) collects what the layers' gradient
    hooks receive."""
    model, sparsifier = build(method, backend, device)
    if seen is not None:
        for layer in sparsifier.topology.layers:
            layer.register_gradient_hook(seen.append)
    train(model, sparsifier, range(EPOCHS))
    return model, sparsifier


def assert_on(device: torch.device, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        assert tensor.device == device, f"a tensor on {tensor.device}, the layer is on {device}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("method", "backend"), CASES, ids=CASE_IDS)
def test_every_method_trains_on_the_device_and_its_layers_hand_out_tensors_there(method, backend, device):
    seen: list[torch.Tensor] = []
    model, sparsifier = run(method, backend, device, seen)
    expected = next(model.parameters()).device
    assert expected.type == device
    assert all(p.device == expected for p in model.parameters())
    assert seen or not sparsifier.method.sparse  # the dense baseline installs no gradient hooks
    assert all(gradient.device == expected for gradient in seen)
    generator = torch.Generator().manual_seed(5)
    for layer in sparsifier.topology.layers:
        assert layer.device == expected
        positions = layer.active_positions()
        assert_on(expected, positions, layer.active_values(), layer.free_per_source())
        assert positions.dtype == torch.int64
        queries = torch.arange(layer.numel)  # accepted on the CPU, answered on the layer's device
        assert_on(expected, layer.contains(queries), layer.contains(queries.to(expected)))
        assert int(layer.contains(queries).sum()) == layer.active
        free = layer.numel - layer.active
        if free:
            drawn = layer.sample_inactive(min(3, free), generator)
            by_source = layer.sample_inactive_by_source(min(3, free), torch.ones(layer.shape[1]), generator)
            assert_on(expected, drawn, by_source)
            assert not layer.contains(drawn).any() and not layer.contains(by_source).any()
        if getattr(layer, "mask", None) is not None:
            assert_on(expected, layer.mask)
        layer.check(fixed_budget=False)
    if not sparsifier.method.sparse:
        return
    # One more recorded backward pass: the gradients a method reads live on the device too.
    for layer in sparsifier.topology.layers:
        layer.record_gradients(True)
    x = torch.randn(4, 12, dtype=torch.float64).to(expected)
    model(x).pow(2).sum().backward()
    for layer in sparsifier.topology.layers:
        assert_on(expected, layer.gradient_at(torch.arange(layer.numel)))
        for block_positions, gradients in layer.inactive_gradient_blocks(16):
            assert_on(expected, block_positions, gradients)


@CUDA
@pytest.mark.parametrize(("method", "backend"), CASES, ids=CASE_IDS)
def test_the_same_seed_gives_the_same_topology_on_cpu_and_cuda(method, backend):
    _, on_cpu = run(method, backend, "cpu")
    _, on_cuda = run(method, backend, "cuda")
    assert on_cpu.take_stats().connections_changed == on_cuda.take_stats().connections_changed
    for cpu_layer, cuda_layer in zip(on_cpu.topology.layers, on_cuda.topology.layers, strict=True):
        assert torch.equal(cuda_layer.active_positions().cpu(), cpu_layer.active_positions()), cpu_layer.name
        torch.testing.assert_close(cuda_layer.active_values().cpu(), cpu_layer.active_values(), rtol=1e-9, atol=1e-12)
    assert on_cpu.state_dict()["topology"].keys() == on_cuda.state_dict()["topology"].keys()
    assert torch.equal(on_cpu.generator.get_state(), on_cuda.generator.get_state())  # the same draws were made


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_a_run_saved_on_the_device_resumes_as_it_would_have_gone_on(device, backend):
    """RigL saved after its first epoch on the device, restored into a fresh run: both end with one topology."""
    model, sparsifier = build("rigl", backend, device)
    train(model, sparsifier, range(1))
    state = sparsifier.state_dict()
    for entry in state["topology"].values():
        assert entry["positions"].device.type == "cpu" and entry["positions"].dtype == torch.int64
    assert state["generator"].device.type == "cpu"
    resumed_model, resumed = build("rigl", backend, device)
    resumed_model.load_state_dict(saved_and_loaded(model.state_dict()))  # on csr: the structure, loaded first
    resumed.optimizer.load_state_dict(saved_and_loaded(sparsifier.optimizer.state_dict()))
    resumed.load_state_dict(saved_and_loaded(state))
    train(model, sparsifier, range(1, EPOCHS))
    train(resumed_model, resumed, range(1, EPOCHS))
    assert sparsifier.take_stats().connections_changed > 0
    for layer, other in zip(sparsifier.topology.layers, resumed.topology.layers, strict=True):
        assert other.device == layer.device and layer.device.type == device
        assert torch.equal(layer.active_positions(), other.active_positions())
        torch.testing.assert_close(other.active_values(), layer.active_values(), rtol=1e-12, atol=1e-14)
