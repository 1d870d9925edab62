import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from evosparse.criteria.time_varying import (
    TimeVaryingRule,
    primary_criterion,
    secondary_criterion,
    source_of,
)
from evosparse.errors import UsageError

PAPER = TimeVaryingRule()


def test_paper_constants_are_the_defaults():
    assert (PAPER.k1, PAPER.k2, PAPER.k3, PAPER.k4) == (2.0, 0.5, 0.1, 0.5)


@pytest.mark.parametrize(
    "c_sec, factor",
    [
        (0.0, 2.0),  # nothing (or nothing important) removed: be bolder
        (0.099, 2.0),
        (0.1, 1.0),  # C_sec = K3 C_prim is not below it
        (0.3, 1.0),
        (0.5, 1.0),  # C_sec = K4 C_prim is not above it
        (0.501, 0.5),
        (3.0, 0.5),
    ],
)
def test_factor_follows_eq_9(c_sec, factor):
    assert PAPER.factor(1.0, c_sec) == factor


@given(
    c_prim=st.floats(1e-6, 1e6),
    ratio=st.floats(0.0, 10.0),
    values=st.lists(st.floats(1e-3, 1.0), min_size=3, max_size=3),
)
def test_next_values_scale_every_parameter_alike_and_never_exceed_the_start(c_prim, ratio, values):
    names = ("lam", "zeta", "delta")
    current = dict(zip(names, values))
    ceilings = {name: 1.0 for name in names}
    updated = PAPER.next_values(current, ceilings, c_prim, ratio * c_prim)
    factor = PAPER.factor(c_prim, ratio * c_prim)
    for name in names:
        assert updated[name] == pytest.approx(min(current[name] * factor, 1.0))
        assert updated[name] <= ceilings[name]


def test_criteria_are_means_over_all_nodes_and_over_removed_connections():
    generator = torch.Generator().manual_seed(0)
    layers = [torch.rand(n, generator=generator) for n in (7, 5, 3)]
    assert primary_criterion(layers) == pytest.approx(torch.cat(layers).double().mean().item())
    removed = torch.tensor([0.2, 0.2, 0.5])  # the same source counted once per removed connection
    assert secondary_criterion(removed) == pytest.approx(0.3)
    assert secondary_criterion(torch.tensor([])) == 0.0


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 2, 2), (2, 3, 4)])
def test_source_of_is_the_second_axis_of_a_flat_position(shape):
    flat = torch.arange(int(np.prod(shape)))
    expected = np.unravel_index(flat.numpy(), shape)[1]
    assert source_of(torch.Size(shape), flat).tolist() == expected.tolist()


@pytest.mark.parametrize(
    "constants", [(0.5, 0.5, 0.1, 0.5), (2.0, 1.5, 0.1, 0.5), (2.0, 0.5, 0.6, 0.5), (2.0, 0.5, 0.1, 1.0)]
)
def test_inconsistent_constants_are_refused(constants):
    with pytest.raises(UsageError, match="K2 < 1 < K1"):
        TimeVaryingRule(*constants)
