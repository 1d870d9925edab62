"""Path statistics of a layered sparse network, computed in time linear in its connections.

A *path* is a sequence of connections, one per layer, from an input node to an output node. Its
importance is the product of the normalised weights A_k = |W_k| / |F_k| along it (Path-Weight and
Sensitivity paper, eq. 2-3). The paper enumerates paths, which costs exponential time; here every
statistic comes from a forward and a backward dynamic programme over the layers:

- sums of path importances (node importance, eq. 4) with log-sum-exp,
- the strongest path through a connection with max-plus on logarithms,
- numbers of paths by summing counts over the connection mask.

Working with logarithms keeps intermediate values finite however deep or wide the network is; a
result is only 0 or inf when its true value lies outside the float64 range. Everything here is a
pure function of tensors: no model or training state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor

from evosparse.errors import UsageError

MAX_EXACT_PATHS = 2_000_000
"""Largest number of paths :func:`path_quantile` enumerates; beyond it, ask for sampling."""

_RANK_TOLERANCE = 1e-12
"""Relative slack so that q * count = 7.000000000000001 (rounding of q = 0.7) gives rank 7."""


@dataclass(frozen=True)
class PathStats:
    """Per-node and per-connection statistics over all input-to-output paths of a layered network.

    ``node_importance[k]`` (one tensor per layer of nodes, input layer first) holds for each node
    the sum of the importances of all paths through it (eq. 4). ``edge_max_path[k]`` and
    ``edge_path_count[k]`` have the shape and layout of ``abs_weights[k]`` and hold, per connection,
    the largest importance of a path through it and the number of such paths (0 for absent
    connections). ``total_paths`` is the number of input-to-output paths. All tensors are float64;
    a value whose true size lies beyond float64's range (a count above ~1.8e308 paths, say) is inf.
    """

    node_importance: list[Tensor]
    edge_max_path: list[Tensor]
    edge_path_count: list[Tensor]
    total_paths: float


@dataclass(frozen=True)
class _Layer:
    """The connections of one layer as an edge list in row-major order (by row, then column)."""

    shape: tuple[int, int]
    layout: torch.layout
    rows: Tensor
    cols: Tensor
    keys: Tensor  # row-major linear index rows * n_out + cols, increasing
    log_values: Tensor
    row_starts: Tensor  # CSR row pointer: the edges of row i are row_starts[i]:row_starts[i + 1]

    def per_edge(self, values: Tensor) -> Tensor:
        """``values`` (one per edge) as a tensor with the shape and layout of the input matrix."""
        if self.layout == torch.sparse_coo:
            indices = torch.stack([self.rows, self.cols])
            return torch.sparse_coo_tensor(indices, values, self.shape, is_coalesced=True, check_invariants=False)
        if self.layout == torch.sparse_csr:
            return torch.sparse_csr_tensor(self.row_starts, self.cols, values, self.shape, check_invariants=False)
        dense = torch.zeros(self.shape, dtype=torch.float64, device=values.device)
        dense.view(-1).index_copy_(0, self.keys, values)
        return dense


def path_statistics(abs_weights: Sequence[Tensor]) -> PathStats:
    """Node importance, strongest path and path count of all nodes and connections, O(connections).

    ``abs_weights[k]`` is A_k (n_{k-1} x n_k, input x output, i.e. the transpose of
    ``nn.Linear.weight``), non-negative with zero meaning no connection; dense tensors and torch
    sparse COO/CSR tensors are accepted, and each edge tensor of the result has its input's layout.
    Node importance is f_n * b_n with f, b the forward and backward sums of path products
    (Path-Weight and Sensitivity paper, eq. 2 and 4).
    """
    layers = _as_layers(abs_weights)
    sum_forward, sum_backward = _sweep(layers, _scatter_logsumexp, weighted=True, start=0.0)
    max_forward, max_backward = _sweep(layers, _scatter_max, weighted=True, start=0.0)
    count_forward, count_backward = _path_counts(layers)
    node_importance = [torch.exp(f + b) for f, b in zip(sum_forward, sum_backward, strict=True)]
    edge_max_path = [
        layer.per_edge(
            torch.exp(_at(max_forward[k], layer.rows) + layer.log_values + _at(max_backward[k + 1], layer.cols))
        )
        for k, layer in enumerate(layers)
    ]
    edge_path_count = [
        layer.per_edge(_at(count_forward[k], layer.rows) * _at(count_backward[k + 1], layer.cols))
        for k, layer in enumerate(layers)
    ]
    total_paths = float(count_backward[0].sum())
    return PathStats(node_importance, edge_max_path, edge_path_count, total_paths)


def path_quantile(
    abs_weights: Sequence[Tensor],
    q: float,
    samples: int | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """The q-quantile of the importance (eq. 2) of all input-to-output paths.

    The quantile is the lower (nearest-rank) one: the smallest path importance v such that at least
    a fraction q of the paths have importance <= v, i.e. the value of rank max(1, ceil(q * M)) among
    M sorted importances; q = 0 gives the weakest path, q = 1 the strongest. With ``samples=None``
    all paths are enumerated (at most ``MAX_EXACT_PATHS``); otherwise the same rule is applied to
    ``samples`` paths drawn uniformly among all paths with :func:`sample_paths`. Importances are
    exponentials of log sums, equal to ``edge_max_path`` entries up to rounding (~1e-15 relative):
    compare them with a small tolerance when a tie matters.
    """
    _check_quantile(q)
    if samples is not None:
        _check_samples(samples)
    layers = _as_layers(abs_weights)
    completions = _path_counts(layers)[1]
    total = float(completions[0].sum())
    if total == 0:
        raise UsageError("the network has no input-to-output path, so path importance has no quantile")
    if samples is None:
        if total > MAX_EXACT_PATHS:
            raise UsageError(
                f"an exact path quantile would enumerate {total:.3g} paths "
                f"(limit {MAX_EXACT_PATHS}); pass samples=N to estimate it"
            )
        log_importance = _all_log_path_importances(layers, completions)
    else:
        edges = _sample_edges(layers, completions, samples, generator)
        log_importance = _at(layers[0].log_values, edges[0])
        for layer, edge in zip(layers[1:], edges[1:], strict=True):
            log_importance = log_importance + _at(layer.log_values, edge)
    rank = max(1, math.ceil(q * log_importance.numel() * (1 - _RANK_TOLERANCE)))
    return math.exp(float(torch.kthvalue(log_importance, rank).values))


def sample_paths(abs_weights: Sequence[Tensor], samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``samples`` input-to-output paths uniformly (with replacement) among all paths.

    Returns an int64 tensor of shape (samples, len(abs_weights) + 1) whose row s lists the node
    visited in each layer by path s. The first node is drawn with probability proportional to the
    number of paths starting at it, each next node proportionally to the number of completions
    through it, which makes every path equally likely.
    """
    _check_samples(samples)
    layers = _as_layers(abs_weights)
    edges = _sample_edges(layers, _path_counts(layers)[1], samples, generator)
    nodes = [_at(layers[0].rows, edges[0])] + [_at(layer.cols, edge) for layer, edge in zip(layers, edges, strict=True)]
    return torch.stack(nodes, dim=1)


def log_path_importance(abs_weights: Sequence[Tensor], paths: Tensor) -> Tensor:
    """Natural logarithm of the importance (eq. 2) of each path, one row of node indices per path.

    ``paths`` has shape (m, len(abs_weights) + 1) as returned by :func:`sample_paths`. A row that
    uses an absent connection is not a path; its importance is 0 and its logarithm -inf.
    """
    layers = _as_layers(abs_weights)
    _check_paths(layers, paths)
    return _log_path_importance(layers, paths)


def _as_layers(abs_weights: Sequence[Tensor]) -> list[_Layer]:
    """Validate the matrices and turn each into a row-major edge list of its positive entries."""
    if isinstance(abs_weights, Tensor) or not isinstance(abs_weights, Sequence):
        raise UsageError("abs_weights must be a sequence (list or tuple) of 2-D tensors")
    if len(abs_weights) == 0:
        raise UsageError("abs_weights is empty; path statistics need at least one layer")
    for k, matrix in enumerate(abs_weights):
        _check_matrix(k, matrix)
        if k > 0 and matrix.shape[0] != abs_weights[k - 1].shape[1]:
            raise UsageError(
                f"abs_weights[{k}] has {matrix.shape[0]} input nodes but abs_weights[{k - 1}] has "
                f"{abs_weights[k - 1].shape[1]} output nodes; consecutive layers must chain"
            )
    return [_edge_list(matrix) for matrix in abs_weights]


def _check_matrix(k: int, matrix: Tensor) -> None:
    """Raise UsageError unless ``matrix`` is a 2-D real tensor with finite non-negative entries."""
    if not isinstance(matrix, Tensor):
        raise UsageError(f"abs_weights[{k}] is a {type(matrix).__name__}, not a torch.Tensor")
    if matrix.layout not in (torch.strided, torch.sparse_coo, torch.sparse_csr):
        raise UsageError(f"abs_weights[{k}] has layout {matrix.layout}; use dense, sparse COO or CSR")
    if matrix.dim() != 2 or (matrix.is_sparse and matrix.dense_dim() != 0):
        raise UsageError(f"abs_weights[{k}] must be a 2-D matrix, got shape {tuple(matrix.shape)}")
    if min(matrix.shape) == 0:
        raise UsageError(f"abs_weights[{k}] has shape {tuple(matrix.shape)}; every layer needs nodes")
    if matrix.is_complex():
        raise UsageError(f"abs_weights[{k}] is complex; path importance needs real magnitudes")
    values = _stored_values(matrix)
    if values.numel() == 0:
        return
    lowest, highest = torch.aminmax(values)
    if not (math.isfinite(float(lowest)) and math.isfinite(float(highest))):
        raise UsageError(f"abs_weights[{k}] contains nan or inf; magnitudes must be finite")
    if float(lowest) < 0:
        raise UsageError(f"abs_weights[{k}] has negative entries; pass magnitudes |W| / |F|")


def _stored_values(matrix: Tensor) -> Tensor:
    """The entries a matrix stores: all of a dense one, the (summed) specified ones if sparse."""
    if matrix.layout == torch.strided:
        return matrix
    if matrix.layout == torch.sparse_csr:
        return matrix.values()
    return matrix.coalesce().values()


def _edge_list(matrix: Tensor) -> _Layer:
    """Row-major edge list (coordinates, log of value, CSR row pointer) of the positive entries."""
    if matrix.layout == torch.strided:
        flat = matrix.reshape(-1)
        keys = flat.nonzero().squeeze(1)
        rows, cols = keys // matrix.shape[1], keys % matrix.shape[1]
        values = _at(flat, keys)
    else:
        coo = (matrix.to_sparse_coo() if matrix.layout == torch.sparse_csr else matrix).coalesce()
        positive = coo.values() > 0
        rows, cols = coo.indices()[:, positive]
        keys = rows * matrix.shape[1] + cols
        values = coo.values()[positive]
    n_in = matrix.shape[0]
    row_starts = torch.zeros(n_in + 1, dtype=torch.int64, device=matrix.device)
    row_starts[1:] = torch.bincount(rows, minlength=n_in).cumsum(0)
    return _Layer(
        shape=(n_in, matrix.shape[1]),
        layout=matrix.layout,
        rows=rows,
        cols=cols,
        keys=keys,
        log_values=torch.log(values.to(torch.float64)),
        row_starts=row_starts,
    )


_Reduce = Callable[[Tensor, Tensor, int], Tensor]


def _sweep(layers: list[_Layer], reduce: _Reduce, *, weighted: bool, start: float) -> tuple[list[Tensor], list[Tensor]]:
    """Forward and backward dynamic programme: one tensor per layer of nodes, input layer first.

    Forward value of node j = reduce over incoming edges (i, j) of (value of i [+ log A_ij]),
    starting from ``start`` at the input layer; backward likewise from the output layer.
    """

    def step(layer: _Layer, values: Tensor, forward: bool) -> Tensor:
        source, target = (layer.rows, layer.cols) if forward else (layer.cols, layer.rows)
        gathered = _at(values, source)
        if weighted:
            gathered = gathered + layer.log_values
        return reduce(gathered, target, layer.shape[1] if forward else layer.shape[0])

    device = layers[0].rows.device
    forward = [torch.full((layers[0].shape[0],), start, dtype=torch.float64, device=device)]
    for layer in layers:
        forward.append(step(layer, forward[-1], True))
    backward = [torch.full((layers[-1].shape[1],), start, dtype=torch.float64, device=device)]
    for layer in reversed(layers):
        backward.append(step(layer, backward[-1], False))
    return forward, backward[::-1]


def _path_counts(layers: list[_Layer]) -> tuple[list[Tensor], list[Tensor]]:
    """Per node: number of paths from the input layer to it, and from it to the output layer."""
    return _sweep(layers, _scatter_sum, weighted=False, start=1.0)


def _scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum of ``values`` grouped by ``index`` into ``size`` slots."""
    return torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _scatter_max(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Maximum of ``values`` grouped by ``index``; -inf (log of 0) for empty groups."""
    empty = torch.full((size,), -math.inf, dtype=values.dtype, device=values.device)
    return empty.scatter_reduce_(0, index, values, "amax")


def _scatter_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    """log(sum(exp(values))) grouped by ``index``, shifted by each group's maximum so it never
    overflows or underflows; -inf for empty groups or groups of -inf."""
    peak = _scatter_max(values, index, size)
    shift = torch.where(torch.isfinite(peak), peak, 0.0)
    return shift + torch.log(_scatter_sum(torch.exp(values - _at(shift, index)), index, size))


def _all_log_path_importances(layers: list[_Layer], completions: list[Tensor]) -> Tensor:
    """Log importance of every input-to-output path, found by extending partial paths layer by
    layer along connections that can still reach the output (so no partial path is wasted)."""
    device = layers[0].rows.device
    ends = torch.nonzero(completions[0] > 0).squeeze(1)
    log_importance = torch.zeros(ends.numel(), dtype=torch.float64, device=device)
    for k, layer in enumerate(layers):
        useful = torch.nonzero(_at(completions[k + 1], layer.cols) > 0).squeeze(1)
        degree = torch.bincount(_at(layer.rows, useful), minlength=layer.shape[0])
        first_useful = torch.cumsum(degree, 0) - degree
        branches = _at(degree, ends)
        parent = torch.repeat_interleave(torch.arange(ends.numel(), device=device), branches)
        branch = torch.arange(parent.numel(), device=device) - _at(torch.cumsum(branches, 0) - branches, parent)
        edge = _at(useful, _at(first_useful, _at(ends, parent)) + branch)
        log_importance = _at(log_importance, parent) + _at(layer.log_values, edge)
        ends = _at(layer.cols, edge)
    return log_importance


def _sample_edges(
    layers: list[_Layer], completions: list[Tensor], samples: int, generator: torch.Generator | None
) -> list[Tensor]:
    """Uniform path sampler (see :func:`sample_paths`), vectorised over samples, loop over layers.

    Returns, per layer, the index (into the layer's edge list) of each sampled path's connection.
    """
    total = completions[0].sum()
    if total == 0:
        raise UsageError("the network has no input-to-output path to sample")
    if not torch.isfinite(total):
        raise UsageError("the network has more paths than float64 can count, so they cannot be sampled")
    device = total.device
    everything = torch.zeros(samples, dtype=torch.int64, device=device)
    node = _draw_in_segments(
        torch.cumsum(completions[0] / total, 0),
        everything,
        everything + layers[0].shape[0],
        generator,
    )
    edges = []
    for k, layer in enumerate(layers):
        source_count = _at(completions[k], layer.rows)
        share = torch.where(source_count > 0, _at(completions[k + 1], layer.cols) / source_count, 0.0)
        edge = _draw_in_segments(
            torch.cumsum(share, 0),
            _at(layer.row_starts, node),
            _at(layer.row_starts, node + 1),
            generator,
        )
        node = _at(layer.cols, edge)
        edges.append(edge)
    return edges


def _draw_in_segments(cumulative: Tensor, starts: Tensor, ends: Tensor, generator: torch.Generator | None) -> Tensor:
    """For each (start, end) draw an index in [start, end) with probability proportional to the
    increments of ``cumulative`` (a running sum of non-negative weights) over that segment."""
    before = torch.where(starts > 0, _at(cumulative, (starts - 1).clamp(min=0)), 0.0)
    span = _at(cumulative, ends - 1) - before
    # Drawn where the generator lives (a CPU generator for the methods), then moved: the same seed gives
    # the same paths on every device.
    draw_device = generator.device if generator is not None else cumulative.device
    uniform = torch.rand(starts.shape, dtype=torch.float64, generator=generator, device=draw_device)
    uniform = uniform.to(cumulative.device)
    drawn = torch.searchsorted(cumulative, before + uniform * span, right=True)
    return torch.minimum(drawn, ends - 1)  # rounding may push a target past its segment's end


def _log_path_importance(layers: list[_Layer], paths: Tensor) -> Tensor:
    """Sum over layers of log A at each path's connection, -inf where the connection is absent."""
    total = torch.zeros(paths.shape[0], dtype=torch.float64, device=paths.device)
    for k, layer in enumerate(layers):
        if layer.rows.numel() == 0:
            return torch.full_like(total, -math.inf)
        wanted = paths[:, k].long() * layer.shape[1] + paths[:, k + 1].long()
        position = torch.searchsorted(layer.keys, wanted).clamp(max=layer.keys.numel() - 1)
        found = _at(layer.keys, position) == wanted
        total = total + torch.where(found, _at(layer.log_values, position), -math.inf)
    return total


def _at(values: Tensor, index: Tensor) -> Tensor:
    """values[index] for 1-D tensors; index_select avoids the costly general indexing machinery."""
    return values.index_select(0, index)


def _check_quantile(q: float) -> None:
    """Raise UsageError unless q is a real number in [0, 1]."""
    if isinstance(q, bool) or not isinstance(q, Real) or not 0 <= q <= 1:
        raise UsageError(f"quantile q must be a number in [0, 1], got {q!r}")


def _check_samples(samples: int) -> None:
    """Raise UsageError unless samples is a positive integer."""
    if isinstance(samples, bool) or not isinstance(samples, Integral) or samples < 1:
        raise UsageError(f"samples must be a positive integer, got {samples!r}")


def _check_paths(layers: list[_Layer], paths: Tensor) -> None:
    """Raise UsageError unless ``paths`` is an integer (m, L + 1) tensor of valid node indices."""
    width = len(layers) + 1
    if not isinstance(paths, Tensor) or paths.dim() != 2 or paths.shape[1] != width:
        shape = tuple(paths.shape) if isinstance(paths, Tensor) else type(paths).__name__
        raise UsageError(f"paths must be an (m, {width}) tensor of node indices, got {shape}")
    if paths.dtype.is_floating_point or paths.dtype.is_complex or paths.dtype == torch.bool:
        raise UsageError(f"paths must hold integer node indices, got dtype {paths.dtype}")
    sizes = [layers[0].shape[0]] + [layer.shape[1] for layer in layers]
    for k, size in enumerate(sizes):
        if paths.numel() and (int(paths[:, k].min()) < 0 or int(paths[:, k].max()) >= size):
            raise UsageError(f"paths[:, {k}] has node indices outside 0..{size - 1}")
