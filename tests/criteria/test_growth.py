import pytest
import torch

from evosparse.criteria.growth import source_weighted_growth, uniform_growth
from evosparse.errors import UsageError


def test_uniform_growth_picks_distinct_inactive_positions_only():
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(30, 40, generator=generator) < 0.5
    grown = uniform_growth(mask, 200, generator)
    assert grown.unique().numel() == 200 and not mask.view(-1)[grown].any()
    with pytest.raises(UsageError, match="only"):
        uniform_growth(mask, int((~mask).sum()) + 1, generator)


def test_first_draw_follows_source_weights_then_uniform_target():
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(20, 4, dtype=torch.bool)
    mask[:15, 0] = True  # source 0 has only 5 free targets, which must not change its probability
    weights = torch.tensor([3.0, 1.0, 0.0, 6.0])
    draws = torch.stack([source_weighted_growth(mask, 1, weights, generator) for _ in range(4000)]).view(-1)
    frequencies = torch.bincount(draws % 4, minlength=4).double() / draws.numel()
    assert frequencies.tolist() == pytest.approx((weights / weights.sum()).tolist(), abs=0.025)
    targets = torch.bincount(draws[draws % 4 == 3] // 4, minlength=20).double()
    assert targets.min() > 0.5 * targets.mean()  # targets of one source are uniform


def test_many_draws_exhaust_weighted_sources_before_zero_weight_ones():
    generator = torch.Generator().manual_seed(2)
    mask = torch.zeros(10, 3, dtype=torch.bool)
    grown = source_weighted_growth(mask, 25, torch.tensor([1.0, 0.0, 5.0]), generator)
    assert grown.unique().numel() == 25
    per_source = torch.bincount(grown % 3, minlength=3).tolist()
    assert per_source == [10, 5, 10]


def test_convolution_sources_are_input_channels():
    generator = torch.Generator().manual_seed(3)
    mask = torch.zeros(4, 3, 2, 2, dtype=torch.bool)
    grown = source_weighted_growth(mask, 16, torch.tensor([0.0, 1.0, 0.0]), generator)
    channels = torch.arange(3).view(1, 3, 1, 1).expand(4, 3, 2, 2).reshape(-1)[grown]
    assert (channels == 1).all() and grown.unique().numel() == 16


def test_bad_source_weights_are_refused():
    mask = torch.zeros(5, 3, dtype=torch.bool)
    generator = torch.Generator()
    with pytest.raises(UsageError, match="one source weight per input"):
        source_weighted_growth(mask, 1, torch.ones(5), generator)
    with pytest.raises(UsageError, match="finite"):
        source_weighted_growth(mask, 1, torch.tensor([1.0, float("nan"), 1.0]), generator)
