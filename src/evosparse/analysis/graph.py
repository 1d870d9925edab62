"""Graph metrics of a sparse connectivity pattern, as tracked over training by Adaptive Weight Sparsity.

The AWS paper (anonymous, ICLR 2018 submission, Section 5.2 and Figure 5) reads each sparse weight pattern
as an undirected, unweighted graph and follows four statistics: algebraic connectivity, the Gini
coefficient of node degrees, the global clustering coefficient and the mean shortest-path length.

Two ways to turn masks into a graph:

* :func:`graph_metrics` takes the masks of a feed-forward stack. ``masks[k]`` has the orientation of
  ``nn.Linear.weight``: shape ``(n_out, n_in)`` of layer ``k``, so ``masks[k + 1].shape[1] ==
  masks[k].shape[0]``. The nodes are the ``n_in`` input neurons of ``masks[0]`` followed by the outputs
  of every layer in order; an active entry ``masks[k][i, j]`` joins input ``j`` of layer ``k`` to its
  output ``i``. Such a graph is bipartite (even layers against odd layers).
* :func:`matrix_graph_metrics` takes one matrix. A square recurrent matrix (an LSTM ``weight_hh`` block,
  hidden to hidden) becomes a graph over its ``n`` units with edge ``i <-> j`` wherever ``mask[i, j]`` or
  ``mask[j, i]`` is active, as in the paper's Figure 5; any other matrix becomes a two-layer bipartite
  graph.

A mask is a 2-D ``torch.Tensor`` (dense or sparse layout) or array holding booleans or the numbers 0
and 1; an entry is an edge when it is non-zero.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch
from scipy.sparse import csgraph

from evosparse.errors import UsageError

DEFAULT_EXACT_LIMIT = 2000
DEFAULT_PATH_SOURCES = 256
_CHUNK_ENTRIES = 1 << 22  # bounds the dense rows / sparse products held at once (about 32 MiB of float64)

__all__ = [
    "DEFAULT_EXACT_LIMIT",
    "DEFAULT_PATH_SOURCES",
    "degree_gini",
    "graph_metrics",
    "layered_adjacency",
    "matrix_adjacency",
    "matrix_graph_metrics",
]


def graph_metrics(
    masks: Sequence[Any],
    *,
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    path_sources: int = DEFAULT_PATH_SOURCES,
    seed: int = 0,
) -> dict[str, Any]:
    """The four AWS graph metrics (Section 5.2) of the layered graph of a feed-forward stack of masks.

    ``masks[k]`` has shape ``(n_out, n_in)`` like ``nn.Linear.weight`` and consecutive masks must chain.
    Graphs with at most ``exact_limit`` nodes get exact values; larger ones use a sparse eigensolver and
    ``path_sources`` seeded random sources for the shortest paths. A layered graph is bipartite, so it
    has no triangles and its ``clustering`` (transitivity) is exactly 0.

    Returns a dict whose contract keys ``algebraic_connectivity``, ``degree_gini``, ``clustering`` and
    ``avg_shortest_path`` are Python floats, plus ``nodes``, ``edges``, ``components``,
    ``isolated_nodes``, ``bipartite``, ``exact`` (True when ``nodes <= exact_limit``: dense eigensolver
    and every node as a source) and ``sampled_sources`` (the number of random shortest-path sources, or
    None when every node was a source).
    """
    _check_options(exact_limit, path_sources, seed)
    adjacency = layered_adjacency(masks)
    return _metrics(adjacency, bipartite=True, exact_limit=exact_limit, path_sources=path_sources, seed=seed)


def matrix_graph_metrics(
    mask: Any,
    *,
    square_as_recurrent: bool,
    exact_limit: int = DEFAULT_EXACT_LIMIT,
    path_sources: int = DEFAULT_PATH_SOURCES,
    seed: int = 0,
) -> dict[str, Any]:
    """The four AWS graph metrics (Section 5.2, Figure 5) of one weight matrix's graph.

    With ``square_as_recurrent=True`` a square mask is a recurrent matrix: a graph over its ``n`` units
    (see :func:`matrix_adjacency`), where clustering is meaningful. Otherwise, and for every non-square
    mask, the graph is bipartite between the ``n_in`` inputs and ``n_out`` outputs. The argument has no
    default because a square feed-forward layer and a recurrent matrix look alike. Options and the
    returned dict are those of :func:`graph_metrics`.
    """
    _check_options(exact_limit, path_sources, seed)
    adjacency, recurrent = _matrix_graph(mask, square_as_recurrent)
    return _metrics(adjacency, bipartite=not recurrent, exact_limit=exact_limit, path_sources=path_sources, seed=seed)


def layered_adjacency(masks: Sequence[Any]) -> sp.csr_array:
    """The symmetric 0/1 adjacency matrix of the layered graph of ``masks`` (see the module docstring).

    Node order: the inputs of ``masks[0]``, then the outputs of each layer. Raises UsageError with one
    line when the list is empty, a mask is not 2-D 0/1, or two consecutive shapes do not chain.
    """
    if isinstance(masks, (torch.Tensor, np.ndarray)) or not isinstance(masks, Sequence):
        raise UsageError("masks must be a list of 2-D masks; for a single matrix use matrix_graph_metrics")
    if len(masks) == 0:
        raise UsageError("masks is empty: give at least one 2-D mask of shape (n_out, n_in)")
    layers = [_active_entries(mask, f"masks[{k}]") for k, mask in enumerate(masks)]
    for k in range(1, len(layers)):
        (previous_out, _), (n_out, n_in) = layers[k - 1][2], layers[k][2]
        if n_in != previous_out:
            raise UsageError(
                f"masks[{k}] has shape ({n_out}, {n_in}) but masks[{k - 1}] has {previous_out} outputs; "
                "masks are (n_out, n_in) like nn.Linear.weight, so masks[k+1].shape[1] must equal "
                "masks[k].shape[0]"
            )
    return _layered_graph(layers)


def matrix_adjacency(mask: Any, *, square_as_recurrent: bool) -> sp.csr_array:
    """The symmetric 0/1 adjacency matrix of one mask's graph.

    A square mask with ``square_as_recurrent=True`` gives ``n`` nodes with edge ``i <-> j`` when
    ``mask[i, j]`` or ``mask[j, i]`` is active: a reciprocal pair is one edge and the diagonal
    (a unit feeding itself) is ignored, since it joins no two units. Any other mask gives the bipartite
    graph of :func:`layered_adjacency` for ``[mask]``.
    """
    return _matrix_graph(mask, square_as_recurrent)[0]


def degree_gini(degrees: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of node degrees, the AWS paper's degree inequality (Section 5.2, after Gini 1921).

    With the n degrees sorted ascending, ``G = 2 * sum_i i * x_i / (n * sum_i x_i) - (n + 1) / n``
    (i = 1..n), i.e. the mean absolute difference over all ordered pairs divided by twice the mean.
    Every node counts, isolated ones too. 0 means equal degrees; (n - 1) / n means one node holds every
    connection. 0.0 when all degrees are 0.
    """
    values = np.sort(np.asarray(degrees, dtype=np.float64).ravel())
    if values.size and not (values[0] >= 0 and np.isfinite(values[-1])):
        raise UsageError("degrees must be finite and non-negative")
    total = values.sum()
    if values.size == 0 or total == 0:
        return 0.0
    n = values.size
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.dot(ranks, values) / (n * total) - (n + 1) / n)


def _metrics(
    adjacency: sp.csr_array, *, bipartite: bool, exact_limit: int, path_sources: int, seed: int
) -> dict[str, Any]:
    """Compute every metric of a symmetric 0/1 adjacency and record how each was obtained."""
    nodes = adjacency.shape[0]
    degrees = np.diff(adjacency.indptr)
    components = int(csgraph.connected_components(adjacency, directed=False, return_labels=False))
    exact = nodes <= exact_limit
    sampled = None if exact or path_sources >= nodes else path_sources
    connectivity = 0.0 if nodes < 2 or components > 1 else _fiedler_value(adjacency, degrees, exact, seed)
    return {
        "algebraic_connectivity": connectivity,
        "degree_gini": degree_gini(degrees),
        "clustering": 0.0 if bipartite else _transitivity(adjacency, degrees),
        "avg_shortest_path": _average_shortest_path(adjacency, sampled, seed),
        "nodes": nodes,
        "edges": int(adjacency.nnz // 2),
        "components": components,
        "isolated_nodes": int(np.count_nonzero(degrees == 0)),
        "bipartite": bipartite,
        "exact": exact,
        "sampled_sources": sampled,
    }


def _fiedler_value(adjacency: sp.csr_array, degrees: np.ndarray, dense: bool, seed: int) -> float:
    """Second-smallest eigenvalue of the Laplacian L = D - A of a connected graph (AWS Section 5.2).

    Dense: ``numpy.linalg.eigvalsh``. Sparse: Lanczos (ARPACK ``eigsh``, smallest algebraic eigenvalue,
    machine-precision tolerance) on ``L + c * 11^T / n`` with ``c = 2 * max degree``: the rank-one term
    moves the eigenvalue 0 of the constant vector up to c >= lambda_max >= lambda_2 and leaves the rest of
    the spectrum alone, so the smallest eigenvalue is lambda_2; the start vector is seeded. Shift-invert
    is avoided on purpose: the factorisation of a random sparse Laplacian fills in almost completely.
    """
    nodes = adjacency.shape[0]
    laplacian = (sp.diags_array(degrees.astype(np.float64)) - adjacency).tocsr()
    if dense:
        return float(np.linalg.eigvalsh(laplacian.toarray())[1])
    shift = 2.0 * float(degrees.max()) / nodes  # c / n

    def apply(block: np.ndarray) -> np.ndarray:
        return laplacian @ block + shift * block.sum(axis=0)

    operator = sla.LinearOperator((nodes, nodes), matvec=apply, matmat=apply, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(nodes)
    return float(sla.eigsh(operator, k=1, which="SA", tol=0, v0=start, return_eigenvectors=False)[0])


def _transitivity(adjacency: sp.csr_array, degrees: np.ndarray) -> float:
    """Global clustering coefficient, 3 * triangles / connected triples (transitivity; AWS Section 5.2).

    The paper's "fraction of possible triangles" is transitivity, not the average of local clustering.
    Each triangle is counted once with sparse algebra: orient every edge from the lower to the higher
    node in degree order (upper triangle U of the reordered adjacency); then ``sum((U @ U) * U)`` is the
    triangle count. Row blocks of U keep the product small. 0.0 when the graph has no connected triple.
    """
    triples = float(np.sum(degrees * (degrees - 1.0)) / 2.0)
    if triples == 0:
        return 0.0
    order = np.argsort(degrees, kind="stable")
    upper = sp.triu(adjacency[order][:, order], k=1, format="csr")
    rows_per_block = max(1, _CHUNK_ENTRIES // adjacency.shape[0])
    triangles = 0.0
    for start in range(0, upper.shape[0], rows_per_block):
        block = upper[start : start + rows_per_block]
        triangles += float((block @ upper).multiply(block).sum())
    return 3.0 * triangles / triples


def _average_shortest_path(adjacency: sp.csr_array, sampled: int | None, seed: int) -> float:
    """Mean shortest-path length in hops over ordered pairs (u, v), u != v, with v reachable from u.

    Pairs in different components are left out (the plain mean would be infinite); on a connected graph
    this is the usual average shortest-path length. Breadth-first distances come from
    ``scipy.sparse.csgraph.dijkstra`` with unit weights, from every node, or from ``sampled`` distinct
    seeded random sources (a ratio estimate: total hops over reachable pairs from those sources).
    0.0 when no pair is connected (a graph without edges).
    """
    nodes = adjacency.shape[0]
    if sampled is None:
        sources = np.arange(nodes)
    else:
        sources = np.random.default_rng(seed).choice(nodes, size=sampled, replace=False)
    sources_per_block = max(1, _CHUNK_ENTRIES // nodes)
    total_hops = 0.0
    pairs = 0
    for start in range(0, sources.size, sources_per_block):
        # The adjacency is symmetric, so walking it as directed is the undirected walk, without the copy
        # that directed=False makes.
        distances = csgraph.dijkstra(
            adjacency, directed=True, unweighted=True, indices=sources[start : start + sources_per_block]
        )
        reachable = np.isfinite(distances) & (distances > 0)
        total_hops += float(distances[reachable].sum())
        pairs += int(np.count_nonzero(reachable))
    return total_hops / pairs if pairs else 0.0


def _matrix_graph(mask: Any, square_as_recurrent: bool) -> tuple[sp.csr_array, bool]:
    """One mask's adjacency (see :func:`matrix_adjacency`) and whether it was read as recurrent."""
    rows, cols, (n_out, n_in) = entries = _active_entries(mask, "mask")
    if not (square_as_recurrent and n_out == n_in):
        return _layered_graph([entries]), False
    off_diagonal = rows != cols
    return _undirected_adjacency(n_out, rows[off_diagonal], cols[off_diagonal]), True


def _layered_graph(layers: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]) -> sp.csr_array:
    """Adjacency of chained layers given as (rows, cols, (n_out, n_in)): inputs first, then each output."""
    offsets = np.cumsum([0, layers[0][2][1]] + [shape[0] for _, _, shape in layers])
    sources = [offsets[k] + cols for k, (_, cols, _) in enumerate(layers)]
    targets = [offsets[k + 1] + rows for k, (rows, _, _) in enumerate(layers)]
    return _undirected_adjacency(int(offsets[-1]), np.concatenate(sources), np.concatenate(targets))


def _undirected_adjacency(nodes: int, sources: np.ndarray, targets: np.ndarray) -> sp.csr_array:
    """Symmetric 0/1 CSR adjacency with an edge for each (source, target) pair; repeats collapse to 1."""
    rows = np.concatenate([sources, targets])
    cols = np.concatenate([targets, sources])
    adjacency = sp.coo_array((np.ones(rows.size), (rows, cols)), shape=(nodes, nodes)).tocsr()
    adjacency.sum_duplicates()
    adjacency.data[:] = 1.0
    return adjacency


def _active_entries(mask: Any, name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Row and column indices of the active entries of a 2-D 0/1 mask, and its (n_out, n_in) shape."""
    tensor = _as_tensor(mask, name)
    shape = tuple(tensor.shape)
    if len(shape) != 2:
        raise UsageError(f"{name} must be a 2-D mask of shape (n_out, n_in), got shape {shape}")
    if 0 in shape:
        raise UsageError(f"{name} has an empty dimension: shape {shape}")
    dense = tensor.layout == torch.strided
    if not dense:
        tensor = tensor.to_sparse_coo().coalesce()
        if tensor.dense_dim() != 0:
            raise UsageError(f"{name} is a hybrid sparse tensor; give a plain 2-D sparse or dense mask")
    values = tensor if dense else tensor.values()
    if values.dtype != torch.bool and not bool(((values == 0) | (values == 1)).all()):
        raise UsageError(f"{name} must hold only 0/1 or booleans (1 = active connection); got other values")
    rows, cols = torch.nonzero(tensor).T if dense else tensor.indices()[:, values != 0]
    return rows.cpu().numpy(), cols.cpu().numpy(), (shape[0], shape[1])


def _as_tensor(mask: Any, name: str) -> torch.Tensor:
    """The mask as a detached tensor (arrays and nested lists are converted)."""
    if isinstance(mask, torch.Tensor):
        return mask.detach()
    try:
        return torch.as_tensor(np.asarray(mask))
    except (TypeError, ValueError, RuntimeError) as error:
        raise UsageError(f"{name} is not a tensor or array of 0/1 values ({type(mask).__name__})") from error


def _check_options(exact_limit: int, path_sources: int, seed: int) -> None:
    """Reject option values that are not integers in range, with a one-line UsageError."""
    options = (("exact_limit", exact_limit, 0), ("path_sources", path_sources, 1), ("seed", seed, 0))
    for name, value, minimum in options:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}")
