"""Growth by source without a dense mask: the successive-sampling law, exhaustion order, both backends alike."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from backend_pairs import twin_layers
from evosparse.errors import UsageError
from evosparse.topology.positions import sample_absent
from evosparse.topology.source_sampling import free_per_source, source_weighted_sample


def present_of(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1).nonzero().squeeze(1)


def source_pair_law(mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """P(first draw from source a, second from source b) under successive sampling with weight w_s / free_s."""
    free = (~mask).sum(dim=0).double()
    per_position = weights.double() / free
    total = float(weights.sum())
    law = torch.zeros(len(weights), len(weights), dtype=torch.float64)
    for a in range(len(weights)):
        for b in range(len(weights)):
            second = per_position[b] * (free[b] - int(a == b))
            law[a, b] = weights[a] / total * second / (total - per_position[a])
    return law


@pytest.mark.parametrize(
    ("rows", "density", "count"),
    [(40, 0.3, 2), (4, 0.2, 6)],  # draws with replacement / enumeration of every eligible position
    ids=["rounds", "enumeration"],
)
def test_the_first_two_draws_follow_successive_sampling(rows, density, count):
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(rows, 3, generator=generator) < density
    weights = torch.tensor([1.0, 2.0, 5.0])
    present = present_of(mask)
    draws = 3000
    counts = torch.zeros(3, 3)
    for _ in range(draws):
        drawn = source_weighted_sample(present, (rows, 3), count, weights, generator)
        assert drawn.unique().numel() == count and not mask.reshape(-1)[drawn].any()
        counts[drawn[0] % 3, drawn[1] % 3] += 1
    expected = source_pair_law(mask, weights) * draws
    assert chisquare(counts.reshape(-1).numpy(), expected.reshape(-1).numpy()).pvalue > 1e-3


def test_targets_of_a_source_are_uniform_among_its_absent_positions():
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(30, 2, dtype=torch.bool)
    mask[::3, 1] = True  # source 1 has 20 absent positions
    present = present_of(mask)
    drawn = torch.cat(
        [source_weighted_sample(present, (30, 2), 1, torch.tensor([0.0, 1.0]), generator) for _ in range(2000)]
    )
    rows = torch.bincount(drawn // 2, minlength=30)
    assert not mask.reshape(-1)[drawn].any()
    assert chisquare(rows[~mask[:, 1]].numpy()).pvalue > 1e-3


def test_zero_weight_sources_are_drawn_last_and_uniformly():
    generator = torch.Generator().manual_seed(2)
    mask = torch.zeros(10, 3, dtype=torch.bool)
    drawn = source_weighted_sample(present_of(mask), (10, 3), 25, torch.tensor([1.0, 0.0, 5.0]), generator)
    assert drawn.unique().numel() == 25
    assert torch.bincount(drawn % 3, minlength=3).tolist() == [10, 5, 10]
    assert (drawn[20:] % 3 == 1).all() and (drawn[:20] % 3 != 1).all()


def test_convolution_sources_are_input_channels():
    generator = torch.Generator().manual_seed(3)
    mask = torch.rand(4, 3, 2, 2, generator=generator) < 0.3
    drawn = source_weighted_sample(present_of(mask), (4, 3, 2, 2), 10, torch.tensor([0.0, 1.0, 0.0]), generator)
    channels = torch.arange(3).view(1, 3, 1, 1).expand(4, 3, 2, 2).reshape(-1)
    assert drawn.unique().numel() == 10 and not mask.reshape(-1)[drawn].any()
    assert (channels[drawn][: int((~mask[:, 1]).sum())] == 1).all()
    assert free_per_source(present_of(mask), (4, 3, 2, 2)).tolist() == (~mask).sum(dim=(0, 2, 3)).tolist()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 5),
    st.floats(0.0, 1.0),
    st.lists(st.sampled_from([0.0, 1e-100, 0.5, 3.0, 1e100]), min_size=5, max_size=5),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31),
)
def test_draws_are_distinct_absent_and_exhaust_weighted_sources_first(rows, sources, density, weights, share, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, sources, generator=generator) < density
    weights = torch.tensor(weights[:sources], dtype=torch.float64)
    free = (~mask).sum(dim=0)
    count = round(share * int(free.sum()))
    drawn = source_weighted_sample(present_of(mask), (rows, sources), count, weights, generator)
    assert drawn.numel() == drawn.unique().numel() == count
    assert not mask.reshape(-1)[drawn].any()
    from_weighted = min(count, int(free[weights > 0].sum()))
    assert (weights[drawn % sources][:from_weighted] > 0).all()
    assert free_per_source(present_of(mask), (rows, sources)).tolist() == free.tolist()


def test_masked_and_csr_layers_draw_the_same_positions():
    masked, csr = twin_layers(40, 30, 0.2, seed=4)
    weights = torch.rand(40, generator=torch.Generator().manual_seed(4))
    drawn_masked = masked.sample_inactive_by_source(50, weights, torch.Generator().manual_seed(6))
    drawn_csr = csr.sample_inactive_by_source(50, weights, torch.Generator().manual_seed(6))
    assert torch.equal(drawn_masked, drawn_csr)
    assert torch.equal(masked.free_per_source(), csr.free_per_source())


def test_a_layer_of_4e10_positions_is_sampled_from_its_connections_alone():
    """200,000 x 200,000 positions: anything of that size would not fit in memory."""
    generator = torch.Generator().manual_seed(7)
    side = 200_000
    present = torch.sort(sample_absent(torch.zeros(0, dtype=torch.int64), side * side, 5000, generator)).values
    weights = torch.rand(side, generator=generator, dtype=torch.float64) ** 8  # skewed towards a few sources
    drawn = source_weighted_sample(present, (side, side), 3000, weights, generator)
    assert drawn.unique().numel() == 3000
    assert not torch.isin(drawn, present).any()


def test_bad_requests_are_refused_in_one_line():
    present, generator = torch.tensor([0, 4]), torch.Generator()
    for weights, count, message in [
        (torch.ones(5), 1, "one source weight per input unit"),
        (torch.tensor([1.0, float("nan"), 1.0]), 1, "finite"),
        (torch.ones(3), 8, "only 7 positions are free"),
    ]:
        with pytest.raises(UsageError, match=message) as info:
            source_weighted_sample(present, (3, 3), count, weights, generator)
        assert "\n" not in str(info.value)
