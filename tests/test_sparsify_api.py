"""The Python API a researcher drops into their own loop (the README example)."""

import pytest
import torch
from torch import nn

import evosparse
from evosparse.errors import UsageError
from support import digits_accuracies


def train_digits(method: str, epochs: int = 6, **kwargs) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return digits_accuracies(model, method, epochs, lr=0.02, **kwargs)[0]


@pytest.mark.parametrize("method", ["set", "static", "dense"])
def test_every_foundation_method_learns_digits(method):
    accuracies = train_digits(method, density=0.1)
    assert accuracies[0] < accuracies[-1] or accuracies[0] > 0.9
    assert accuracies[-1] > 0.9


def test_state_dict_restores_masks_counters_and_growth_generator():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    s = evosparse.sparsify(model, optimizer, "set", density=0.4, seed=1)
    s.end_epoch()
    state = s.state_dict()
    clone = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    clone.load_state_dict(model.state_dict())
    restored = evosparse.sparsify(clone, torch.optim.SGD(clone.parameters(), lr=0.1), "set", density=0.4, seed=99)
    restored.load_state_dict(state)
    clone.load_state_dict(model.state_dict())
    assert restored.epoch == 1 and restored.density() == s.density()
    s.method.update()
    restored.method.update()
    for a, b in zip(s.topology.layers, restored.topology.layers):
        assert torch.equal(a.mask, b.mask), "the same generator state must grow the same connections"


def test_api_refuses_bad_arguments_in_one_line():
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, message in [
        ({"method": "nope", "density": 0.1}, "unknown method"),
        ({"method": "set"}, "needs a density or an epsilon"),
        ({"method": "set", "density": 2.0}, "density must be in"),
        ({"method": "set", "density": 0.5, "zeta": "lots"}, "expects float"),
        ({"method": "set", "density": 0.5, "zeta": 1.5}, "must be ≤ 1.0"),
        ({"method": "set", "density": 0.5, "speed": 3}, "has no parameter 'speed'"),
        ({"method": "set", "density": 0.5, "update_until": 0.5}, "needs total_steps"),
        ({"method": "set", "density": 0.5, "init": "magic"}, "unknown init"),
    ]:
        with pytest.raises(UsageError, match=message) as info:
            evosparse.sparsify(model, optimizer, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="no linear or convolution weight"):
        evosparse.sparsify(nn.Sequential(nn.ReLU()), None, "set", density=0.5)


def test_a_refused_sparsify_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(UsageError):
        evosparse.sparsify(model, None, "set", density=0.2, update_until=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_update_pending_announces_exactly_the_steps_that_update():
    model = nn.Sequential(nn.Linear(6, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    s = evosparse.sparsify(model, optimizer, "set", density=0.5, update_unit="step", update_interval=3, total_steps=12)
    announced, updated = [], []
    for _ in range(12):
        announced.append(s.update_pending())
        before = s.take_stats().updates
        model(torch.randn(2, 6)).sum().backward()
        optimizer.step()
        s.step()
        updated.append(s.take_stats().updates + before > 0)
    assert announced == updated == [False, False, True] * 3 + [False, False, False]
