import pytest
import torch
from torch.nn import functional as F

import evosparse
from conftest import small_mlp
from evosparse.criteria.growth import top_scores_growth
from evosparse.criteria.schedules import cosine_update_fraction
from evosparse.engine.config import build_config
from evosparse.engine.loop import train
from evosparse.errors import UsageError
from support import assert_resume_is_exact, batches, small_conv, train_steps


def flat_set(mask):
    return set(mask.reshape(-1).nonzero().squeeze(1).tolist())


def test_top_scores_growth_picks_the_largest_scores_among_inactive_positions():
    generator = torch.Generator().manual_seed(0)
    for shape in [(7, 9), (3, 2, 3, 3)]:
        scores = torch.rand(shape, generator=generator)
        mask = torch.rand(shape, generator=generator) < 0.5
        inactive = [i for i in range(mask.numel()) if not mask.reshape(-1)[i]]
        best = sorted(inactive, key=lambda i: -scores.reshape(-1)[i].item())
        for count in [0, 1, 5, len(inactive)]:
            assert set(top_scores_growth(scores, mask, count).tolist()) == set(best[:count])
    with pytest.raises(UsageError, match="only"):
        top_scores_growth(scores, mask, len(inactive) + 1)
    with pytest.raises(UsageError, match="one score per position"):
        top_scores_growth(scores.reshape(-1), mask, 1)


def test_update_drops_the_weakest_and_grows_the_steepest_inactive_positions():
    model = small_mlp((12, 10, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.4, distribution="uniform", total_steps=40,
        alpha=0.5, update_interval=1, update_until=1.0,
    )  # fmt: skip
    layers = sparsifier.topology.layers
    train_steps(model, sparsifier, batches(3, (12,), 4))  # momentum state, so that its reset shows
    x, y = batches(1, (12,), 4, seed=1)[0]
    loss = F.cross_entropy(model(x), y)
    dense_grads = torch.autograd.grad(loss, [layer.weight for layer in layers], retain_graph=True)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    before = [(layer.mask.clone(), layer.weight.detach().clone()) for layer in layers]
    sparsifier.step()  # step 4: an update with fraction f(4)

    fraction = cosine_update_fraction(4, 0.5, 40)
    for layer, (mask, weight), grad in zip(layers, before, dense_grads):
        active, inactive = sorted(flat_set(mask)), sorted(flat_set(~mask))
        count = min(round(fraction * len(active)), len(inactive))
        by_weight = sorted(active, key=lambda i: abs(weight.reshape(-1)[i].item()))
        by_gradient = sorted(inactive, key=lambda i: -abs(grad.reshape(-1)[i].item()))
        gaps = abs(grad.reshape(-1)[by_gradient[count - 1]]) - abs(grad.reshape(-1)[by_gradient[count]])
        assert count > 0 and gaps > 0  # the brute-force answer is unique
        dropped, grown = flat_set(mask & ~layer.mask), flat_set(layer.mask & ~mask)
        assert dropped == set(by_weight[:count])
        assert grown == set(by_gradient[:count])
        assert not dropped & grown
        assert layer.active == layer.budget == len(active)
        assert (layer.weight.detach().reshape(-1)[sorted(grown)] == 0).all()
        momentum = optimizer.state[layer.weight]["momentum_buffer"].reshape(-1)
        assert (momentum[sorted(dropped | grown)] == 0).all()
        assert momentum[sorted(flat_set(layer.mask) - grown)].abs().sum() > 0


def test_only_an_update_step_keeps_a_gradient_and_it_is_the_dense_one():
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.3, total_steps=12, update_interval=3, update_until=1.0
    )
    layers, method = sparsifier.topology.layers, sparsifier.method
    for step, (x, y) in enumerate(batches(10), 1):
        loss = F.cross_entropy(model(x), y)
        dense_grads = torch.autograd.grad(loss, [layer.weight for layer in layers], retain_graph=True)
        optimizer.zero_grad()
        loss.backward()
        if step % 3:
            assert method.kept_gradients == {}
        else:
            assert sorted(method.kept_gradients) == list(range(len(layers)))
            for index, (layer, grad) in enumerate(zip(layers, dense_grads)):
                assert torch.equal(method.kept_gradients[index], grad.abs())
                assert method.kept_gradients[index][~layer.mask].any()  # not the masked gradient
        optimizer.step()
        sparsifier.step()
        assert method.kept_gradients == {}  # released by the update


def test_each_update_swaps_the_cosine_decayed_fraction_until_t_end():
    model = small_mlp((30, 20, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.3, total_steps=40, update_interval=5, update_until=0.75
    )
    layers = sparsifier.topology.layers
    update_steps = []
    for step, batch in enumerate(batches(40, (30,)), 1):
        counts = [min(round(cosine_update_fraction(step, 0.3, 30) * layer.active), layer.numel - layer.active)
                  for layer in layers]  # fmt: skip
        train_steps(model, sparsifier, [batch])
        stats = sparsifier.take_stats()
        if stats.updates:
            update_steps.append(step)
            assert stats.connections_changed == 2 * sum(counts)
        else:
            assert stats.connections_changed == 0
    assert update_steps == [5, 10, 15, 20, 25]  # T_end = 0.75 · 40 = 30


@pytest.mark.parametrize("build, input_shape", [(small_mlp, (20,)), (small_conv, (1, 6, 6))])
def test_budgets_stay_exact_on_linear_and_convolution_layers(build, input_shape):
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "rigl", density=0.3, distribution="erk", total_steps=20, update_interval=2
    )
    layers = sparsifier.topology.layers
    initial = [layer.mask.clone() for layer in layers]
    train_steps(model, sparsifier, batches(20, input_shape))
    assert sparsifier.take_stats().updates == 7  # steps 2..14 (< 0.75 · 20)
    for layer, budget, mask in zip(layers, sparsifier.target_budgets, initial):
        assert layer.active == budget
        assert not layer.weight.detach()[~layer.mask].any()
        if budget < layer.numel:
            assert not torch.equal(layer.mask, mask)


def test_a_resumed_run_makes_the_same_updates():
    def fresh(seed):
        torch.manual_seed(seed)
        model = small_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sparsifier = evosparse.sparsify(
            model, optimizer, "rigl", density=0.3, total_steps=30, update_interval=4, seed=seed
        )
        return model, sparsifier

    assert_resume_is_exact(fresh, batches(30), cut=14)  # between the updates at steps 12 and 16


def test_rigl_refuses_what_it_cannot_schedule(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.05)
    with pytest.raises(UsageError, match="total_steps"):
        evosparse.sparsify(mlp, optimizer, "rigl", density=0.3)
    with pytest.raises(UsageError, match="update_unit must be one of step"):
        evosparse.sparsify(mlp, optimizer, "rigl", density=0.3, total_steps=10, update_unit="epoch")
    sparsifier = evosparse.sparsify(mlp, optimizer, "rigl", density=0.3, total_steps=10)
    with pytest.raises(UsageError, match="no gradient"):
        sparsifier.method.update()


def test_rigl_learns_digits(tmp_path):
    config = build_config(
        None,
        {"method": "rigl", "epochs": 3, "hidden": "64,32", "density": 0.2, "out": str(tmp_path)},
        ["update_interval=10"],
    )
    result = train(config, progress=False)
    assert result["final_test_acc"] > 0.8  # chance is 0.1
    assert sum(epoch["connections_changed"] for epoch in result["epochs"]) > 0
    assert {epoch["density"] for epoch in result["epochs"]} == {result["density_final"]}
