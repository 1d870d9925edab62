"""Seed statistics: Student-t confidence intervals, Welch's t-test (checked against its formula), and verdicts
that never call a method better than the best unless the test supports it."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import t as student_t

from evosparse.analysis.significance import compare_to_baseline, confidence_interval, welch_p


def test_the_interval_is_mean_plus_minus_t_times_the_standard_error():
    low, high = confidence_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 degrees of freedom); sample std 1
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert confidence_interval([0.9]) is None


def welch_by_formula(a, b):
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * student_t.sf(abs(t), df)


@pytest.mark.parametrize(
    ("a", "b"),
    [([0.97, 0.975, 0.972], [0.971, 0.969, 0.9705]), ([0.5, 0.6, 0.7, 0.65], [0.9, 0.91]), ([1, 2], [5, 9, 7])],
)
def test_welch_p_follows_the_welch_satterthwaite_formula(a, b):
    assert welch_p(a, b) == pytest.approx(welch_by_formula(a, b))


def test_samples_without_spread_and_single_seeds():
    assert welch_p([0.9, 0.9], [0.9, 0.9, 0.9]) == 1.0 and welch_p([0.9, 0.9], [0.8, 0.8]) == 0.0
    assert welch_p([0.9], [0.8, 0.7]) is None


def test_verdicts_say_lower_only_when_the_test_supports_it():
    report = compare_to_baseline(
        {
            "set": [0.980, 0.981, 0.979],
            "static": [0.950, 0.951, 0.949],  # far below SET: a real difference
            "rigl": [0.983, 0.970, 0.975],  # a lower mean, but within the noise
        },
        "set",
    )
    assert report["best"] == report["baseline"] == "set"
    verdicts = {method: entry["verdict"] for method, entry in report["methods"].items()}
    assert verdicts == {"set": "baseline", "static": "lower", "rigl": "not distinguishable"}
    assert report["methods"]["set"]["p"] is None and report["methods"]["rigl"]["p"] >= 0.05
    assert report["methods"]["static"]["p"] < 0.05
    assert report["methods"]["rigl"]["ci95"] == pytest.approx(list(confidence_interval([0.983, 0.970, 0.975])))


def test_for_a_loss_the_best_is_the_lowest_and_one_seed_is_not_tested():
    report = compare_to_baseline({"a": [40.0], "b": [35.0]}, "b", higher_is_better=False)
    assert report["best"] == "b" and report["methods"]["a"]["verdict"] == "not testable"
    assert report["methods"]["a"]["ci95"] is None


def test_the_baseline_need_not_be_the_best_and_must_be_compared():
    report = compare_to_baseline({"static": [0.950, 0.951, 0.949], "set": [0.980, 0.981, 0.979]}, "static")
    assert report["best"] == "set" and report["baseline"] == "static"
    assert report["methods"]["set"]["verdict"] == "higher" and report["methods"]["static"]["p"] is None
    with pytest.raises(ValueError, match="baseline 'rigl'"):
        compare_to_baseline({"set": [0.9, 0.8]}, "rigl")
