import pytest
import torch

import evosparse
from conftest import small_mlp
from evosparse.engine.config import build_config
from evosparse.engine.loop import train
from evosparse.errors import UsageError
from support import batches, saved_and_loaded, small_conv, train_steps

STEPS_PER_EPOCH = 5


def pruning(model, epochs, density=0.1, **params):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return evosparse.sparsify(
        model, optimizer, "prune", density=density, total_steps=epochs * STEPS_PER_EPOCH, **params
    )


def train_epochs(model, sparsifier, data):
    """Train on ``data`` one epoch of STEPS_PER_EPOCH batches at a time; return the density after each."""
    densities = []
    for start in range(0, len(data), STEPS_PER_EPOCH):
        train_steps(model, sparsifier, data[start : start + STEPS_PER_EPOCH])
        sparsifier.end_epoch()
        densities.append(sparsifier.density())
    return densities


def test_dense_until_the_prune_epoch_then_exactly_the_target_and_fixed():
    model = small_mlp()
    sparsifier = pruning(model, epochs=6)  # dense_fraction 0.5: the prune ends epoch 3
    layers = sparsifier.topology.layers
    data = batches(30)
    assert train_epochs(model, sparsifier, data[:10]) == [1.0, 1.0]
    train_steps(model, sparsifier, data[10:15])
    magnitudes = [layer.weight.detach().abs().clone() for layer in layers]
    sparsifier.end_epoch()
    assert [layer.active for layer in layers] == list(sparsifier.plan.budgets)
    for layer, magnitude in zip(layers, magnitudes):
        assert magnitude[~layer.mask].max() < magnitude[layer.mask].min()  # the smallest |w| went
    masks = [layer.mask.clone() for layer in layers]
    target = sparsifier.density()
    assert target == sparsifier.topology.active / sparsifier.topology.total
    assert sparsifier.topology.active == round(0.1 * sparsifier.topology.total)
    assert train_epochs(model, sparsifier, data[15:]) == [target] * 3
    assert all(torch.equal(layer.mask, mask) for layer, mask in zip(layers, masks))
    assert all(not layer.weight.detach()[~layer.mask].any() for layer in layers)


@pytest.mark.parametrize("fraction, dense_epochs", [(0.0, 1), (0.3, 3), (0.55, 6), (0.9, 9)])
def test_the_prune_comes_at_the_first_epoch_end_at_or_after_dense_fraction(fraction, dense_epochs):
    model = small_mlp()
    sparsifier = pruning(model, epochs=10, dense_fraction=fraction)
    densities = train_epochs(model, sparsifier, batches(50))
    assert densities.index(densities[-1]) == dense_epochs - 1
    assert densities[: dense_epochs - 1] == [1.0] * (dense_epochs - 1) and densities[-1] < 1.0


@pytest.mark.parametrize("build, input_shape", [(small_mlp, (20,)), (small_conv, (1, 6, 6))])
def test_every_layer_gets_its_own_budget_on_linear_and_convolution_layers(build, input_shape):
    model = build()
    sparsifier = pruning(model, epochs=2, density=0.2, distribution="erk")
    assert sparsifier.density() == 1.0
    train_epochs(model, sparsifier, batches(2 * STEPS_PER_EPOCH, input_shape))
    assert [layer.active for layer in sparsifier.topology.layers] == list(sparsifier.plan.budgets)
    assert sparsifier.topology.active == round(0.2 * sparsifier.topology.total)


def test_a_run_resumed_before_the_prune_prunes_the_same_connections():
    def fresh(seed):
        torch.manual_seed(seed)
        model = small_mlp()
        return model, pruning(model, epochs=4, seed=seed)

    data = batches(20)
    model, sparsifier = fresh(0)
    train_epochs(model, sparsifier, data[:5])
    resumed_model, resumed = fresh(1)
    resumed_model.load_state_dict(saved_and_loaded(model.state_dict()))
    resumed.optimizer.load_state_dict(saved_and_loaded(sparsifier.optimizer.state_dict()))
    resumed.load_state_dict(saved_and_loaded(sparsifier.state_dict()))
    assert train_epochs(model, sparsifier, data[5:]) == train_epochs(resumed_model, resumed, data[5:])
    for layer, other in zip(sparsifier.topology.layers, resumed.topology.layers):
        assert torch.equal(layer.mask, other.mask)
        assert torch.equal(layer.weight, other.weight)


def test_prune_refuses_a_schedule_that_would_never_prune(mlp):
    with pytest.raises(UsageError, match="total_steps"):
        evosparse.sparsify(mlp, torch.optim.SGD(mlp.parameters(), lr=0.05), "prune", density=0.1)
    with pytest.raises(UsageError, match="below update_until"):
        pruning(mlp, epochs=10, dense_fraction=0.6, update_until=0.5)
    sparsifier = pruning(mlp, epochs=4, dense_fraction=0.9)  # 0.9 · 20 = step 18: after the last epoch end
    with pytest.raises(UsageError, match="lower it or train longer"):
        train_epochs(mlp, sparsifier, batches(STEPS_PER_EPOCH))
    model = small_mlp()
    single_epoch = pruning(model, epochs=1)  # no epoch end precedes the end of training
    with pytest.raises(UsageError, match="nothing was pruned"):
        train_epochs(model, single_epoch, batches(STEPS_PER_EPOCH))


def test_prune_learns_digits_and_reports_the_density_change(tmp_path):
    config = build_config(
        None, {"method": "prune", "epochs": 4, "hidden": "64,32", "density": 0.2, "out": str(tmp_path)}, []
    )
    result = train(config, progress=False)
    assert result["final_test_acc"] > 0.8  # chance is 0.1
    densities = [epoch["density"] for epoch in result["epochs"]]
    assert densities == [1.0, 1.0, result["density_final"], result["density_final"]]  # pruned after epoch 2
    assert result["params_active"] == round(0.2 * result["params_dense"])
