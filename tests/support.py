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
    optimizer = sparsifier.topology.optimizer
    for x, y in data:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()


def saved_and_loaded(state):
    """``state`` after a round trip through bytes, loaded as checkpoints are (``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_resume_is_exact(fresh: Callable[[int], tuple], data: list, cut: int) -> None:
    """Train ``fresh(0)`` on ``data``; a ``fresh(1)`` restored at batch ``cut`` must end identical."""
    model, sparsifier = fresh(0)
    train_steps(model, sparsifier, data[:cut])
    resumed_model, resumed = fresh(1)
    resumed_model.load_state_dict(saved_and_loaded(model.state_dict()))
    resumed.topology.optimizer.load_state_dict(saved_and_loaded(sparsifier.topology.optimizer.state_dict()))
    resumed.load_state_dict(saved_and_loaded(sparsifier.state_dict()))
    train_steps(model, sparsifier, data[cut:])
    train_steps(resumed_model, resumed, data[cut:])
    for layer, other in zip(sparsifier.topology.layers, resumed.topology.layers):
        assert torch.equal(layer.mask, other.mask)
        assert torch.equal(layer.weight, other.weight)


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
