"""Is a difference between methods more than seed noise? Confidence intervals and Welch's t-test over seeds.

A comparison of three seeds per method easily shows a 0.1-point difference that the next three seeds
reverse. Each method's headline number (test accuracy at the validation-selected epoch, or the final
one for runs without validation) gets a 95% confidence interval for its mean, from Student's t with
n − 1 degrees of freedom: mean ± t₀.₉₇₅,ₙ₋₁ · s/√n. Each method is then tested against a baseline
method (``compare --baseline``, by default the first one listed) with Welch's two-sided t-test
(unequal variances, scipy's ``ttest_ind(equal_var=False)``): with p < 0.05 the difference is called
significant, otherwise the two are "not distinguishable" — never "better" or "worse". With one seed
there is no interval and no test (``None``, "not testable").

The baseline is chosen before the data are seen (not "the best", a choice made after looking); the
p-values are still not corrected for testing several methods against it, so read a p just below 0.05
among many methods with care.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

LEVEL = 0.95
ALPHA = 0.05


def confidence_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The two-sided Student-t confidence interval of the mean of ``values``; None for fewer than two."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch's two-sided t-test p-value for equal means; None with fewer than two values in either sample.

    Two samples without any spread are decided directly (the t statistic is 0/0 or ±∞): p = 1 when their
    values are equal, 0 when they differ.
    """
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare_to_baseline(
    values: Mapping[str, Sequence[float]], baseline: str, higher_is_better: bool = True
) -> dict[str, Any]:
    """Per method: ``mean``, ``ci95`` ([low, high] or None), and the test against ``baseline`` —
    ``p`` (None for the baseline itself and with one seed) and ``verdict``: ``"baseline"``,
    ``"lower"``/``"higher"`` (p < 0.05; lower or higher mean than the baseline), ``"not distinguishable"``
    or ``"not testable"``. ``best`` names the method with the best mean, for information: it is a
    ranking only where its verdict against the others says so."""
    if baseline not in values:
        raise ValueError(f"the baseline {baseline!r} is not among the compared methods")
    means = {method: statistics.fmean(v) for method, v in values.items()}
    best = (max if higher_is_better else min)(means, key=lambda method: means[method])
    report: dict[str, Any] = {"baseline": baseline, "best": best, "level": LEVEL, "alpha": ALPHA, "methods": {}}
    for method, sample in values.items():
        interval = confidence_interval(sample)
        p = None if method == baseline else welch_p(sample, values[baseline])
        if method == baseline:
            verdict = "baseline"
        elif p is None:
            verdict = "not testable"
        elif p < ALPHA:
            verdict = "lower" if means[method] < means[baseline] else "higher"
        else:
            verdict = "not distinguishable"
        report["methods"][method] = {
            "mean": means[method],
            "ci95": None if interval is None else list(interval),
            "p": p,
            "verdict": verdict,
        }
    return report
