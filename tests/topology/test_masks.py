import pytest
import torch
from torch import nn

import evosparse
from conftest import small_mlp
from evosparse.errors import InvariantError, UsageError
from evosparse.topology.masks import build_masked_topology, find_sparse_parameters, random_mask, sparse_matrices


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


def test_a_layer_tied_to_an_embedding_stays_dense():
    class TiedLanguageModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20, 8)
            self.hidden = nn.Linear(8, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.embedding.weight

    assert names(find_sparse_parameters(TiedLanguageModel())) == ["hidden.weight"]
    with pytest.raises(UsageError, match="matches no sparsifiable"):
        find_sparse_parameters(TiedLanguageModel(), include=["head.weight"])


@pytest.mark.parametrize(
    "shape, count", [((10, 20), 10), ((10, 20), 37), ((8, 3, 3, 3), 50), ((5, 4), 20), ((6, 7), 3)]
)
def test_random_mask_has_exact_count_and_covers_rows(shape, count):
    mask = random_mask(shape, count, torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == shape and int(mask.sum()) == count
    if count >= shape[0]:
        assert mask.flatten(1).any(dim=1).all()


@pytest.mark.parametrize("shape, count", [((20, 10), 10), ((20, 10), 37), ((3, 8, 3), 9)])
def test_random_mask_covers_the_output_units_of_the_given_axis(shape, count):
    mask = random_mask(shape, count, torch.Generator().manual_seed(1), output_axis=1)
    assert mask.shape == shape and mask.is_contiguous() and int(mask.sum()) == count
    assert mask.movedim(1, 0).flatten(1).any(dim=1).all()


def test_largest_mask_along_an_axis_is_the_transposed_mask_of_the_transposed_weight():
    from evosparse.topology.masks import largest_mask

    weight = torch.randn(9, 4, generator=torch.Generator().manual_seed(2))
    for count in (3, 4, 11):
        assert torch.equal(largest_mask(weight, count, output_axis=1), largest_mask(weight.T, count).T)


def build(model, budgets, optimizer=None, seed=0):
    matrices = sparse_matrices(model, find_sparse_parameters(model))
    return build_masked_topology(matrices, budgets, torch.Generator().manual_seed(seed), optimizer)


def test_rewire_refuses_inconsistent_sets(mlp):
    topology = build(mlp, [40, 30, 20])
    layer = topology.layers[0]
    mask = layer.mask.view(-1)
    before = mask.clone()
    active, inactive = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    with pytest.raises(InvariantError, match="pruning an inactive"):
        layer.rewire(inactive[:1], inactive[1:2])
    with pytest.raises(InvariantError, match="growing an active"):
        layer.rewire(active[:1], active[1:2])
    with pytest.raises(InvariantError, match="duplicate"):
        layer.rewire(active[:1], torch.cat([inactive[:1], inactive[:1]]))
    assert torch.equal(mask, before)


def test_a_connection_pruned_now_cannot_be_regrown_in_the_same_rewire(mlp):
    topology = build(mlp, [40, 30, 20])
    active = topology.layers[0].mask.view(-1).nonzero().squeeze(1)
    with pytest.raises(InvariantError, match="growing an active"):
        topology.layers[0].rewire(active[:2], active[:2])
    assert torch.equal(topology.layers[0].active_positions(), active)


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
    assert topology.layers[0].rewire(prune, grow, torch.tensor([0.5, -0.5, 0.25])) == 6
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
    assert list(saved) == ["0.weight", "2.weight", "4.weight"]
    for layer in topology.layers:
        entry = saved[layer.name]
        assert entry["shape"] == list(layer.shape)
        assert entry["positions"].dtype == torch.int64 and entry["positions"].device.type == "cpu"
        assert torch.equal(entry["positions"], layer.mask.reshape(-1).nonzero().squeeze(1))
    other = build(small_mlp(), [40, 30, 20], seed=1)
    other.layers[0].budget = 0  # loading restores the budgets too
    assert not all(torch.equal(a.mask, b.mask) for a, b in zip(topology.layers, other.layers))
    other.load_state_dict(saved)
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(topology.layers, other.layers))
    assert [layer.budget for layer in other.layers] == [40, 30, 20]
    other.apply_masks()
    other.check()


def test_loading_masks_that_do_not_fit_is_refused(mlp):
    topology = build(mlp, [40, 30, 20])
    saved = topology.state_dict()
    before = [layer.mask.clone() for layer in topology.layers]
    positions = saved["2.weight"]["positions"]
    wrong = {
        "has shape": {"shape": [3, 3], "positions": torch.arange(4)},
        "no int64 positions": {"shape": [12, 16], "positions": positions.to(torch.int32)},
        "holds no int64 positions": torch.ones(12, 16, dtype=torch.bool),  # a mask, as before format version 2
        "not sorted, distinct and inside": {"shape": [12, 16], "positions": positions.flip(0)},
        "inside the weight": {"shape": [12, 16], "positions": torch.tensor([0, 12 * 16])},
    }
    for message, entry in wrong.items():
        with pytest.raises(UsageError, match=message) as info:
            topology.load_state_dict(dict(saved, **{"2.weight": entry}))
        assert "\n" not in str(info.value)
    missing = {k: v for k, v in saved.items() if k != "0.weight"}
    with pytest.raises(UsageError, match="does not match the model's sparse layers .first mismatch: 0.weight"):
        topology.load_state_dict(missing)
    with pytest.raises(UsageError, match="does not match"):
        topology.load_state_dict(dict(saved, extra={"shape": [1, 1], "positions": torch.arange(1)}))
    with pytest.raises(UsageError, match="not a mapping"):
        topology.load_state_dict([saved])
    assert all(torch.equal(a, b.mask) for a, b in zip(before, topology.layers))


def test_largest_mask_keeps_each_rows_largest_then_the_largest_of_the_rest_brute_force():
    from evosparse.topology.masks import largest_mask

    generator = torch.Generator().manual_seed(3)
    for count in (2, 7, 12, 30):
        weight = torch.randn(6, 5, generator=generator)
        weight[0] = weight[0].abs() * 1e-3  # a row of tiny weights still keeps its largest input
        mask = largest_mask(weight, count)
        assert int(mask.sum()) == count
        magnitude = weight.abs()
        if count >= weight.shape[0]:
            assert all(mask[row, int(magnitude[row].argmax())] for row in range(weight.shape[0]))
            kept_first = {(row, int(magnitude[row].argmax())) for row in range(weight.shape[0])}
        else:
            kept_first = set()
        rest = sorted(
            ((float(magnitude[r, c]), r, c) for r in range(6) for c in range(5) if (r, c) not in kept_first),
            key=lambda item: -item[0],
        )
        expected = kept_first | {(r, c) for _, r, c in rest[: count - len(kept_first)]}
        assert {tuple(map(int, p)) for p in mask.nonzero()} == expected


class TinyLanguageModel(nn.Module):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        if tied:
            self.head.weight = self.embedding.weight

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embedding(codes))))


@pytest.mark.parametrize("tied", [False, True])
def test_an_embedding_is_sparse_only_when_named_on_itself(tied):
    expected = ["embedding.weight", "hidden.weight"] + ([] if tied else ["head.weight"])
    assert names(find_sparse_parameters(TinyLanguageModel(tied), include=["embedding.weight"])) == expected
    assert "embedding.weight" not in names(find_sparse_parameters(TinyLanguageModel(tied)))
    assert "embedding.weight" not in names(find_sparse_parameters(TinyLanguageModel(tied), include=["*.weight"]))


def test_a_sparse_gradient_embedding_is_refused_in_one_line():
    model = TinyLanguageModel()
    model.embedding.sparse = True
    with pytest.raises(UsageError, match=r"embedding.weight: an nn.Embedding\(sparse=True\) cannot be kept sparse"):
        find_sparse_parameters(model, include=["embedding.weight"])


def test_a_sparse_embedding_keeps_its_values_and_its_mask_while_training():
    torch.manual_seed(0)
    model = TinyLanguageModel()
    before = model.embedding.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.3, include=["embedding.weight"])
    embedding = sparsifier.topology.layers[0]
    assert embedding.output_axis == 1 and embedding.fan_out_axis_size == 8
    assert bool(embedding.mask.any(dim=0).all())  # every feature starts with a token (the cover is per output)
    kept = embedding.mask
    assert torch.equal(model.embedding.weight.detach()[kept], before[kept])  # the model's own init, not re-drawn
    codes = torch.randint(0, 20, (16, 6), generator=torch.Generator().manual_seed(1))
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(codes[:, :-1]).reshape(-1, 20), codes[:, 1:].reshape(-1)).backward()
        optimizer.step()
        sparsifier.step()
    sparsifier.topology.check()
    assert torch.equal(model.embedding.weight.detach() != 0, embedding.mask)


def test_the_weight_multiplier_follows_every_change_of_the_mask(mlp):
    topology = build(mlp, [40, 30, 20])
    layer = topology.layers[0]
    assert torch.equal(layer.multiplier(), layer.mask.float())
    pruned, grown = layer.active_positions()[:3], layer.sample_inactive(3, torch.Generator().manual_seed(0))
    layer.rewire(pruned, grown, 0.5)  # an in-place change of the boolean mask
    assert torch.equal(layer.multiplier(), layer.mask.float())
    layer.load_positions(layer.active_positions()[3:])  # a copy into it
    assert torch.equal(layer.multiplier(), layer.mask.float()) and int(layer.multiplier().sum()) == 37
    layer.weight.data.fill_(1.0)
    layer.apply_mask()
    assert torch.equal(layer.weight.detach() != 0, layer.mask)
