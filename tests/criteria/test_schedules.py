import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evosparse.criteria.schedules import cosine_update_fraction, cubic_sparsity, last_update_step
from evosparse.errors import UsageError


@pytest.mark.parametrize("alpha, end_step", [(0.3, 750.0), (0.5, 75.0), (1.0, 1.0)])
def test_cosine_fraction_is_rigl_formula(alpha, end_step):
    for step in [0, 1, end_step / 4, end_step / 3, end_step / 2, 0.9 * end_step, end_step]:
        expected = alpha / 2 * (1 + math.cos(step * math.pi / end_step))
        assert cosine_update_fraction(step, alpha, end_step) == pytest.approx(expected, abs=1e-15)
    assert cosine_update_fraction(0, alpha, end_step) == alpha
    assert cosine_update_fraction(end_step / 2, alpha, end_step) == pytest.approx(alpha / 2)
    assert cosine_update_fraction(end_step, alpha, end_step) == pytest.approx(0.0, abs=1e-15)


def test_cosine_fraction_decreases_and_is_clamped_outside_the_schedule():
    values = [cosine_update_fraction(step, 0.3, 100) for step in range(-10, 131)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert cosine_update_fraction(-5, 0.3, 100) == 0.3
    assert cosine_update_fraction(150, 0.3, 100) == cosine_update_fraction(100, 0.3, 100)


def test_cubic_sparsity_is_zhu_and_gupta_formula():
    begin, end, initial, final = 100.0, 900.0, 0.1, 0.95
    for step in [100, 150, 333, 500, 899, 900]:
        expected = final + (initial - final) * (1 - (step - begin) / (end - begin)) ** 3
        assert cubic_sparsity(step, initial, final, begin, end) == pytest.approx(expected, abs=1e-15)
    assert cubic_sparsity(500, 0.0, 0.8, 100, 900) == pytest.approx(0.8 * 7 / 8)  # halfway: 1 - (1/2)^3


def test_cubic_sparsity_starts_and_ends_exactly_and_is_monotone():
    assert cubic_sparsity(0, 0.0, 0.9, 10, 50) == 0.0
    assert cubic_sparsity(10, 0.0, 0.9, 10, 50) == 0.0
    assert cubic_sparsity(50, 0.0, 0.9, 10, 50) == 0.9
    assert cubic_sparsity(70, 0.0, 0.9, 10, 50) == 0.9
    values = [cubic_sparsity(step, 0.0, 0.9, 10, 50) for step in range(0, 60)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    gains = [b - a for a, b in zip(values[10:50], values[11:51])]
    assert all(a > b for a, b in zip(gains, gains[1:]))  # fast at first, slow near the target


@given(period=st.integers(1, 12), limit=st.floats(-3.0, 80.0))
def test_last_update_step_matches_brute_force(period, limit):
    multiples = [k * period for k in range(1, 100) if k * period < limit]
    assert last_update_step(period, limit) == (multiples[-1] if multiples else 0)


def test_last_update_step_with_a_product_that_rounds_above_an_integer():
    limit = 0.55 * 100  # 55.00000000000001: step 55 is still strictly below it
    assert last_update_step(5, limit) == 55
    assert last_update_step(5, 55.0) == 50


def test_schedules_refuse_empty_or_inverted_ranges():
    with pytest.raises(UsageError, match="positive"):
        cosine_update_fraction(1, 0.3, 0)
    with pytest.raises(UsageError, match="end after it begins"):
        cubic_sparsity(1, 0.0, 0.9, 50, 50)
    with pytest.raises(UsageError, match="at least one step"):
        last_update_step(0, 10)
