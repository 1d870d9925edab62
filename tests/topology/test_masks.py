import pytest
import torch
from torch import nn

from evosparse.errors import UsageError
from evosparse.topology.masks import Topology, find_sparse_parameters, random_mask


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.layer_norm = nn.LayerNorm(8)
        self.rnn = nn.LSTM(8, 6)
        self.head = nn.Linear(6, 4)


def names(found):
    return [name for name, _, _ in found]


def test_default_selection_is_linear_and_conv_weights_only():
    assert names(find_sparse_parameters(Mixed())) == ["conv.weight", "head.weight"]


def test_patterns_add_recurrent_weights():
    found = find_sparse_parameters(Mixed(), include=["rnn.weight_*"])
    assert names(found) == ["conv.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"]


@pytest.mark.parametrize("pattern", ["*.bias*", "norm.*", "layer_norm.weight", "conv.bias"])
def test_patterns_never_select_norms_or_biases(pattern):
    with pytest.raises(UsageError, match="matches no sparsifiable"):
        find_sparse_parameters(Mixed(), include=[pattern])


def test_exclude_removes_a_layer_and_unmatched_include_is_an_error():
    assert names(find_sparse_parameters(Mixed(), exclude=["head.*"])) == ["conv.weight"]
    with pytest.raises(UsageError, match="matches no sparsifiable"):
        find_sparse_parameters(Mixed(), include=["norm.weight"])


@pytest.mark.parametrize(
    "shape, count", [((10, 20), 10), ((10, 20), 37), ((8, 3, 3, 3), 50), ((5, 4), 20), ((6, 7), 3)]
)
def test_random_mask_has_exact_count_and_covers_rows(shape, count):
    mask = random_mask(shape, count, torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == shape and int(mask.sum()) == count
    if count >= shape[0]:
        assert mask.flatten(1).any(dim=1).all()


def build(model, budgets, optimizer=None):
    return Topology.build(find_sparse_parameters(model), budgets, torch.Generator().manual_seed(0), optimizer=optimizer)


def test_rewire_refuses_inconsistent_sets(mlp):
    topology = build(mlp, [40, 30, 20])
    mask = topology.layers[0].mask.view(-1)
    active, inactive = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    with pytest.raises(AssertionError, match="pruning an inactive"):
        topology.rewire(0, inactive[:1], inactive[1:2])
    with pytest.raises(AssertionError, match="growing an active"):
        topology.rewire(0, active[:1], active[1:2])
    with pytest.raises(AssertionError, match="duplicate"):
        topology.rewire(0, active[:1], torch.cat([inactive[:1], inactive[:1]]))


def test_a_connection_pruned_now_cannot_be_regrown_in_the_same_rewire(mlp):
    topology = build(mlp, [40, 30, 20])
    active = topology.layers[0].mask.view(-1).nonzero().squeeze(1)
    with pytest.raises(AssertionError, match="growing an active"):
        topology.rewire(0, active[:2], active[:2])


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=0.01),
        lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
    ],
)
def test_rewire_zeroes_every_parameter_shaped_optimizer_state(mlp, make_optimizer):
    optimizer = make_optimizer(mlp.parameters())
    topology = build(mlp, [40, 30, 20], optimizer)
    mlp(torch.randn(4, 20)).sum().backward()
    optimizer.step()
    weight = topology.layers[0].weight
    tensors = [v for v in optimizer.state[weight].values() if torch.is_tensor(v) and v.shape == weight.shape]
    assert tensors, "the optimizer keeps per-weight state"
    for t in tensors:
        t.fill_(1.0)
    mask = topology.layers[0].mask.view(-1)
    prune, grow = mask.nonzero().squeeze(1)[:3], (~mask).nonzero().squeeze(1)[:3]
    assert topology.rewire(0, prune, grow, torch.tensor([0.5, -0.5, 0.25])) == 6
    for t in tensors:
        flat = t.view(-1)
        assert not flat[prune].any() and not flat[grow].any()
        assert flat.sum() == flat.numel() - 6
    assert weight.view(-1)[grow].tolist() == [0.5, -0.5, 0.25]
    assert not weight.view(-1)[prune].any()


def test_masks_live_on_the_parameter_device_and_state_round_trips(mlp):
    topology = build(mlp, [40, 30, 20])
    for layer in topology.layers:
        assert layer.mask.device == layer.weight.device
    saved = topology.state_dict()
    other = build(mlp, [40, 30, 20])
    other.load_state_dict(saved)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(topology.layers, other.layers))


def test_loading_masks_that_do_not_fit_is_refused(mlp):
    topology = build(mlp, [40, 30, 20])
    saved = topology.state_dict()
    wrong_shape = dict(saved, **{"2.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(UsageError, match="has shape"):
        topology.load_state_dict(wrong_shape)
    missing = {k: v for k, v in saved.items() if k != "0.weight"}
    with pytest.raises(UsageError, match="do not match"):
        topology.load_state_dict(missing)
