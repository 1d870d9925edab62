"""nn.MultiheadAttention's packed query/key/value projection is three sparse layers (issue 21)."""

import pytest
import torch
from torch import nn

import evosparse
from evosparse.backends.export import export_model, load_exported
from evosparse.errors import UsageError
from evosparse.topology.masks import MaskedLayer, find_sparse_parameters, sparse_matrices

WIDTH, TOKENS = 16, 5


class Encoder(nn.Module):
    """One transformer encoder layer (nn.MultiheadAttention inside) and a classifier over its tokens."""

    def __init__(self, **attention: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(WIDTH, 2, batch_first=True, **attention)
        self.head = nn.Linear(WIDTH * TOKENS, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, x, x, need_weights=False)
        return self.head((x + attended).flatten(1))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, TOKENS, WIDTH, generator=generator), torch.randint(0, 3, (32,), generator=generator)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier, steps: int) -> list[float]:
    x, y = batch()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        sparsifier.step()
        losses.append(loss.item())
    return losses


def blocks(sparsifier) -> list[MaskedLayer]:
    return [layer for layer in sparsifier.topology.layers if "[" in layer.name]


def test_the_packed_projection_is_selected_by_default_and_split_in_three():
    model = Encoder()
    found = find_sparse_parameters(model)
    assert [name for name, _, _ in found] == ["attention.in_proj_weight", "attention.out_proj.weight", "head.weight"]
    matrices = sparse_matrices(model, found)
    assert [m.name for m in matrices[:3]] == [f"attention.in_proj_weight[{p}]" for p in ("query", "key", "value")]
    assert [m.rows for m in matrices[:3]] == [(0, WIDTH), (WIDTH, 2 * WIDTH), (2 * WIDTH, 3 * WIDTH)]
    for matrix in matrices[:3]:  # views of the parameter, not copies
        assert matrix.weight.shape == (WIDTH, WIDTH)
        assert matrix.weight.data_ptr() == model.attention.in_proj_weight[matrix.rows[0]].data_ptr()
    assert [name for name, _, _ in find_sparse_parameters(model, exclude=["*.in_proj_weight"])] == [
        "attention.out_proj.weight",
        "head.weight",
    ]


def test_separate_key_and_value_widths_give_three_parameters():
    model = Encoder(kdim=8, vdim=12)
    found = find_sparse_parameters(model)
    names = [name for name, _, _ in found]
    assert names[:3] == ["attention.q_proj_weight", "attention.k_proj_weight", "attention.v_proj_weight"]
    assert [m.weight.shape for m in sparse_matrices(model, found)[:3]] == [(WIDTH, WIDTH), (WIDTH, 8), (WIDTH, 12)]


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_each_matrix_keeps_its_own_exact_budget_while_training(method):
    torch.manual_seed(0)
    model = Encoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sparsifier = evosparse.sparsify(
        model, optimizer, method, density=0.2, total_steps=40, update_unit="step", update_interval=5
    )
    budgets = [layer.budget for layer in blocks(sparsifier)]
    assert max(budgets) - min(budgets) <= 1  # equal shapes, equal shares of the budget (up to rounding)
    layers = sparsifier.topology.layers
    assert sum(layer.budget for layer in layers) == round(0.2 * sum(layer.numel for layer in layers))
    initial = [layer.mask.clone() for layer in blocks(sparsifier)]
    losses = train(model, optimizer, sparsifier, 40)
    assert losses[-1] < 0.5 * losses[0]
    assert any(not torch.equal(layer.mask, mask) for layer, mask in zip(blocks(sparsifier), initial))  # evolved
    weight = model.attention.in_proj_weight.detach()
    for layer in blocks(sparsifier):
        start, stop = layer.rows
        assert layer.active == layer.budget
        assert torch.equal(weight[start:stop] != 0, layer.mask)  # no weight outside the block's mask
    sparsifier.topology.check()


def test_gradients_are_masked_and_recorded_per_block():
    torch.manual_seed(1)
    model = Encoder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, "static", density=0.3)
    reference = Encoder()
    reference.load_state_dict(model.state_dict())
    x, y = batch(2)
    nn.functional.cross_entropy(reference(x), y).backward()
    dense = reference.attention.in_proj_weight.grad
    for layer in blocks(sparsifier):
        layer.record_gradients(True)
    nn.functional.cross_entropy(model(x), y).backward()
    masked = model.attention.in_proj_weight.grad
    for layer in blocks(sparsifier):
        start, stop = layer.rows
        everywhere = torch.arange(layer.numel)
        assert torch.allclose(layer.gradient_at(everywhere), dense[start:stop].reshape(-1), atol=1e-6)
        assert torch.allclose(masked[start:stop], dense[start:stop] * layer.mask, atol=1e-6)


def test_a_rewiring_resets_the_optimizer_state_of_its_own_block_only():
    torch.manual_seed(2)
    model = Encoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sparsifier = evosparse.sparsify(model, optimizer, "static", density=0.3)
    train(model, optimizer, sparsifier, 3)
    key = blocks(sparsifier)[1]
    state = optimizer.state[model.attention.in_proj_weight]
    before = {name: value.clone() for name, value in state.items() if value.shape == (3 * WIDTH, WIDTH)}
    pruned = key.active_positions()[:4]
    grown = key.sample_inactive(4, torch.Generator().manual_seed(0))
    key.rewire(pruned, grown, 0.0)
    changed = torch.zeros(3 * WIDTH * WIDTH, dtype=torch.bool)
    changed[torch.cat([pruned, grown]) + key.parameter_offset] = True
    assert key.parameter_offset == WIDTH * WIDTH
    for name, old in before.items():
        new = state[name].reshape(-1)
        assert not new[changed].any()  # reset where the key block changed
        assert torch.equal(new[~changed], old.reshape(-1)[~changed])  # untouched elsewhere, other blocks too


def test_export_merges_the_blocks_into_the_packed_parameter(tmp_path):
    torch.manual_seed(3)
    model = Encoder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.3)
    train(model, optimizer, sparsifier, 5)
    exported_model, positions = sparsifier.method.export_model()
    packed = positions["attention.in_proj_weight"]
    assert packed.numel() == sum(layer.active for layer in blocks(sparsifier))
    assert torch.equal(packed, model.attention.in_proj_weight.detach().reshape(-1).nonzero().squeeze(1))
    export_model(exported_model, tmp_path / "model.safetensors", positions)
    loaded = load_exported(tmp_path / "model.safetensors", Encoder())
    model.eval()
    x, _ = batch(4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_a_resumed_sparsifier_restores_every_block():
    torch.manual_seed(4)
    model = Encoder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.3, update_interval=2, update_unit="step")
    train(model, optimizer, sparsifier, 6)
    saved = sparsifier.state_dict()
    restored_model = Encoder()
    restored_model.load_state_dict(model.state_dict())
    restored_optimizer = torch.optim.SGD(restored_model.parameters(), lr=0.1)
    restored = evosparse.sparsify(
        restored_model, restored_optimizer, "set", density=0.3, update_interval=2, update_unit="step", seed=9
    )
    restored.load_state_dict(saved)
    for original, copy in zip(blocks(sparsifier), blocks(restored)):
        assert copy.name == original.name
        assert torch.equal(copy.mask, original.mask)


@pytest.mark.parametrize("exclude", [None, ["*.in_proj_weight"]])
def test_the_csr_backend_refuses_attention_in_one_line(exclude):
    model = Encoder()
    with pytest.raises(UsageError, match="cannot replace attention.out_proj.weight: its MultiheadAttention reads"):
        evosparse.sparsify(model, None, "set", density=0.3, backend="csr", exclude=exclude)
    assert isinstance(model.attention.out_proj, nn.Linear)  # untouched
    with pytest.raises(UsageError, match=r"in_proj_weight\[query\] belongs to a MultiheadAttention"):
        evosparse.sparsify(model, None, "set", density=0.3, backend="csr", exclude=["*.out_proj.*"])


def test_a_linear_layer_whose_parent_reads_its_weight_is_not_offered_as_a_called_linear_layer():
    """nn.MultiheadAttention never calls out_proj: methods that hook a linear layer's input (LiSET) must not
    take it for one, or their hooks would silently see nothing."""
    model = Encoder()
    sparsifier = evosparse.sparsify(model, None, "static", density=0.3)
    layers = {layer.name: layer for layer in sparsifier.topology.layers}
    assert not layers["attention.out_proj.weight"].is_linear
    assert layers["head.weight"].is_linear
    with pytest.raises(UsageError, match="liset supports linear layers only; attention.out_proj.weight"):
        other = Encoder()
        optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
        evosparse.sparsify(other, optimizer, "liset", density=0.3, exclude=["*.in_proj_weight"])
