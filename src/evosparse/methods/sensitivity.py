"""Sensitivity evolution (Naji, Abtahi and Marvasti, "Efficient Sparse Artificial Neural Networks", Sec. III).

The importance of a connection is its sensitivity (eq. 10), the importance of a node the sum of the
sensitivities of its outgoing connections (eq. 11); everything else — growth ∝ node importance, δ, the
time-varying rule — is Path-Weight's (:class:`~evosparse.methods.path_weight.NodeImportanceEvolution`).

How we read the points the paper leaves open (also in docs/design.md):

* **∂f/∂w** is the gradient of the training loss, the one back-propagation computes anyway (the paper's
  argument for the method's zero overhead). Its magnitude is accumulated over the steps since the
  previous update (the last epoch with the default schedule): g = mean over steps of |∂L/∂w|, read from
  the dense gradient before it is masked, so no extra backward pass is needed.
* **Two forms.** ``form="paper"`` is eq. 10 as written, S = g / |w|: it ranks tiny weights as the most
  important (a weight that just grew at 0.01 is hard to remove). ``form="relative"`` is S = g · |w|, the
  classic normalised sensitivity (first-order estimate of the loss change if w were removed). In the
  paper form an active weight that is exactly 0 gets S = 0 (it contributes nothing as it stands).
* **Removal** takes, in each layer, the round(ζ · active) connections with the lowest S (at most as many
  as the layer has free positions): S has no normalisation that would make layers comparable.
* **Node importance** (eq. 11) sums S over a source's active outgoing connections: for a convolution the
  source is an input channel and the sum runs over output channels and kernel positions. Works for every
  sparse layer type.
* **Backends.** g is accumulated per active connection from each layer's gradient hook
  (:meth:`~evosparse.topology.layer.SparseLayer.register_gradient_hook`: ∂L/∂w at the active connections,
  read from the dense gradient on the masked backend and from the gradient of the csr layer's values, an
  SDDMM, on csr), so nothing of size out x in is kept. Selection and growth are written once against the
  sparse-layer protocol, so every backend makes the same choices.
* **Units fall silent for good.** Growth draws a source ∝ its node importance (eq. 6, 11), so a hidden
  unit whose outgoing connections all score S = 0 (it outputs 0 on every sample, or its weights are 0)
  or are all removed is never a growth source again: the number of hidden units with outgoing
  connections only falls (measured in docs/results.md, "Sensitivity loses hidden units").
  ``importance_floor`` (shared with Path-Weight) lifts every source to at least that fraction of its
  layer's mean importance; 0, the default, is the paper's rule.
* **Defaults** (the paper gives none): ζ = 0.3 as SET, δ = 1, ``form="relative"``. On LeNet-300-100 at
  density 0.05 (MNIST, 10 epochs, seed 0) the relative form reached 96.2% test accuracy and the paper
  form 92.4%, falling after epoch 2: |g/w| keeps the tiny weights and removes the large ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from evosparse.criteria.time_varying import source_of
from evosparse.errors import UsageError
from evosparse.methods.base import Param, register
from evosparse.methods.context import MethodContext
from evosparse.methods.path_weight import EVOLUTION_PARAMS, NodeImportanceEvolution, Selection

FORMS = ("paper", "relative")


def sensitivity_scores(mean_abs_grad: Tensor, weight: Tensor, form: str) -> Tensor:
    """S of each connection (eq. 10) from its mean |∂L/∂w| and its weight, as float64.

    ``paper``: g / |w| (0 where w is exactly 0); ``relative``: g · |w|.
    """
    g = mean_abs_grad.to(torch.float64)
    w = weight.detach().to(torch.float64).abs()
    if form == "paper":
        return torch.where(w > 0, g / torch.where(w > 0, w, 1.0), 0.0)
    if form == "relative":
        return g * w
    raise UsageError(f"sensitivity form must be one of {', '.join(FORMS)}, got {form!r}")


def node_sensitivity(shape: tuple[int, ...], positions: Tensor, scores: Tensor) -> Tensor:
    """Eq. 11: per source (input unit or channel), the sum of the scores of its connections at flat
    ``positions`` of a weight of ``shape``."""
    total = torch.zeros(int(shape[1]), dtype=scores.dtype, device=scores.device)
    return total.index_add_(0, source_of(shape, positions), scores)


@register
class Sensitivity(NodeImportanceEvolution):
    """Removes the connections the loss is least sensitive to and grows from sensitive nodes (eq. 10-11).

    Gradient magnitudes are accumulated at every step from the backward pass; each update removes the
    fraction ζ of each layer's connections with the lowest sensitivity and grows round(δ · removed)
    connections whose source is drawn ∝ node sensitivity. Works on linear and convolution layers.
    """

    name = "sensitivity"
    summary = "prune the least sensitive connections |g/w| or |g·w|, grow from sensitive nodes (Naji et al.)"
    adapted = ("zeta", "delta")
    params = (
        Param(
            "form",
            "relative",
            "sensitivity: paper = |g/w| (eq. 10 as written), relative = |g·w|",
            choices=FORMS,
            paper="paper",
        ),
        Param(
            "zeta", 0.3, "ζ: fraction of each layer's active connections removed per update", minimum=0.0, maximum=1.0
        ),
        *EVOLUTION_PARAMS,
    )

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        #: Per layer, the sum of |∂L/∂w| at each active connection (in the order of its active positions)
        #: over the steps since the last update, and the number of those steps.
        self.grad_sums: list[Tensor] = [torch.zeros(layer.active) for layer in self.layers]
        self.grad_steps: list[int] = [0] * len(self.layers)

    def attach(self) -> None:
        """A gradient hook on every sparse layer feeds the sums."""
        for index, layer in enumerate(self.layers):
            self.add_hook(layer.register_gradient_hook(self._accumulator(index)))

    def _accumulator(self, index: int) -> Callable[[Tensor], None]:
        def accumulate(at_active: Tensor) -> None:
            total = self.grad_sums[index]
            if total.device != at_active.device:  # follows the model when it moves
                total = self.grad_sums[index] = total.to(at_active.device)
            total.add_(at_active.abs())
            self.grad_steps[index] += 1

        return accumulate

    def mean_abs_gradient(self, index: int) -> Tensor:
        """Mean |∂L/∂w| at the active connections of sparse layer ``index`` over the steps since the last
        update (zeros if none), aligned with its active positions."""
        return self.grad_sums[index] / max(self.grad_steps[index], 1)

    def select(self) -> Selection:
        prune, importance, every, removed = [], [], [], []
        for index, layer in enumerate(self.layers):
            active = layer.active_positions()
            mean = self.mean_abs_gradient(index).to(active.device)
            scores = sensitivity_scores(mean, layer.active_values(), self.hparams["form"])
            count = min(int(round(self.values["zeta"] * active.numel())), layer.numel - layer.active)
            weakest = torch.argsort(scores, stable=True)[:count]
            prune.append(active[weakest.to(active.device)])
            importance.append(node_sensitivity(layer.shape, active.to(scores.device), scores))
            every.append(scores)
            removed.append(scores[weakest])
        return Selection(prune, importance, every, removed)

    def update(self) -> int:
        """Select, rewire, then start new sums over the new connections (δ ≠ 1 changes their number)."""
        changed = super().update()
        self.grad_sums = [total.new_zeros(layer.active) for total, layer in zip(self.grad_sums, self.layers)]
        self.grad_steps = [0] * len(self.layers)
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "grad_sums": [total.clone() for total in self.grad_sums],
            "grad_steps": list(self.grad_steps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the sums, one entry per active connection of the (already restored) layers."""
        sums = state.get("grad_sums")
        if (
            not isinstance(sums, list)
            or len(sums) != len(self.layers)
            or any(not torch.is_tensor(s) or s.shape != (layer.active,) for s, layer in zip(sums, self.layers))
            or len(state.get("grad_steps", ())) != len(self.layers)
        ):
            raise UsageError(f"the checkpoint's method state does not belong to method {self.name}")
        super().load_state_dict(state)
        self.grad_sums = [saved.detach().clone().to(layer.device) for saved, layer in zip(sums, self.layers)]
        self.grad_steps = [int(steps) for steps in state["grad_steps"]]
