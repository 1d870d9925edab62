"""Training cost in multiply-adds, counted the way RigL's paper counts FLOPs (Evci et al. 2020, App. H).

One training step on a batch of ``B`` samples costs ``B · (f_S + f_S + g)``: the forward pass ``f_S``
(the multiply-adds of :func:`~evosparse.engine.inference_cost.forward_macs` with the layers' active
weights at that step), the input gradient, which costs as much again, and the weight gradient ``g``,
which costs ``f_S`` too — except on the steps where a method records the dense weight gradient of its
sparse layers (RigL before an update, AWS every step), when it costs the dense forward ``f_D``. A
dense network costs ``3 · B · f_D`` per step, the dense-equivalent reported beside. Evaluation, the
topology updates' own bookkeeping and anything not counted by ``forward_macs`` (biases, activations,
recurrent cells) are left out, as in the paper; FLOPs are twice these counts, the ratio to dense is
the same. A method that starts dense (GMP, pruning) costs dense steps until it prunes, as it should.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from evosparse.engine.inference_cost import forward_macs, weight_uses
from evosparse.sparsifier import Sparsifier


@dataclass
class TrainingCost:
    """Multiply-adds spent so far: ``sparse`` as trained, ``dense`` for the dense network on the same steps."""

    sparse: int = 0
    dense: int = 0


class TrainingCostMeter:
    """Counts the multiply-adds of each training step of a model driven by ``sparsifier``.

    The weight uses per sample are measured once (one hooked forward pass of ``sample``); the sparse
    layers' active counts are re-read only when the sparsifier's topology may have changed, so counting
    a step reads no tensor (no device synchronisation).
    """

    def __init__(self, model: nn.Module, sample: torch.Tensor, sparsifier: Sparsifier) -> None:
        self.uses = weight_uses(model, sample)
        self.sparsifier = sparsifier
        self.version: int | None = None
        self.forward = self.dense_forward = self.gradient_extra = 0

    def _refresh(self) -> None:
        """Re-read the forward cost and the extra cost of a dense weight gradient of the sparse layers."""
        active: Counter[nn.Module] = Counter()
        for layer in self.sparsifier.topology.layers:  # the matrices of a packed parameter share a module
            active[layer.module] += layer.active
        self.forward, self.dense_forward = forward_macs(self.uses, active)
        sparse_only = {module: uses for module, uses in self.uses.items() if module in active}
        sparse_part, dense_part = forward_macs(sparse_only, active)
        self.gradient_extra = dense_part - sparse_part
        self.version = self.sparsifier.topology_version

    def step(self, batch_size: int) -> TrainingCost:
        """The cost of the coming training step on ``batch_size`` samples (call before its backward pass)."""
        if self.version != self.sparsifier.topology_version:
            self._refresh()
        extra = self.gradient_extra if self.sparsifier.records_dense_gradient() else 0
        return TrainingCost(batch_size * (3 * self.forward + extra), batch_size * 3 * self.dense_forward)
