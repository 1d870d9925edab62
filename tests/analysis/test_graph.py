"""Graph metrics of sparse masks against NetworkX, closed forms and hand-computed cases."""

import itertools
import math

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.analysis import degree_gini, graph_metrics, matrix_graph_metrics
from evosparse.errors import UsageError

CONTRACT_KEYS = ("algebraic_connectivity", "degree_gini", "clustering", "avg_shortest_path")


def random_mask(rng: np.random.Generator, n_out: int, n_in: int, density: float) -> torch.Tensor:
    return torch.from_numpy(rng.random((n_out, n_in)) < density)


def layered_networkx(masks: list[torch.Tensor]) -> nx.Graph:
    """The layered graph built node by node, independently of the code under test."""
    sizes = [masks[0].shape[1]] + [mask.shape[0] for mask in masks]
    graph = nx.Graph()
    graph.add_nodes_from((layer, unit) for layer, size in enumerate(sizes) for unit in range(size))
    for k, mask in enumerate(masks):
        for out_unit, in_unit in zip(*np.nonzero(mask.numpy())):
            graph.add_edge((k, in_unit), (k + 1, out_unit))
    return graph


def recurrent_networkx(mask: torch.Tensor) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(mask.shape[0]))
    graph.add_edges_from((i, j) for i, j in zip(*np.nonzero(mask.numpy())) if i != j)
    return graph


def gini_by_pairs(values: list[float]) -> float:
    """Gini as the mean absolute difference over all ordered pairs divided by twice the mean."""
    n, total = len(values), sum(values)
    if total == 0:
        return 0.0
    return sum(abs(a - b) for a, b in itertools.product(values, repeat=2)) / (2 * n * total)


def mean_reachable_distance(graph: nx.Graph) -> float:
    """Mean hop distance over ordered pairs of distinct connected nodes (the documented convention)."""
    lengths = [d for _, row in nx.all_pairs_shortest_path_length(graph) for d in row.values() if d > 0]
    return sum(lengths) / len(lengths) if lengths else 0.0


def assert_matches_networkx(metrics: dict, graph: nx.Graph) -> None:
    assert metrics["nodes"] == graph.number_of_nodes()
    assert metrics["edges"] == graph.number_of_edges()
    assert metrics["components"] == nx.number_connected_components(graph)
    assert metrics["isolated_nodes"] == nx.number_of_isolates(graph)
    # tracemin_lu: NetworkX's default tracemin_pcg now and then never converges on tiny graphs.
    expected_connectivity = nx.algebraic_connectivity(graph, tol=1e-10, method="tracemin_lu") if len(graph) > 1 else 0.0
    assert metrics["algebraic_connectivity"] == pytest.approx(expected_connectivity, abs=1e-6)
    assert metrics["degree_gini"] == pytest.approx(gini_by_pairs([d for _, d in graph.degree()]), abs=1e-12)
    assert metrics["clustering"] == pytest.approx(nx.transitivity(graph), abs=1e-12)
    assert metrics["avg_shortest_path"] == pytest.approx(mean_reachable_distance(graph), abs=1e-12)
    if nx.is_connected(graph) and len(graph) > 1:
        expected_mean = nx.average_shortest_path_length(graph)
        assert metrics["avg_shortest_path"] == pytest.approx(expected_mean, abs=1e-12)


@st.composite
def layered_stacks(draw) -> list[torch.Tensor]:
    sizes = draw(st.lists(st.integers(1, 7), min_size=2, max_size=5))
    density = draw(st.floats(0.15, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [random_mask(rng, n_out, n_in, density) for n_in, n_out in itertools.pairwise(sizes)]


@st.composite
def square_masks(draw) -> torch.Tensor:
    n = draw(st.integers(1, 12))
    density = draw(st.floats(0.05, 1.0))
    return random_mask(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), n, n, density)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(layered_stacks())
def test_layered_graph_matches_networkx(masks):
    metrics = graph_metrics(masks)
    assert metrics["bipartite"] and metrics["exact"] and metrics["sampled_sources"] is None
    assert_matches_networkx(metrics, layered_networkx(masks))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(square_masks())
def test_recurrent_matrix_matches_networkx(mask):
    metrics = matrix_graph_metrics(mask, square_as_recurrent=True)
    assert not metrics["bipartite"]
    assert_matches_networkx(metrics, recurrent_networkx(mask))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(square_masks())
def test_square_matrix_not_recurrent_is_one_bipartite_layer(mask):
    assert matrix_graph_metrics(mask, square_as_recurrent=False) == graph_metrics([mask])


def test_contract_values_are_python_floats():
    metrics = graph_metrics([random_mask(np.random.default_rng(0), 5, 6, 0.5)])
    assert all(type(metrics[key]) is float for key in CONTRACT_KEYS)


def test_hand_computed_star():
    # One output fed by three inputs: the star K_{1,3}. Laplacian spectrum 0, 1, 1, 4; degrees 1, 1, 1, 3
    # (Gini 0.25); distances 1 (three pairs) and 2 (three pairs), mean 1.5.
    metrics = graph_metrics([torch.tensor([[1, 1, 1]])])
    assert metrics["algebraic_connectivity"] == pytest.approx(1.0)
    assert metrics["degree_gini"] == pytest.approx(0.25)
    assert metrics["clustering"] == 0.0
    assert metrics["avg_shortest_path"] == pytest.approx(1.5)


def test_hand_computed_triangle_and_path():
    # A 3-cycle as a recurrent matrix: K_3, spectrum 0, 3, 3, every triple closed, all pairs adjacent.
    triangle = matrix_graph_metrics(torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0]]), square_as_recurrent=True)
    assert triangle["algebraic_connectivity"] == pytest.approx(3.0)
    assert (triangle["degree_gini"], triangle["clustering"], triangle["avg_shortest_path"]) == (0.0, 1.0, 1.0)
    # Chain 1-1-1: the path P_3, spectrum 0, 1, 3; degrees 1, 2, 1 give Gini 1/6; mean distance 4/3.
    path = graph_metrics([torch.ones(1, 1), torch.ones(1, 1)])
    assert path["algebraic_connectivity"] == pytest.approx(1.0)
    assert path["degree_gini"] == pytest.approx(1 / 6)
    assert path["avg_shortest_path"] == pytest.approx(4 / 3)


def test_gini_hand_computed_values():
    assert degree_gini([2, 2, 2]) == 0.0
    assert degree_gini([0, 0, 0, 5]) == pytest.approx(0.75)  # (n - 1) / n: one node holds everything
    assert degree_gini([1, 2, 3, 4]) == pytest.approx(0.25)  # sum |xi - xj| = 20, 2 * n^2 * mean = 80
    assert degree_gini([0, 0]) == 0.0


def test_recurrent_diagonal_ignored_and_reciprocal_pair_is_one_edge():
    metrics = matrix_graph_metrics(torch.ones(2, 2), square_as_recurrent=True)
    assert (metrics["nodes"], metrics["edges"]) == (2, 1)
    assert metrics["algebraic_connectivity"] == pytest.approx(2.0)


def test_disconnected_graphs_have_zero_connectivity():
    rng = np.random.default_rng(1)
    first = random_mask(rng, 20, 30, 0.5)
    first[:, 7] = False  # input 7 has no connection
    layered = graph_metrics([first, random_mask(rng, 10, 20, 0.5)])
    assert layered["algebraic_connectivity"] == 0.0
    assert (layered["components"], layered["isolated_nodes"]) == (2, 1)

    blocks = torch.block_diag(random_mask(rng, 60, 60, 0.3), random_mask(rng, 50, 50, 0.3))
    for exact_limit in (10_000, 0):  # dense and sparse paths
        recurrent = matrix_graph_metrics(blocks, square_as_recurrent=True, exact_limit=exact_limit)
        assert recurrent["components"] == 2
        assert recurrent["algebraic_connectivity"] == 0.0
        assert recurrent["avg_shortest_path"] > 1.0


def ring_mask(n: int) -> torch.Tensor:
    """Each unit feeds the next two around a ring: the circulant graph C_n(1, 2)."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    units = torch.arange(n)
    mask[units, (units + 1) % n] = True
    mask[units, (units + 2) % n] = True
    return mask


def two_communities_mask(rng: np.random.Generator, n: int) -> torch.Tensor:
    """Two dense halves joined by three connections: a small, isolated Fiedler value."""
    half = n // 2
    mask = torch.block_diag(random_mask(rng, half, half, 0.2), random_mask(rng, n - half, n - half, 0.2))
    mask[0, half] = mask[5, half + 9] = mask[half + 3, 11] = True
    return mask


@pytest.mark.parametrize(
    ("build", "recurrent"),
    [
        (lambda rng: [random_mask(rng, 200, 300, 0.05), random_mask(rng, 100, 200, 0.05)], False),
        (lambda rng: ring_mask(500), True),
        (lambda rng: two_communities_mask(rng, 600), True),
    ],
    ids=["layered", "ring", "communities"],
)
def test_sparse_eigensolver_equals_dense(build, recurrent):
    masks = build(np.random.default_rng(2))
    if recurrent:
        dense = matrix_graph_metrics(masks, square_as_recurrent=True)
        sparse = matrix_graph_metrics(masks, square_as_recurrent=True, exact_limit=0)
    else:
        dense, sparse = graph_metrics(masks), graph_metrics(masks, exact_limit=0)
    assert dense["exact"] and not sparse["exact"]
    assert dense["components"] == 1
    assert sparse["algebraic_connectivity"] == pytest.approx(dense["algebraic_connectivity"], rel=1e-9)


def test_ring_connectivity_matches_closed_form():
    # Circulant C_n(1, 2): Laplacian eigenvalues 4 - 2 cos(2 pi k / n) - 2 cos(4 pi k / n); k = 1 is the
    # smallest non-zero one (and it is double, which a Lanczos solver must still get right).
    n = 500
    expected = 4 - 2 * math.cos(2 * math.pi / n) - 2 * math.cos(4 * math.pi / n)
    for exact_limit in (10_000, 0):
        metrics = matrix_graph_metrics(ring_mask(n), square_as_recurrent=True, exact_limit=exact_limit)
        assert metrics["algebraic_connectivity"] == pytest.approx(expected, rel=1e-8)
        assert metrics["clustering"] == pytest.approx(0.5)  # 3 * n triangles / (n * C(4, 2)) triples


def test_sampled_shortest_path_is_close_to_exact():
    rng = np.random.default_rng(3)
    layered = [random_mask(rng, 300, 400, 0.01), random_mask(rng, 200, 300, 0.02)]
    recurrent = two_communities_mask(rng, 600)
    cases = [
        (graph_metrics, layered, {}),
        (matrix_graph_metrics, recurrent, {"square_as_recurrent": True}),
    ]
    for metric_function, masks, options in cases:
        exact = metric_function(masks, **options)
        sampled = metric_function(masks, exact_limit=100, path_sources=64, seed=5, **options)
        assert sampled["sampled_sources"] == 64 and not sampled["exact"]
        assert sampled["avg_shortest_path"] != exact["avg_shortest_path"]
        assert sampled["avg_shortest_path"] == pytest.approx(exact["avg_shortest_path"], rel=0.05)  # ~4 sigma
        again = metric_function(masks, exact_limit=100, path_sources=64, seed=5, **options)
        assert again["avg_shortest_path"] == sampled["avg_shortest_path"]


def test_enough_sources_gives_the_exact_mean():
    masks = [random_mask(np.random.default_rng(4), 30, 40, 0.1)]
    metrics = graph_metrics(masks, exact_limit=10, path_sources=70)
    assert metrics["sampled_sources"] is None
    assert metrics["avg_shortest_path"] == graph_metrics(masks)["avg_shortest_path"]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_mask_representations_agree():
    boolean = random_mask(np.random.default_rng(5), 8, 9, 0.4)
    expected = matrix_graph_metrics(boolean, square_as_recurrent=False)
    for representation in (
        boolean.float(),
        boolean.to(torch.bfloat16),
        boolean.numpy(),
        boolean.int().tolist(),
        boolean.float().to_sparse(),
        boolean.float().to_sparse_csr(),
    ):
        assert matrix_graph_metrics(representation, square_as_recurrent=False) == expected


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: graph_metrics([]), "empty"),
        (lambda: graph_metrics([torch.ones(3, 4), torch.ones(2, 4)]), "masks[1] has shape (2, 4)"),
        (lambda: graph_metrics([torch.ones(4)]), "2-D"),
        (lambda: graph_metrics([torch.ones(2, 3, 4)]), "2-D"),
        (lambda: graph_metrics([torch.ones(0, 3)]), "empty dimension"),
        (lambda: graph_metrics([torch.full((2, 2), 0.5)]), "0/1"),
        (lambda: graph_metrics([torch.tensor([[1.0, float("nan")]])]), "0/1"),
        (lambda: graph_metrics(torch.ones(3, 3)), "list"),
        (lambda: graph_metrics([object()]), "not a tensor"),
        (lambda: graph_metrics([torch.ones(2, 2)], exact_limit=-1), "exact_limit"),
        (lambda: graph_metrics([torch.ones(2, 2)], path_sources=0), "path_sources"),
        (lambda: matrix_graph_metrics(torch.ones(3), square_as_recurrent=True), "2-D"),
        (lambda: degree_gini([1, -1]), "non-negative"),
        (lambda: degree_gini([1, float("nan")]), "non-negative"),
    ],
)
def test_bad_input_raises_one_line_usage_error(call, message):
    with pytest.raises(UsageError) as caught:
        call()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
