import pytest
from hypothesis import given
from hypothesis import strategies as st

from evosparse.errors import UsageError
from evosparse.metrics import ara


def ara_by_equation_3(acc, b):
    """LiSET eq. 3 spelled out term by term."""
    n = len(acc)
    c1 = (n - n * b) / (n - 1)
    c2 = n - n * c1
    numerator = 0.0
    for i in range(1, n + 1):
        numerator += acc[i - 1] * (i * c1 + c2)
    return numerator / (n**2 * (b + 1) / 2)


@given(acc=st.lists(st.floats(0, 1), min_size=2, max_size=60), b=st.floats(0.05, 3))
def test_ara_equals_equation_3(acc, b):
    assert ara(acc, b) == pytest.approx(ara_by_equation_3(acc, b), abs=1e-12)


@given(acc=st.lists(st.floats(0, 1), min_size=2, max_size=60))
def test_ara_with_b_one_is_the_mean(acc):
    assert ara(acc, 1.0) == pytest.approx(sum(acc) / len(acc), abs=1e-12)


def test_first_epoch_weighs_b_times_the_last():
    n, b = 10, 0.5
    first = ara([1.0] + [0.0] * (n - 1), b)
    last = ara([0.0] * (n - 1) + [1.0], b)
    assert first / last == pytest.approx(b)
    assert ara([0.7] * n, b) == pytest.approx(0.7)


def test_ara_refuses_empty_input_and_bad_b():
    with pytest.raises(UsageError):
        ara([])
    with pytest.raises(UsageError):
        ara([0.5, 0.6], b=0)
    assert ara([0.8]) == 0.8
