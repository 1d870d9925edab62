"""Path statistics against brute-force enumeration; quantiles, uniform sampler, extremes, errors."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from evosparse.criteria.path_weight import (
    MAX_EXACT_PATHS,
    log_path_importance,
    path_quantile,
    path_statistics,
    sample_paths,
)
from evosparse.errors import UsageError

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

FAST = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class BruteForce:
    """Every statistic of a small network, by listing all node sequences with itertools.product."""

    paths: np.ndarray  # (M, L + 1) node indices of the real paths
    importance: np.ndarray  # (M,) product of A along each path
    node_importance: list[np.ndarray]
    edge_max_path: list[np.ndarray]
    edge_path_count: list[np.ndarray]


def brute_force(mats: list[np.ndarray]) -> BruteForce:
    widths = [mats[0].shape[0]] + [m.shape[1] for m in mats]
    candidates = np.array(list(itertools.product(*map(range, widths))), dtype=np.int64)
    along = np.stack([m[candidates[:, k], candidates[:, k + 1]] for k, m in enumerate(mats)], axis=1)
    real = (along > 0).all(axis=1)
    paths, importance = candidates[real], along[real].prod(axis=1)
    node_importance = [np.bincount(paths[:, k], weights=importance, minlength=w) for k, w in enumerate(widths)]
    edge_max_path, edge_path_count = [], []
    for k, m in enumerate(mats):
        strongest, count = np.zeros(m.shape), np.zeros(m.shape)
        np.maximum.at(strongest, (paths[:, k], paths[:, k + 1]), importance)
        np.add.at(count, (paths[:, k], paths[:, k + 1]), 1.0)
        edge_max_path.append(strongest)
        edge_path_count.append(count)
    return BruteForce(paths, importance, node_importance, edge_max_path, edge_path_count)


@st.composite
def small_nets(draw: st.DrawFn, max_layers: int = 5, max_width: int = 5) -> list[np.ndarray]:
    """1-5 layers of widths 1-5, magnitudes spread over orders of magnitude, and often many zeros
    (so that empty rows and columns, dead-end nodes and path-less nets all occur)."""
    widths = draw(st.lists(st.integers(1, max_width), min_size=2, max_size=max_layers + 1))
    zero_fraction = draw(st.sampled_from([0.0, 0.3, 0.6, 0.85]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [
        np.where(rng.random((a, b)) < zero_fraction, 0.0, rng.lognormal(0.0, 2.0, (a, b)))
        for a, b in itertools.pairwise(widths)
    ]


def tensors(mats: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(m) for m in mats]


def close(expected, rel: float = 1e-9):
    """pytest.approx with a purely relative tolerance (its default absolute 1e-12 would accept any
    tiny value, e.g. 0 for 1e-300)."""
    return pytest.approx(expected, rel=rel, abs=0)


def dense(t: torch.Tensor) -> np.ndarray:
    return (t.to_dense() if t.layout != torch.strided else t).numpy()


def nearest_rank(q: float, count: int) -> int:
    """Rank (1-based) of the lower q-quantile among `count` sorted values, q read as a decimal."""
    return max(1, math.ceil(Fraction(repr(q)) * count))


def assert_matches_brute_force(stats, expected: BruteForce) -> None:
    assert stats.total_paths == len(expected.importance)
    for got, want in zip(stats.node_importance, expected.node_importance, strict=True):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=0)
    for got, want in zip(stats.edge_max_path, expected.edge_max_path, strict=True):
        np.testing.assert_allclose(dense(got), want, rtol=1e-10, atol=0)
    for got, want in zip(stats.edge_path_count, expected.edge_path_count, strict=True):
        assert got.dtype == torch.float64
        np.testing.assert_array_equal(dense(got), want)


NO_PATH = [np.array([[1.0, 2.0], [0.5, 0.0]]), np.array([[0.0], [0.0]])]
DEAD_ENDS = [
    np.array([[1.0, 0.0, 3.0]]),
    np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]]),
    np.array([[0.0], [5.0]]),
]


@FAST
@given(small_nets())
@example(NO_PATH)
@example(DEAD_ENDS)
def test_statistics_match_brute_force(mats):
    assert_matches_brute_force(path_statistics(tensors(mats)), brute_force(mats))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(small_nets(), st.sampled_from([torch.sparse_coo, torch.sparse_csr]))
def test_sparse_inputs_give_the_same_statistics_in_their_own_layout(mats, layout):
    def to_layout(m: torch.Tensor) -> torch.Tensor:
        return m.to_sparse_coo() if layout == torch.sparse_coo else m.to_sparse_csr()

    stats = path_statistics([to_layout(m) for m in tensors(mats)])
    assert all(t.layout == layout for t in stats.edge_max_path + stats.edge_path_count)
    assert_matches_brute_force(stats, brute_force(mats))


def test_explicit_zeros_in_a_sparse_tensor_are_absent_connections():
    indices = torch.tensor([[0, 0, 1], [0, 1, 1]])
    values = torch.tensor([2.0, 0.0, 3.0])
    with_zero = torch.sparse_coo_tensor(indices, values, (2, 2), check_invariants=True)
    second = torch.tensor([[1.0], [1.0]])
    stats = path_statistics([with_zero, second])
    assert stats.total_paths == 2
    np.testing.assert_array_equal(dense(stats.edge_path_count[0]), [[1, 0], [0, 1]])


def test_net_without_paths_is_all_zero_and_has_no_quantile():
    stats = path_statistics(tensors(NO_PATH))
    assert stats.total_paths == 0
    assert all(not t.any() for t in stats.node_importance + stats.edge_max_path + stats.edge_path_count)
    with pytest.raises(UsageError, match="no input-to-output path"):
        path_quantile(tensors(NO_PATH), 0.5)
    with pytest.raises(UsageError, match="no input-to-output path"):
        path_quantile(tensors(NO_PATH), 0.5, samples=10)
    with pytest.raises(UsageError, match="no input-to-output path"):
        sample_paths(tensors(NO_PATH), 10)


def test_connections_into_dead_ends_carry_no_path():
    stats = path_statistics(tensors(DEAD_ENDS))
    # input 0 -> hidden 0 -> hidden' 0 stops: hidden' 0 has no connection to the output
    assert stats.edge_path_count[0][0, 0] == 0 and stats.edge_max_path[0][0, 0] == 0
    assert stats.edge_max_path[0][0, 2] == close(3.0 * 4.0 * 5.0)
    assert stats.total_paths == 1


@FAST
@given(small_nets())
def test_every_layer_of_nodes_shares_the_total_path_importance(mats):
    stats = path_statistics(tensors(mats))
    totals = [float(t.sum()) for t in stats.node_importance]
    assert totals == close([totals[0]] * len(totals), rel=1e-10)


def test_boolean_masks_make_node_importance_a_path_count():
    rng = np.random.default_rng(3)
    masks = [torch.from_numpy(rng.random(shape) < 0.6) for shape in [(4, 5), (5, 3), (3, 2)]]
    stats = path_statistics(masks)
    expected = brute_force([m.numpy().astype(float) for m in masks])
    for got, paths_through in zip(stats.node_importance, expected.node_importance, strict=True):
        np.testing.assert_allclose(got.numpy(), paths_through, rtol=1e-12)


def test_inputs_are_not_modified():
    mats = tensors(DEAD_ENDS)
    before = [m.clone() for m in mats]
    path_statistics(mats)
    path_quantile(mats, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(mats, before, strict=True))


@FAST
@given(small_nets(), st.integers(0, 100).map(lambda i: i / 100))
def test_exact_quantile_matches_brute_force(mats, q):
    importance = np.sort(brute_force(mats).importance)
    assume(importance.size > 0)
    expected = importance[nearest_rank(q, importance.size) - 1]
    assert path_quantile(tensors(mats), q) == close(expected, rel=1e-10)


@pytest.mark.parametrize(("q", "value"), [(0.0, 1), (0.1, 1), (0.15, 2), (0.5, 5), (0.7, 7), (0.99, 10), (1.0, 10)])
def test_quantile_is_the_lower_nearest_rank_one(q, value):
    one_layer = [torch.tensor([[3.0, 7.0, 1.0, 10.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]])]
    assert path_quantile(one_layer, q) == close(value)
    # one input node and ten equally likely paths: 2000 samples surely contain the extremes
    sampled = path_quantile(one_layer, q, samples=2000, generator=torch.Generator().manual_seed(1))
    assert sampled == close(round(sampled)) and 1 <= round(sampled) <= 10
    if q in (0.0, 1.0):
        assert sampled == close(value)


def medium_net(seed: int) -> list[np.ndarray]:
    """About ten thousand paths of widely spread importance."""
    rng = np.random.default_rng(seed)
    widths = [8, 10, 12, 10, 6]
    return [
        np.where(rng.random((a, b)) < 0.5, 0.0, rng.lognormal(0.0, 1.5, (a, b))) for a, b in itertools.pairwise(widths)
    ]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("q", [0.02, 0.1, 0.5, 0.9])
def test_sampled_quantile_is_within_a_few_percent_in_rank(seed, q):
    mats = medium_net(seed)
    importance = np.sort(brute_force(mats).importance)
    assert importance.size > 2000
    generator = torch.Generator().manual_seed(seed)
    estimate = path_quantile(tensors(mats), q, samples=20_000, generator=generator)
    lowest_rank = np.searchsorted(importance, estimate * (1 - 1e-9), side="left") / importance.size
    highest_rank = np.searchsorted(importance, estimate * (1 + 1e-9), side="right") / importance.size
    assert lowest_rank - 0.02 <= q <= highest_rank + 0.02
    assert path_quantile(tensors(mats), q) == close(importance[nearest_rank(q, importance.size) - 1])


# Input 0 starts 1 path, input 1 starts 7: a walk choosing uniformly among connections would pick
# the single path far too often, so only count-weighted sampling passes the uniformity test.
UNBALANCED = [
    np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]),
    np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]),
    np.array([[0.5, 0.0], [2.0, 3.0], [0.0, 1.5], [4.0, 0.25]]),
]


def test_sampler_draws_every_path_equally_often():
    expected = brute_force(UNBALANCED)
    samples = 45_000
    drawn = sample_paths(tensors(UNBALANCED), samples, generator=torch.Generator().manual_seed(7))
    assert drawn.shape == (samples, 4) and drawn.dtype == torch.int64
    index = {tuple(p): i for i, p in enumerate(expected.paths.tolist())}
    assert len(index) == 8
    counts = np.bincount([index[tuple(p)] for p in drawn.tolist()], minlength=len(index))
    assert chisquare(counts).pvalue > 1e-3
    assert np.abs(counts / samples - 1 / len(index)).max() < 0.01


def test_sampler_is_reproducible_with_a_generator():
    first = sample_paths(tensors(UNBALANCED), 100, generator=torch.Generator().manual_seed(5))
    again = sample_paths(tensors(UNBALANCED), 100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, again)


@FAST
@given(small_nets())
def test_sampled_paths_are_real_and_log_importance_matches_the_product(mats):
    expected = brute_force(mats)
    assume(expected.importance.size > 0)
    np.testing.assert_allclose(
        log_path_importance(tensors(mats), torch.from_numpy(expected.paths)).numpy(),
        np.log(expected.importance),
        rtol=1e-12,
        atol=1e-12,
    )
    drawn = sample_paths(tensors(mats), 50, generator=torch.Generator().manual_seed(0))
    real = {tuple(p) for p in expected.paths.tolist()}
    assert all(tuple(p) in real for p in drawn.tolist())


def test_log_importance_of_a_sequence_using_an_absent_connection_is_minus_inf():
    got = log_path_importance(tensors(DEAD_ENDS), torch.tensor([[0, 2, 1, 0], [0, 0, 0, 0]]))
    assert got[0] == close(math.log(60.0)) and got[1] == -math.inf


def test_tiny_weights_in_ten_layers_do_not_underflow():
    rng = np.random.default_rng(0)
    masks = [rng.random((3, 3)) < 0.8 for _ in range(10)]
    mats = [np.where(m, 1e-30, 0.0) for m in masks]
    expected = brute_force([m.astype(float) for m in masks])  # path counts
    assert expected.importance.size > 0
    stats = path_statistics(tensors(mats))
    for got, paths_through in zip(stats.node_importance, expected.node_importance, strict=True):
        np.testing.assert_allclose(got.numpy(), paths_through * 1e-300, rtol=1e-9)
    for got, count in zip(stats.edge_max_path, stats.edge_path_count, strict=True):
        np.testing.assert_allclose(got.numpy(), np.where(count.numpy() > 0, 1e-300, 0.0), rtol=1e-9)
    assert path_quantile(tensors(mats), 0.5) == close(1e-300)
    assert path_quantile(tensors(mats), 0.5, samples=100) == close(1e-300)


@pytest.mark.parametrize("first", [1e-60, 1e60])
def test_scales_beyond_float64_cancel_along_the_path(first):
    """Six layers of `first` then six of 1/`first`: every path has importance 1, although a partial
    product (what a plain float64 recursion would hold) reaches 1e-360 or 1e+360."""
    mats = [np.full((2, 2), first)] * 6 + [np.full((2, 2), 1 / first)] * 6
    stats = path_statistics(tensors(mats))
    for got in stats.node_importance:
        np.testing.assert_allclose(got.numpy(), 2.0**12, rtol=1e-9)  # 2**13 paths, half through each node
    for got in stats.edge_max_path:
        np.testing.assert_allclose(got.numpy(), 1.0, rtol=1e-9)
    assert path_quantile(tensors(mats), 0.3) == close(1.0)


def test_huge_path_counts_stay_finite_and_sampleable():
    width, depth = 64, 40
    mats = [torch.full((width, width), 0.5, dtype=torch.float64)] * depth
    stats = path_statistics(mats)
    assert stats.total_paths == close(float(width) ** (depth + 1), rel=1e-12)
    for count in stats.edge_path_count:
        np.testing.assert_allclose(count.numpy(), float(width) ** (depth - 1), rtol=1e-12)
    for importance in stats.node_importance:
        np.testing.assert_allclose(importance.numpy(), float(width) ** depth * 0.5**depth, rtol=1e-9)
    for strongest in stats.edge_max_path:
        np.testing.assert_allclose(strongest.numpy(), 0.5**depth, rtol=1e-9)
    assert path_quantile(mats, 0.1, samples=1000) == close(0.5**depth)
    with pytest.raises(UsageError, match="samples=N"):
        path_quantile(mats, 0.1)


def test_exact_quantile_refuses_more_than_the_limit():
    side = round(MAX_EXACT_PATHS ** (1 / 3)) + 2  # side**3 paths, just above the limit
    mats = [
        torch.ones(1, side),
        torch.ones(side, side),
        torch.ones(side, side),
        torch.ones(side, 1),
    ]
    with pytest.raises(UsageError, match="limit"):
        path_quantile(mats, 0.5)


GOOD = torch.ones(2, 2)
BAD_WEIGHTS = {
    "empty list": [],
    "single tensor": GOOD,
    "numpy array": [np.ones((2, 2))],
    "1-D": [torch.ones(3)],
    "3-D": [torch.ones(2, 2, 2)],
    "empty dimension": [torch.ones(0, 2)],
    "shapes do not chain": [torch.ones(2, 3), torch.ones(2, 2)],
    "negative": [torch.tensor([[1.0, -0.1]])],
    "nan": [torch.tensor([[1.0, math.nan]])],
    "inf": [torch.tensor([[math.inf, 1.0]])],
    "complex": [torch.ones(2, 2, dtype=torch.complex64)],
    "negative sparse": [torch.sparse_coo_tensor([[0], [1]], [-2.0], (1, 2), check_invariants=True)],
}


@pytest.mark.parametrize("weights", BAD_WEIGHTS.values(), ids=BAD_WEIGHTS.keys())
@pytest.mark.parametrize(
    "call",
    [path_statistics, lambda w: path_quantile(w, 0.5), lambda w: sample_paths(w, 3)],
    ids=["stats", "quantile", "sample"],
)
def test_bad_weights_are_usage_errors_with_one_line(weights, call):
    with pytest.raises(UsageError) as error:
        call(weights)
    assert "\n" not in str(error.value) and str(error.value)


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan, True, "0.5", None])
def test_bad_quantile_is_a_usage_error(q):
    with pytest.raises(UsageError, match="quantile q"):
        path_quantile([GOOD], q)


@pytest.mark.parametrize("samples", [0, -3, True, 2.5, "10"])
def test_bad_sample_count_is_a_usage_error(samples):
    with pytest.raises(UsageError, match="samples"):
        path_quantile([GOOD], 0.5, samples=samples)
    with pytest.raises(UsageError, match="samples"):
        sample_paths([GOOD], samples)


@pytest.mark.parametrize(
    "paths",
    [
        torch.tensor([[0, 1]]),
        torch.tensor([0, 1, 1]),
        torch.tensor([[0.0, 1.0, 1.0]]),
        torch.tensor([[0, 2, 1]]),
        [[0, 1, 1]],
    ],
)
def test_bad_paths_are_usage_errors(paths):
    with pytest.raises(UsageError, match="paths"):
        log_path_importance([GOOD, GOOD], paths)
