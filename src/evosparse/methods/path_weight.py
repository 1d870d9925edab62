"""Path-Weight evolution (Naji, Abtahi and Marvasti, "Efficient Sparse Artificial Neural Networks", Sec. II).

Also home of :class:`NodeImportanceEvolution`, the part Path-Weight shares with Sensitivity (the paper:
"the only difference between the Sensitivity method and the Path-Weight method is their importance
measures"): growth whose source node is drawn ∝ node importance (eq. 6), δ scaling the number grown,
and the time-varying rule of eq. 7-9.

How we read the points the paper leaves open (also in docs/design.md):

* **|F_k| (eq. 3)** is one number per layer: the mean, over the training samples of the last epoch
  (since the previous topology update), of the Euclidean norm of the layer's input vector. Forward
  pre-hooks gather it during training-mode forward passes with autograd enabled (no second pass over
  the data; evaluation passes are ignored). A layer that has not seen a sample yet uses |F_k| = 1.
* **Normalised weight** I(w) = |w| / |F_k| (eq. 3). Because |F_k| is one factor per layer, it rescales
  every path by the same constant and changes neither the ranking of paths nor node-importance ratios;
  it matters where connections of *different* layers are compared, which is why the removal below
  ranks the weak-path connections of all layers together.
* **Weak connections.** q is the λ-quantile of the importances of all input-to-output paths (eq. 2,
  lower nearest-rank quantile); a connection is a removal candidate when its *strongest* path is below
  q, i.e. it lies on weak paths only, so no path stronger than q ever loses a connection. An active
  connection on no path at all (for instance into a unit with no outgoing connection, or one whose
  weight is exactly 0) has strongest path 0 and is a candidate. Among all candidates of all layers, the
  round(ζ · #candidates) with the smallest normalised weight are removed, each layer giving up at most
  as many as it has free positions (the project's swap rule). The quantile is exact (all paths
  enumerated) when the network has at most ``samples`` paths, else estimated from ``samples`` paths
  drawn uniformly.
* **Growth (eq. 6)** normalises node importance over all nodes of all layers. Every path crosses each
  layer of nodes exactly once, so each layer's importances sum to the same total and eq. 6 gives each
  layer the same share; we therefore grow per layer — round(δ · removed) new connections in the layer
  that lost ``removed`` — with the source drawn ∝ its importance within the layer (exactly eq. 6
  conditioned on the layer) and the target uniform among that source's inactive positions. δ = 1 keeps
  every layer's budget; δ ≠ 1 (and the time-varying version, which changes δ) changes it.
* **Scope.** Paths need a chain of fully connected layers: every sparse layer must be an
  ``nn.Linear`` whose input size equals the previous sparse layer's output size (in the order the
  model defines them). Other models get a one-line error pointing at ``sensitivity``.
* **Backends.** Everything reads the topology through the sparse-layer protocol
  (:class:`~evosparse.topology.layer.SparseLayer`): path statistics take the active connections as a
  sparse matrix, growth draws from the active positions alone
  (:meth:`~evosparse.topology.layer.SparseLayer.sample_inactive_by_source`), so every backend chooses
  the same connections and nothing of size out x in is formed on csr.
* **Defaults** (the paper gives none): λ = 0.9, ζ = 0.3, δ = 1. On LeNet-300-100 at density 0.05 after
  one MNIST epoch, λ = 0.5 makes only ~4% of the connections candidates (~1.3% replaced per update,
  nearly a static network), λ = 0.9 ~29% (~9% replaced); over 10 epochs (3 seeds) λ = 0.9 reached
  95.6% mean test accuracy against 95.4% for λ = 0.5. ``samples`` = 10,000 keeps the quantile's rank
  error near 0.5% at ~15 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from evosparse.criteria.path_weight import MAX_EXACT_PATHS, path_quantile, path_statistics
from evosparse.criteria.time_varying import (
    CRITERIA,
    TimeVaryingRule,
    primary_criterion,
    secondary_criterion,
    source_of,
)
from evosparse.errors import UsageError
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, grow_params, register
from evosparse.methods.context import MethodContext
from evosparse.topology.layer import SparseLayer
from evosparse.topology.positions import locate

#: Relative margin below the quantile: path importances are exponentials of log sums (~1e-15 rounding),
#: so a connection whose strongest path *is* the quantile path must not count as below it.
_BELOW_QUANTILE = 1.0 - 1e-9

#: Floor of |F_k| so that a layer whose inputs were all zero does not divide by zero.
_MIN_FEATURE_NORM = 1e-12

#: Parameters shared by the methods built on :class:`NodeImportanceEvolution`.
EVOLUTION_PARAMS: tuple[Param, ...] = (
    Param(
        "delta",
        1.0,
        "δ: connections grown per connection removed, per layer (1 keeps the budget)",
        minimum=0.0,
    ),
    Param("time_varying", False, "adapt the parameters after every update (eq. 7-9, K1=2 K2=0.5 K3=0.1 K4=0.5)"),
    Param(
        "criteria",
        "node",
        "what eq. 7-8 average: connection = the importance of all / of the removed connections; "
        "node = of all source nodes / of the removed connections' sources",
        choices=CRITERIA,
    ),
    Param(
        "importance_floor",
        0.0,
        "growth draws a source ∝ max(I, floor · mean I of its layer); 0 is eq. 6, where a unit of zero "
        "importance never grows an outgoing connection again",
        minimum=0.0,
    ),
    *grow_params("normal"),
    *SCHEDULE_PARAMS,
)


@dataclass(frozen=True)
class Selection:
    """What an importance measure decides in one update, per layer: the flat positions to remove, the
    importance of every source node (input unit or channel), which drives growth, and the importance
    of every active connection and of the removed ones (aligned with ``prune``), which the
    time-varying rule may compare."""

    prune: list[Tensor]
    node_importance: list[Tensor]
    connection_importance: list[Tensor]
    removed_importance: list[Tensor]


class NodeImportanceEvolution(Method):
    """Remove by an importance measure, grow ∝ node importance with δ scaling, optionally time-varying.

    Subclasses implement :meth:`select`. The values of the adapted parameters used by each update, the
    criteria of eq. 7-8 and the numbers removed and grown are appended to :attr:`trajectory` (one dict
    per update, also in :meth:`state_dict`), in the static version too.
    """

    evolves = True
    #: Names of the parameters the time-varying rule adapts.
    adapted: ClassVar[tuple[str, ...]] = ("zeta", "delta")

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        for layer in self.layers:  # node importance is per input unit, read along a weight's second axis
            if layer.output_axis:
                raise UsageError(
                    f"{self.name} needs weights stored (out, in, ...); {layer.name} of a "
                    f"{type(layer.module).__name__} is stored (in, out): use another method"
                )
        self.rule = TimeVaryingRule()
        self.start_values = {name: float(self.hparams[name]) for name in self.adapted}
        self.values = dict(self.start_values)
        self.trajectory: list[dict[str, float | int]] = []
        # Narrows the class fact the Sparsifier reads for its budget check.
        self.fixed_budget = self.hparams["delta"] == 1.0 and not self.hparams["time_varying"]

    def select(self) -> Selection:
        """Decide the removals and node importances of this update from the statistics gathered since the last one."""
        raise NotImplementedError

    def update(self) -> int:
        selection = self.select()
        changed, grown = 0, 0
        for layer, prune, importance in zip(self.layers, selection.prune, selection.node_importance):
            count = min(int(round(self.values["delta"] * prune.numel())), layer.numel - layer.active)
            grow = layer.sample_inactive_by_source(count, self.growth_weights(importance), self.generator)
            changed += layer.rewire(prune, grow, self.grown_values(layer, grow.numel()))
            grown += grow.numel()
        self._record_and_adapt(selection, grown)
        return changed

    def growth_weights(self, importance: Tensor) -> Tensor:
        """How strongly growth draws each source of a layer: its node importance (eq. 6), raised to at
        least ``importance_floor`` times the layer's mean importance.

        Under eq. 6 a node whose outgoing connections all scored zero (or that lost them all) is never a
        source again, so a hidden unit that falls silent stays silent for good; a floor keeps every
        unit's chance of regrowing an outgoing connection above zero.
        """
        return importance.clamp_min(self.hparams["importance_floor"] * float(importance.double().mean()))

    def _record_and_adapt(self, selection: Selection, grown: int) -> None:
        """Log this update's parameters and criteria; in the time-varying version apply eq. 9."""
        removed = [prune.numel() for prune in selection.prune]
        if self.hparams["criteria"] == "node":
            c_prim = primary_criterion(selection.node_importance)
            c_sec = secondary_criterion(
                torch.cat(
                    [
                        importance.cpu()[source_of(layer.shape, prune.cpu())]
                        for importance, prune, layer in zip(selection.node_importance, selection.prune, self.layers)
                    ]
                )
            )
        else:
            c_prim = primary_criterion(selection.connection_importance)
            c_sec = secondary_criterion(torch.cat([scores.cpu() for scores in selection.removed_importance]))
        self.trajectory.append(
            {
                "epoch": self.context.epoch,
                "step": self.context.step,
                **self.values,
                "c_prim": c_prim,
                "c_sec": c_sec,
                "removed": sum(removed),
                "grown": grown,
            }
        )
        if self.hparams["time_varying"]:
            self.values = self.rule.next_values(self.values, self.start_values, c_prim, c_sec)

    def log(self) -> list[dict[str, Any]]:
        """The trajectory: one record per update (values used, C_prim, C_sec, removed, grown)."""
        return [dict(entry) for entry in self.trajectory]

    def state_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "trajectory": self.log()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state.get("values", {})) != set(self.adapted) or "trajectory" not in state:
            raise UsageError(f"the checkpoint's method state does not belong to method {self.name}")
        self.values = {name: float(value) for name, value in state["values"].items()}
        self.trajectory = [dict(entry) for entry in state["trajectory"]]


class FeatureNorms:
    """|F_k| of eq. 3: per layer, the mean Euclidean norm of its input vectors since the last reset.

    Forward pre-hooks add each training batch's norms into running sums kept on the device of the
    layer's input (they follow the model when it moves), so gathering costs one reduction per forward
    and never synchronises with the device.
    """

    def __init__(self, layers: int) -> None:
        self.sums = [torch.zeros((), dtype=torch.float64) for _ in range(layers)]
        self.counts = [torch.zeros((), dtype=torch.float64) for _ in range(layers)]

    def hook(self, index: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        """A forward pre-hook recording the input of layer ``index`` (training forwards only)."""

        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not (module.training and torch.is_grad_enabled()) or not args:
                return
            norms = torch.linalg.vector_norm(args[0].detach(), dim=-1, dtype=torch.float64)
            if self.sums[index].device != norms.device:
                self.sums[index] = self.sums[index].to(norms.device)
                self.counts[index] = self.counts[index].to(norms.device)
            self.sums[index] += norms.sum()
            self.counts[index] += norms.numel()

        return record

    def means(self) -> list[float]:
        """|F_k| per layer; 1 for a layer that saw no sample since the last reset."""
        return [float(s / c) if float(c) > 0 else 1.0 for s, c in zip(self.sums, self.counts)]

    def reset(self) -> None:
        for total in (*self.sums, *self.counts):
            total.zero_()

    def state_dict(self) -> dict[str, list[Tensor]]:
        return {"sums": [s.clone() for s in self.sums], "counts": [c.clone() for c in self.counts]}

    def load_state_dict(self, state: Mapping[str, list[Tensor]]) -> None:
        for mine, saved in ((self.sums, state["sums"]), (self.counts, state["counts"])):
            if len(saved) != len(mine):
                raise UsageError("the checkpoint's feature norms do not match the model's sparse layers")
            for tensor, value in zip(mine, saved):
                tensor.copy_(value)


def smallest_within_capacity(scores: list[Tensor], count: int, capacity: list[int]) -> list[Tensor]:
    """The ``count`` smallest of all ``scores`` (one 1-D tensor per layer), taking at most
    ``capacity[k]`` from layer k; returns, per layer, indices into its ``scores`` tensor.

    Ties are broken by position (stable sort), layers in order.
    """
    flat = torch.cat(scores)
    layer_of = torch.cat([torch.full((s.numel(),), k, dtype=torch.long) for k, s in enumerate(scores)])
    order = torch.argsort(flat, stable=True)
    allowed = torch.zeros(order.numel(), dtype=torch.bool)
    for k, limit in enumerate(capacity):
        in_layer = (layer_of[order] == k).nonzero().squeeze(1)
        allowed[in_layer[:limit]] = True
    chosen = order[allowed][:count]
    offsets = [0]
    for s in scores:
        offsets.append(offsets[-1] + s.numel())
    chosen_layer = layer_of[chosen]
    return [chosen[chosen_layer == k] - offsets[k] for k in range(len(scores))]


@register
class PathWeight(NodeImportanceEvolution):
    """Removes the weakest connections of the weakest paths and grows from important nodes.

    Each update: A_k = |W_k| / |F_k|; path statistics in O(connections); the λ-quantile q of path
    importance; among connections whose strongest path is below q, the fraction ζ with the smallest
    normalised weight is removed (all layers ranked together); then per layer round(δ · removed)
    connections grow from sources drawn ∝ node importance (eq. 2-6). See the module docstring for how
    each ambiguous point of the paper is read.
    """

    name = "path_weight"
    summary = "prune the weakest connections on weak paths, grow from important nodes (Naji et al.)"
    adapted = ("lam", "zeta", "delta")
    params = (
        Param(
            "lam",
            0.9,
            "λ: fraction of the weakest paths whose connections may be removed (the paper's λ)",
            minimum=0.0,
            maximum=1.0,
        ),
        Param("zeta", 0.3, "ζ: fraction of the weak-path connections removed per update", minimum=0.0, maximum=1.0),
        Param(
            "samples",
            10_000,
            "paths sampled to estimate the λ-quantile; exact when the network has at most this many paths",
            minimum=1,
            maximum=MAX_EXACT_PATHS,
        ),
        *EVOLUTION_PARAMS,
    )

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        check_linear_chain(self.layers, self.context.model)
        self.feature_norms = FeatureNorms(len(self.layers))

    def attach(self) -> None:
        """|F_k| gathering: a forward pre-hook on every sparse layer's module."""
        for index, layer in enumerate(self.layers):
            self.add_hook(layer.module.register_forward_pre_hook(self.feature_norms.hook(index)))

    def weak_path_quantile(self, abs_weights: list[Tensor], total_paths: float) -> float:
        """The λ-quantile of path importance: exact up to ``samples`` paths, else sampled; inf (every
        connection weak) when the network has no input-to-output path."""
        if total_paths == 0:
            return math.inf
        samples = self.hparams["samples"]
        if total_paths <= samples:
            return path_quantile(abs_weights, self.values["lam"])
        return path_quantile(abs_weights, self.values["lam"], samples=samples, generator=self.generator)

    def select(self) -> Selection:
        layers = self.layers
        norms = [max(norm, _MIN_FEATURE_NORM) for norm in self.feature_norms.means()]
        self.feature_norms.reset()
        abs_weights = [normalised_weight_matrix(layer, norm) for layer, norm in zip(layers, norms)]
        stats = path_statistics(abs_weights)
        threshold = self.weak_path_quantile(abs_weights, stats.total_paths) * _BELOW_QUANTILE
        candidates, scores = [], []
        for layer, norm, strongest in zip(layers, norms, stats.edge_max_path):
            positions, values = layer.active_positions(), layer.active_values()
            weak = (strongest_path_per_connection(strongest, layer) < threshold).nonzero().squeeze(1)
            candidates.append(positions[weak.to(positions.device)].cpu())
            scores.append((values[weak.to(values.device)].to(torch.float64).abs() / norm).cpu())
        count = int(round(self.values["zeta"] * sum(c.numel() for c in candidates)))
        capacity = [layer.numel - layer.active for layer in layers]
        chosen = smallest_within_capacity(scores, count, capacity)
        prune = [c[i] for c, i in zip(candidates, chosen)]
        every = [(layer.active_values().to(torch.float64).abs() / norm).cpu() for layer, norm in zip(layers, norms)]
        return Selection(prune, stats.node_importance[:-1], every, [s[i] for s, i in zip(scores, chosen)])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "feature_norms": self.feature_norms.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "feature_norms" not in state:
            raise UsageError(f"the checkpoint's method state does not belong to method {self.name}")
        super().load_state_dict(state)
        self.feature_norms.load_state_dict(state["feature_norms"])


def normalised_weight_matrix(layer: SparseLayer, feature_norm: float) -> Tensor:
    """A_k = |W_k|ᵀ / |F_k| (eq. 3) of the active connections: a sparse COO (in, out) float64 matrix.

    The layout ``path_statistics`` takes (input x output); built from the layer's active positions and
    values, so it costs O(nnz log nnz) on every backend and is the same matrix on all.
    """
    out_features, in_features = layer.shape
    positions = layer.active_positions()
    values = layer.active_values().to(device=positions.device, dtype=torch.float64).abs() / feature_norm
    indices = torch.stack([positions % in_features, positions // in_features])
    matrix = torch.sparse_coo_tensor(indices, values, (in_features, out_features), check_invariants=False)
    return matrix.coalesce()


def strongest_path_per_connection(edge_max_path: Tensor, layer: SparseLayer) -> Tensor:
    """The strongest path through each active connection, aligned with ``layer.active_positions()``.

    ``edge_max_path`` is the sparse (in, out) result of ``path_statistics`` for the matrix of
    :func:`normalised_weight_matrix`; it lists only connections of non-zero weight, so an active
    connection of weight exactly 0 (on no path) gets 0.
    """
    out_features, in_features = layer.shape
    positions = layer.active_positions()
    sparse = edge_max_path.coalesce()
    rows, cols = sparse.indices()
    slots, found = locate(
        rows * out_features + cols, (positions % in_features) * out_features + positions // in_features
    )
    strongest = torch.zeros(positions.numel(), dtype=torch.float64, device=positions.device)
    strongest[found] = sparse.values()[slots[found]]
    return strongest


def check_linear_chain(layers: Sequence[SparseLayer], model: nn.Module | None = None) -> None:
    """Raise a one-line UsageError unless the sparse layers form a chain of fully connected layers.

    Shapes alone can chain by accident (a transformer's projections all take the width they give); a
    model that knows it is no chain says so with ``chain_of_sparse_layers = False``.
    """
    if model is not None and not getattr(model, "chain_of_sparse_layers", True):
        raise UsageError(
            f"path_weight needs a chain of fully connected layers; {type(model).__name__}'s sparse layers are "
            "not one (attention and residual connections): use method sensitivity or another method"
        )
    for index, layer in enumerate(layers):
        if not layer.is_linear:
            raise UsageError(
                f"path_weight needs a chain of fully connected layers, but sparse layer {layer.name!r} is a "
                f"{type(layer.module).__name__}; sparsify only the fully connected part (--sparsify fc) or use "
                "method sensitivity"
            )
        if index and layer.shape[1] != layers[index - 1].shape[0]:
            raise UsageError(
                f"path_weight needs a chain of fully connected layers, but {layer.name!r} takes "
                f"{layer.shape[1]} inputs after {layers[index - 1].name!r} gives {layers[index - 1].shape[0]}"
            )
