"""The switcher's paper configuration: switchers first, Kaiming-initialised gates, no budget, and
BatchNorm running statistics frozen in switcher epochs."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import evosparse
from evosparse.methods.switcher_net import HEAD_INIT_SCALE, SwitcherNet

PAPER = {"first_phase": "switcher", "gate_init": "kaiming", "freeze_batchnorm": True}


def bn_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))


def paper_switcher(mode="connection", **params):
    """A small BatchNorm MLP under the paper's configuration. Seed 5: every layer starts with gates on in
    both modes (the paper's initialisation switches a whole layer off at some seeds, e.g. 0)."""
    model = bn_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    params = {**PAPER, "switcher_interval": 1, **params}
    sparsifier = evosparse.sparsify(model, opt, "switcher", mode=mode, seed=5, **params)
    return model, opt, sparsifier


def train_epoch(model, opt, sparsifier, seed=0, steps=3):
    """Training steps of one epoch (the caller ends it: the masks then follow the gates)."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 20, generator=generator)
        y = torch.randint(0, 5, (16,), generator=generator)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sparsifier.step()


def statistics(model):
    norm = model[1]
    return [norm.running_mean.clone(), norm.running_var.clone(), norm.num_batches_tracked.clone()]


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_kaiming_gate_init_is_the_plain_kaiming_output_layer(mode):
    one = SwitcherNet(300, 784, mode, generator=torch.Generator().manual_seed(3))
    kaiming = SwitcherNet(300, 784, mode, gate_init="kaiming", generator=torch.Generator().manual_seed(3))
    assert torch.allclose(kaiming.head.weight * HEAD_INIT_SCALE, one.head.weight)
    assert torch.equal(kaiming.head.bias, torch.zeros(1)) and torch.equal(one.head.bias, torch.ones(1))
    gates = [net(torch.randn(300, 784, generator=torch.Generator().manual_seed(0))) for net in (one, kaiming)]
    assert (gates[0] - 1).abs().max() < 0.5  # ours: a dense-like start
    assert not torch.allclose(gates[1], torch.ones_like(gates[1]), atol=0.5)  # the paper's: anywhere


def test_the_kaiming_output_layers_are_kaiming_distributed():
    nets = [
        SwitcherNet(10, 12, channels=64, gate_init="kaiming", generator=torch.Generator().manual_seed(seed))
        for seed in range(20)
    ]
    heads = torch.cat([net.head.weight.flatten() for net in nets])
    assert heads.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    assert abs(heads.mean().item()) < 0.03


@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_the_paper_configuration_trains_the_switchers_first_without_a_budget(mode):
    model, opt, sparsifier = paper_switcher(mode)
    method = sparsifier.method
    assert method.budgets == [None, None]
    assert all(torch.equal(net.head.bias, torch.zeros(1)) for net in method.switchers)
    assert all(0 < int((method.gate(slot) > 0).sum()) for slot in range(2))
    for epoch, trained in enumerate(["switchers", "task", "switchers"]):
        assert method.in_switcher_phase() == (trained == "switchers")
        params = [p.detach().clone() for p in model.parameters()]
        switchers = [p.detach().clone() for p in method.switchers.parameters()]
        train_epoch(model, opt, sparsifier, seed=epoch)
        task_moved = any(not torch.equal(a, b) for a, b in zip(params, model.parameters()))
        switchers_moved = any(not torch.equal(a, b) for a, b in zip(switchers, method.switchers.parameters()))
        assert (task_moved, switchers_moved) == (trained == "task", trained == "switchers")
        sparsifier.end_epoch()


@pytest.mark.parametrize("freeze", [True, False])
def test_batchnorm_statistics_stay_frozen_in_switcher_epochs_only(freeze):
    model, opt, sparsifier = paper_switcher(freeze_batchnorm=freeze)
    before = statistics(model)
    train_epoch(model, opt, sparsifier)  # a switcher epoch
    after = statistics(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after)) == freeze
    sparsifier.end_epoch()
    train_epoch(model, opt, sparsifier, seed=1)  # a task epoch updates them either way
    assert all(not torch.equal(a, b) for a, b in zip(after, statistics(model)))


def test_frozen_statistics_still_normalise_with_the_batch():
    model, _, sparsifier = paper_switcher()
    model.train()
    x = torch.randn(32, 20) * 5 + 3
    hidden = model[1](model[0](x))
    assert torch.allclose(hidden.mean(0), model[1].bias, atol=1e-4)  # batch statistics, not running ones
    assert sparsifier.method.in_switcher_phase()
