"""path_weight, sensitivity, liset and adaptive on --backend csr: parity with masked, learning, no dense tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_csr_engine import assert_same_run
from torch import nn
from torch.nn import functional as F
from torch.utils import _pytree
from torch.utils._python_dispatch import TorchDispatchMode

import evosparse
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_model import CsrLayer
from evosparse.criteria.path_weight import MAX_EXACT_PATHS
from evosparse.data import load_dataset
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.methods.adaptive import largest_in_blocks, largest_with_random_ties
from support import killed_then_resumed

#: label -> (method, parameters); path_weight with its exact quantile, so every run is deterministic. The
#: per-step variants exercise changing connection counts between steps, not learning (they learn poorly).
METHODS = {
    "path_weight": ("path_weight", {"samples": MAX_EXACT_PATHS}),
    "sensitivity": ("sensitivity", {}),
    "sensitivity paper, delta 1.5, per step": (
        "sensitivity",
        {"form": "paper", "delta": 1.5, "update_unit": "step", "update_interval": 7},
    ),
    "liset": ("liset", {}),
    "adaptive": ("adaptive", {}),
    "adaptive stochastic": ("adaptive", {"mode": "stochastic", "beta0": 0.3, "beta1": 0.8}),
    "adaptive stochastic per step": ("adaptive", {"mode": "stochastic", "update_unit": "step", "update_interval": 9}),
}


def mlp(sizes: tuple[int, ...] = (64, 64, 10)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def twins(method: str, params: dict, sizes: tuple[int, ...] = (64, 64, 10), density: float = 0.2):
    """The same float64 model sparsified on the masked and on the csr backend (same seed): [(model, sparsifier)] x 2.

    In float64 the two backends' rounding differences stay far below any gap a selection could fall in
    (in float32 the paper form of sensitivity, |g / w|, amplifies them at tiny weights).
    """
    pairs = []
    for backend in ("masked", "csr"):
        torch.manual_seed(0)
        model = mlp(sizes).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pairs.append((model, evosparse.sparsify(model, optimizer, method, density=density, backend=backend, **params)))
    return pairs


def positions(sparsifier) -> list[torch.Tensor]:
    return [layer.active_positions() for layer in sparsifier.topology.layers]


@pytest.mark.parametrize("label", METHODS)
def test_user_loop_on_csr_matches_masked_update_by_update_and_learns_digits(label):
    method, params = METHODS[label]
    data = load_dataset("digits")
    x_train, x_test = data.x_train.double(), data.x_test.double()
    (masked_model, masked), (csr_model, csr) = twins(method, params)
    assert all(isinstance(csr_model[i], CsrLinear) for i in (0, 2))
    fixed = masked.method.fixed_budget
    budgets = [layer.budget for layer in csr.topology.layers]
    shuffle, changed = torch.Generator().manual_seed(0), 0
    for _ in range(3):
        for batch in torch.randperm(len(x_train), generator=shuffle).split(64):
            losses = []
            for model, sparsifier in ((masked_model, masked), (csr_model, csr)):
                loss = F.cross_entropy(model(x_train[batch]), data.y_train[batch])
                sparsifier.optimizer.zero_grad()
                loss.backward()
                sparsifier.optimizer.step()
                sparsifier.step()
                losses.append(loss.item())
            assert losses[1] == pytest.approx(losses[0], rel=1e-9, abs=1e-12)
            changed += check_same_topology(masked, csr, budgets if fixed else None)
        masked.end_epoch()
        csr.end_epoch()
        changed += check_same_topology(masked, csr, budgets if fixed else None)
    assert changed > 0
    for a, b in zip(masked.method.log(), csr.method.log(), strict=True):  # |F_k|-scaled criteria, δ, ...
        assert b == pytest.approx(a, rel=1e-9)
    csr_model.eval()
    with torch.no_grad():
        accuracy = (csr_model(x_test).argmax(1) == data.y_test).double().mean().item()
    assert accuracy > (0.8 if params.get("update_unit") != "step" else 0.0)


def check_same_topology(masked, csr, budgets: list[int] | None) -> int:
    """After an update (if one ran): the same connections on both backends and, for fixed budgets, exact ones.

    Returns the number of connections the update changed (0 when none ran).
    """
    stats = [masked.take_stats(), csr.take_stats()]
    assert stats[0].updates == stats[1].updates and stats[0].connections_changed == stats[1].connections_changed
    if not stats[1].updates:
        return 0
    assert all(torch.equal(a, b) for a, b in zip(positions(masked), positions(csr)))
    if budgets is not None:
        assert [layer.active for layer in csr.topology.layers] == budgets
    return stats[1].connections_changed


def engine_run(out: Path, method: str, backend: str) -> dict:
    settings = {"method": method, "backend": backend, "dataset": "digits", "epochs": 3, "hidden": [64], "out": str(out)}
    return loop.train(build_config(None, settings, []), progress=False)


@pytest.mark.parametrize("method", ["path_weight", "sensitivity", "liset", "adaptive"])
def test_engine_trains_each_method_on_csr_as_on_masked(tmp_path, method):
    masked = engine_run(tmp_path / "masked", method, "masked")
    csr = engine_run(tmp_path / "csr", method, "csr")
    assert_same_run(masked, csr, tmp_path / "masked", tmp_path / "csr")
    assert sum(record["connections_changed"] for record in csr["epochs"]) > 0
    assert csr["final_test_acc"] > 0.7


@pytest.mark.parametrize("method", ["sensitivity", "liset"])
def test_csr_runs_resume_exactly_after_a_kill(tmp_path, monkeypatch, method):
    """Method state on csr (per-connection gradient sums, skip layers in the optimizer) survives a checkpoint."""
    reference = engine_run(tmp_path / "full", method, "csr")
    settings = {"method": method, "backend": "csr", "dataset": "digits", "epochs": 3, "hidden": [64]}
    resumed = killed_then_resumed(
        lambda: build_config(None, {**settings, "out": str(tmp_path / "cut")}, []), monkeypatch, kill_after_epoch=1
    )
    for key in ("train_loss", "test_acc", "connections_changed"):
        assert [r[key] for r in resumed["epochs"]] == [r[key] for r in reference["epochs"]]


def dense_twin(model: nn.Sequential) -> nn.Sequential:
    """The csr ``model`` with ordinary dense ``nn.Linear`` layers (zeros at inactive positions)."""
    dense = mlp((model[0].in_features, model[0].out_features, model[2].out_features)).double()
    with torch.no_grad():
        for index in (0, 2):
            dense[index].weight.copy_(model[index].to_dense_weight())
            dense[index].bias.copy_(model[index].bias)
    return dense


@pytest.mark.parametrize("beta0", [0.4, 1.0])
def test_stochastic_adaptive_on_csr_reads_the_dense_gradient_at_its_sampled_candidates(beta0):
    torch.manual_seed(1)
    model = mlp((20, 30, 5)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(
        model, optimizer, "adaptive", density=0.3, backend="csr", mode="stochastic", beta0=beta0
    )
    generator = torch.Generator().manual_seed(2)
    x, y = (
        torch.randn(16, 20, generator=generator, dtype=torch.float64),
        torch.randint(0, 5, (16,), generator=generator),
    )
    dense = dense_twin(model)
    F.cross_entropy(dense(x), y).backward()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    sparsifier.step()
    candidates = sparsifier.method.growth_candidates()
    for index, layer in enumerate(sparsifier.topology.layers):
        growth = sparsifier.method.growth_stage(index, candidates[index])
        free = layer.numel - layer.active
        assert growth.positions.unique().numel() == round(beta0 * free) > 0
        assert not layer.contains(growth.positions).any()
        brute_force = dense[2 * index].weight.grad.reshape(-1)[growth.positions]
        torch.testing.assert_close(growth.gradients, brute_force, rtol=1e-12, atol=1e-14)


def test_streamed_top_gradients_choose_and_draw_exactly_as_on_all_of_them():
    generator = torch.Generator().manual_seed(3)
    gradients = torch.randint(-3, 4, (500,), generator=generator).double()  # many ties at every cut
    positions = torch.arange(500) * 7
    for count in (0, 1, 40, 200, 500):
        whole = largest_with_random_ties(gradients.abs(), count, torch.Generator().manual_seed(count))
        blocks = zip(positions.split(37), gradients.split(37))
        chosen, values = largest_in_blocks(blocks, count, torch.Generator().manual_seed(count))
        assert torch.equal(chosen, positions[whole]) and torch.equal(values, gradients[whole])


class LargestTensor(TorchDispatchMode):
    """Records the largest number of entries of any tensor an operation returns (stored entries if sparse)."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in _pytree.tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                stored = tensor.numel() if tensor.layout == torch.strided else tensor._nnz()
                self.entries = max(self.entries, stored)
        return result


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("path_weight", {}),
        ("sensitivity", {}),
        ("liset", {}),
        ("adaptive", {}),
        ("adaptive", {"mode": "stochastic", "beta0": 0.01}),  # its candidates: β₀ of the free positions
    ],
    ids=["path_weight", "sensitivity", "liset", "adaptive", "adaptive stochastic"],
)
def test_an_update_on_csr_creates_no_tensor_of_the_layers_size(method, params):
    torch.manual_seed(4)
    model = mlp((2000, 3000, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, method, density=0.01, backend="csr", **params)
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(8, 2000, generator=generator), torch.randint(0, 10, (8,), generator=generator)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    sparsifier.step()
    with LargestTensor() as recorder:
        sparsifier.end_epoch()
    assert sparsifier.take_stats().connections_changed > 0
    assert 0 < recorder.entries < 3000 * 2000 // 4  # the exact adaptive scores blocks of 2^20 positions


@pytest.mark.parametrize(
    ("method", "params"),
    [("path_weight", {}), ("sensitivity", {}), ("adaptive", {"mode": "stochastic", "beta0": 1e-7})],
    ids=["path_weight", "sensitivity", "adaptive stochastic"],
)
def test_layers_of_4e10_positions_train_and_evolve_on_csr(method, params):
    """200,000 x 200,000 layers built on the meta device: any dense tensor of their size would not fit."""
    side = 200_000
    with torch.device("meta"):
        model = mlp((side, side, side))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(
        model, optimizer, method, density=1e-7, distribution="uniform", backend="csr", **params
    )
    x = torch.randn(4, side, generator=torch.Generator().manual_seed(5))
    for _ in range(2):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        sparsifier.step()
    sparsifier.end_epoch()
    assert sparsifier.take_stats().connections_changed > 0
    if sparsifier.method.fixed_budget:
        assert [layer.active for layer in sparsifier.topology.layers] == [4000, 4000]


def test_liset_trains_a_model_built_on_the_meta_device():
    """The csr layers exist (drawn directly) before the method is built, so its skip layers are real too."""
    with torch.device("meta"):
        model = mlp((100, 50, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = evosparse.sparsify(model, optimizer, "liset", density=0.1, backend="csr")
    skip_layers = sparsifier.method.skip_layers
    assert [tuple(skip.weight.shape) for skip in skip_layers] == [(10, 100), (10, 50)]
    assert not any(skip.weight.is_meta for skip in skip_layers)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    assert not any(p.is_meta for p in trained) and all(any(p is s.weight for p in trained) for s in skip_layers)
    x, y = torch.randn(4, 100, generator=torch.Generator().manual_seed(6)), torch.randint(0, 10, (4,))
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
    sparsifier.end_epoch()
    assert sparsifier.take_stats().connections_changed > 0
    assert [layer.active for layer in sparsifier.topology.layers] == list(sparsifier.plan.budgets)


def test_csr_hooks_are_placed_on_the_csr_layers_even_before_any_forward_pass():
    """The method is built before the csr layers replace the masked ones: its hooks must follow them."""
    model = mlp()
    csr = evosparse.sparsify(
        model, torch.optim.SGD(model.parameters(), lr=0.1), "path_weight", density=0.2, backend="csr"
    )
    norms = csr.method.state_dict()["feature_norms"]  # the state exists before any forward pass
    assert [float(total) for total in norms["counts"]] == [0.0, 0.0]
    model.train()
    model(torch.ones(3, 64))
    assert isinstance(model[0], CsrLinear) and isinstance(csr.topology.layers[0], CsrLayer)
    assert csr.topology.layers[0].module is model[0]
    assert [float(total) for total in csr.method.feature_norms.counts] == [3.0, 3.0]
