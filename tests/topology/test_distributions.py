import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.errors import UsageError
from evosparse.topology.distributions import erdos_renyi_probability, layer_budgets, layer_densities

LENET = [(300, 784), (100, 300), (10, 100)]

linear_shapes = st.tuples(st.integers(1, 60), st.integers(1, 60))
conv_shapes = st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(1, 3), st.integers(1, 3))
shapes_strategy = st.lists(linear_shapes, min_size=1, max_size=5) | st.lists(conv_shapes, min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(shapes=shapes_strategy, density=st.floats(0.001, 1.0), kind=st.sampled_from(["uniform", "erdos_renyi", "erk"]))
def test_density_budgets_are_exact_and_within_layer_sizes(shapes, density, kind):
    budgets = layer_budgets(shapes, distribution=kind, density=density)
    sizes = [math.prod(s) for s in shapes]
    assert all(1 <= b <= n for b, n in zip(budgets, sizes))
    expected = round(density * sum(sizes))
    # only the one-connection floor per layer may add to the exact total
    assert expected <= sum(budgets) <= max(expected, 0) + len(shapes)
    if all(d * n >= 1 for d, n in zip(layer_densities(shapes, distribution=kind, density=density), sizes)):
        assert sum(budgets) == expected


def test_uniform_gives_every_layer_the_same_density():
    assert layer_budgets(LENET, distribution="uniform", density=0.05) == [11760, 1500, 50]


def test_erdos_renyi_density_is_proportional_to_set_formula():
    densities = layer_densities(LENET, distribution="erdos_renyi", density=0.05)
    raw = [(a + b) / (a * b) for a, b in LENET]
    ratios = [d / r for d, r in zip(densities, raw)]
    assert ratios == pytest.approx([ratios[0]] * 3)


def test_erk_makes_overfull_layers_dense_and_keeps_total():
    shapes = [(1000, 1000), (2, 1000)]
    densities = layer_densities(shapes, distribution="erk", density=0.1)
    assert densities[1] == 1.0
    assert 0 < densities[0] < 0.1
    budgets = layer_budgets(shapes, distribution="erk", density=0.1)
    assert budgets[1] == 2000 and sum(budgets) == round(0.1 * 1_002_000)


def test_erk_counts_kernel_dimensions_but_er_does_not():
    conv = [(64, 32, 3, 3), (64, 64, 1, 1)]
    erk = layer_densities(conv, distribution="erk", density=0.2)
    er = layer_densities(conv, distribution="erdos_renyi", density=0.2)
    assert erk[0] / erk[1] == pytest.approx(((64 + 32 + 6) / (64 * 32 * 9)) / ((64 + 64 + 2) / (64 * 64)))
    assert er[0] / er[1] == pytest.approx(((64 + 32) / (64 * 32)) / ((64 + 64) / (64 * 64)))


def test_epsilon_follows_set_equation_one():
    budgets = layer_budgets(LENET, epsilon=20)
    assert budgets == [round(20 * (784 + 300)), round(20 * (300 + 100)), 1000]
    assert erdos_renyi_probability((10, 100), 20) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"density": 0.0}, "density must be in (0, 1]"),
        ({"density": 1.5}, "density must be in (0, 1]"),
        ({"density": 0.1, "epsilon": 3.0}, "exactly one"),
        ({}, "exactly one"),
        ({"epsilon": -1.0}, "epsilon must be positive"),
        ({"epsilon": 2.0, "distribution": "erk"}, "Erdős–Rényi"),
        ({"density": 0.1, "distribution": "lognormal"}, "unknown distribution"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")) as info:
        layer_budgets(LENET, **kwargs)
    assert "\n" not in str(info.value)
