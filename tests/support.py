"""Helpers shared by several test modules (small models, data, checkpoint round trips, resume checks)."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from evosparse.engine import checkpoint, loop


def small_conv() -> nn.Sequential:
    """Two 3×3 convolutions and a linear head, for 1×6×6 inputs and 5 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )  # fmt: skip


def batches(count, input_shape=(20,), classes=5, seed=0):
    """``count`` random (inputs, labels) batches of 16."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, *input_shape, generator=generator), torch.randint(0, classes, (16,), generator=generator))
        for _ in range(count)
    ]


def train_steps(model, sparsifier, data):
    """One optimizer step and ``sparsifier.step()`` per batch."""
    optimizer = sparsifier.optimizer
    for x, y in data:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()


def saved_masks(topology_state) -> dict[str, torch.Tensor]:
    """The boolean masks (name → mask) of a saved topology (``Topology.state_dict()``: shape and positions)."""
    masks = {}
    for name, entry in topology_state.items():
        mask = torch.zeros(torch.Size(entry["shape"]).numel(), dtype=torch.bool)
        mask[entry["positions"]] = True
        masks[name] = mask.view(entry["shape"])
    return masks


def saved_and_loaded(state):
    """``state`` after a round trip through bytes, loaded as checkpoints are (``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_resume_is_exact(fresh: Callable[[int], tuple], data: list, cut: int):
    """Train ``fresh(0)`` on ``data``; a ``fresh(1)`` restored after batch ``cut`` must end identical."""
    return resumed_schedule_matches(fresh, list(data), cut)


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def killed_then_resumed(make_config: Callable[[], object], monkeypatch, kill_after_epoch: int) -> dict:
    """Run ``make_config()`` until the checkpoint of ``kill_after_epoch`` is written, then resume it."""
    real_save = checkpoint.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == kill_after_epoch:
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        loop.train(make_config(), progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    return loop.train(make_config(), resume=True, progress=False)


@pytest.fixture
def no_network(monkeypatch):
    """Fail any download that is not a local file, so a broken test cannot reach the internet."""
    real = urllib.request.urlopen

    def local_only(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        assert url.startswith("file:"), f"test tried to download {url}"
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


def digits_accuracies(model, method: str, epochs: int, lr: float, **sparsify_kwargs):
    """Train ``model`` on digits in a plain user loop with ``evosparse.sparsify``.

    Returns the test accuracy after each epoch (evaluated before the epoch's topology update) and the
    sparsifier.
    """
    import evosparse
    from evosparse.data import load_dataset

    data = load_dataset("digits")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, method=method, **sparsify_kwargs)
    generator = torch.Generator().manual_seed(0)
    accuracies = []
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(data.x_train), generator=generator).split(32):
            loss = F.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sparsifier.step()
        model.eval()
        with torch.no_grad():
            accuracies.append((model(data.x_test).argmax(1) == data.y_test).float().mean().item())
        sparsifier.end_epoch()
    return accuracies, sparsifier


def assert_resume_is_exact_over_epochs(fresh: Callable[[int], tuple], epochs: list[list], cut: tuple[int, int]):
    """Like :func:`assert_resume_is_exact`, with ``sparsifier.end_epoch()`` after each epoch's batches.

    ``fresh(1)`` is restored after batch ``cut[1]`` of epoch ``cut[0]`` (0-based; ``cut[1] == 0`` is
    right after the previous epoch's ``end_epoch``). Returns the uninterrupted run's sparsifier (its
    stats cover the run).
    """
    schedule: list = [item for batches_ in epochs for item in [*batches_, None]]  # None: end of an epoch
    return resumed_schedule_matches(fresh, schedule, sum(len(b) + 1 for b in epochs[: cut[0]]) + cut[1])


def resumed_schedule_matches(fresh: Callable[[int], tuple], schedule: list, at: int):
    """Run ``schedule`` (batches, and None for ``end_epoch()``) on ``fresh(0)``; restore ``fresh(1)`` from it
    after ``at`` items and run the rest on both: topology, weights and optimizer state must end identical.

    Returns the uninterrupted run's sparsifier.
    """

    def run(model, sparsifier, items):
        for item in items:
            if item is None:
                sparsifier.end_epoch()
            else:
                train_steps(model, sparsifier, [item])

    model, sparsifier = fresh(0)
    run(model, sparsifier, schedule[:at])
    resumed_model, resumed = fresh(1)
    resumed_model.load_state_dict(saved_and_loaded(model.state_dict()))
    resumed.optimizer.load_state_dict(saved_and_loaded(sparsifier.optimizer.state_dict()))
    resumed.load_state_dict(saved_and_loaded(sparsifier.state_dict()))
    run(model, sparsifier, schedule[at:])
    run(resumed_model, resumed, schedule[at:])
    for layer, other in zip(sparsifier.topology.layers, resumed.topology.layers):
        assert torch.equal(layer.active_positions(), other.active_positions()), layer.name
        assert torch.equal(layer.active_values(), other.active_values()), layer.name
    assert_same_state(model.state_dict(), resumed_model.state_dict(), "model")
    assert_same_state(sparsifier.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    return sparsifier


def assert_same_state(one, other, where: str = "state") -> None:
    """``one`` and ``other`` (nested dicts, lists and tensors, as in a state_dict) are exactly equal."""
    if isinstance(one, dict):
        assert isinstance(other, dict) and list(one) == list(other), where
        for key in one:
            assert_same_state(one[key], other[key], f"{where}.{key}")
    elif isinstance(one, (list, tuple)):
        assert isinstance(other, (list, tuple)) and len(one) == len(other), where
        for index, (a, b) in enumerate(zip(one, other)):
            assert_same_state(a, b, f"{where}[{index}]")
    elif isinstance(one, torch.Tensor):
        assert isinstance(other, torch.Tensor) and one.dtype == other.dtype, where
        assert torch.equal(one, other), where
    else:
        assert one == other, where


#: The devices device-parametrised tests run on: the CPU always, CUDA where a GPU is present.
DEVICES = (
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
)


def run_on_device(method: str, device: str, backend: str, data: list, sizes=(20, 16, 12, 5), **kwargs):
    """Sparsify a seeded ``small_mlp(sizes)`` moved to ``device`` with ``method`` and train it on ``data``.

    Returns the initial active positions of every layer (on the CPU) and the sparsifier.
    """
    import evosparse
    from conftest import small_mlp

    torch.manual_seed(0)
    model = small_mlp(sizes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, method, backend=backend, **kwargs)
    initial = [layer.active_positions().cpu() for layer in sparsifier.topology.layers]
    train_steps(model, sparsifier, [(x.to(device), y.to(device)) for x, y in data])
    return initial, sparsifier


def pruned_on_digits(tmp_path, method: str, density: float, params: list[str]) -> tuple[dict, list[float]]:
    """Train ``method`` (a method that prunes towards ``density``) for 3 epochs of digits with a 64-32 MLP;
    check that it learns and ends exactly at its budget. Returns the result and the density after each epoch,
    which must never rise."""
    from evosparse.engine.config import build_config

    config = build_config(
        None, {"method": method, "epochs": 3, "hidden": "64,32", "density": density, "out": str(tmp_path)}, params
    )
    result = loop.train(config, progress=False)
    assert result["final_test_acc"] > 0.8  # chance is 0.1
    assert result["params_active"] == round(density * result["params_dense"])
    densities = [epoch["density"] for epoch in result["epochs"]]
    assert densities == sorted(densities, reverse=True)
    return result, densities


def counts_steps(method: str) -> bool:
    """Whether ``method`` schedules its updates in optimizer steps only (RigL, GMP and their kin): a short test
    run must shorten its ``update_interval`` to see it act."""
    from evosparse.methods import METHODS

    unit = next((p for p in METHODS[method].params if p.name == "update_unit"), None)
    return unit is not None and unit.choices == ("step",)


def sparse_and_dense_passes(sparse_linear: Callable, dense_weight: Callable, x0, values0, bias0, grad_y) -> tuple:
    """Forward and backward through ``sparse_linear(x, values, bias)`` and through ``F.linear`` on
    ``dense_weight(values)``, each from fresh copies of the same leaves.

    Returns ((y, grad_x, grad_values, grad_bias) of the sparse layer, the same of the dense reference).
    """
    results = []
    for dense in (False, True):
        x = x0.clone().requires_grad_()
        values = values0.clone().requires_grad_()
        bias = None if bias0 is None else bias0.clone().requires_grad_()
        y = F.linear(x, dense_weight(values), bias) if dense else sparse_linear(x, values, bias)
        y.backward(grad_y)
        results.append((y.detach(), x.grad, values.grad, None if bias is None else bias.grad))
    return tuple(results)


def assert_all_close(got, expected, **tolerance) -> None:
    """Element-wise closeness of two equally long tuples of tensors or Nones."""
    for g, e in zip(got, expected, strict=True):
        if e is None:
            assert g is None
        else:
            assert g.shape == e.shape
            torch.testing.assert_close(g, e, **tolerance)


def assert_learns_digits_at_a_constant_density(tmp_path, method: str) -> None:
    """Three epochs of ``method`` (updating every 10 steps) on digits through the engine: it learns, evolves
    and holds its density."""
    from evosparse.engine.config import build_config

    options = {"method": method, "epochs": 3, "hidden": "64,32", "density": 0.2, "out": str(tmp_path)}
    result = loop.train(build_config(None, options, ["update_interval=10"]), progress=False)
    assert result["final_test_acc"] > 0.8  # chance is 0.1
    assert sum(epoch["connections_changed"] for epoch in result["epochs"]) > 0
    assert {epoch["density"] for epoch in result["epochs"]} == {result["density_final"]}
