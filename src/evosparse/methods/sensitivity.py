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
* **Backends.** On the masked backend g is accumulated from the dense gradient hook (shaped like the
  weight); on the csr backend from the gradient of the layer's ``values``, which is exactly ∂L/∂w at the
  active connections (an SDDMM), one entry per connection, so nothing of size out x in is formed. Only the
  active entries are ever read, and the selection and growth are written once against the layer views, so
  both backends make the same choices.
* **Defaults** (the paper gives none): ζ = 0.3 as SET, δ = 1, ``form="relative"``. On LeNet-300-100 at
  density 0.05 (MNIST, 10 epochs, seed 0) the relative form reached 96.2% test accuracy and the paper
  form 92.4%, falling after epoch 2: |g/w| keeps the tiny weights and removes the large ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from evosparse.backends.layer_view import SparseLayerView
from evosparse.criteria.time_varying import source_of
from evosparse.errors import UsageError
from evosparse.methods.base import Param, register
from evosparse.methods.path_weight import EVOLUTION_PARAMS, NodeImportanceEvolution, Selection

if TYPE_CHECKING:
    from evosparse.sparsifier import Sparsifier

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

    Gradient magnitudes are accumulated at every step from the dense gradient; each update removes the
    fraction ζ of each layer's connections with the lowest sensitivity and grows round(δ · removed)
    connections whose source is drawn ∝ node sensitivity. Works on linear and convolution layers.
    """

    name = "sensitivity"
    summary = "prune the least sensitive connections |g/w| or |g·w|, grow from sensitive nodes (Naji et al.)"
    adapted = ("zeta", "delta")
    supports_csr: ClassVar[bool] = True
    params = (
        Param(
            "form",
            "relative",
            "sensitivity: paper = |g/w| (eq. 10 as written), relative = |g·w|",
            choices=FORMS,
        ),
        Param(
            "zeta", 0.3, "ζ: fraction of each layer's active connections removed per update", minimum=0.0, maximum=1.0
        ),
        *EVOLUTION_PARAMS,
    )

    def __init__(self, sparsifier: Sparsifier) -> None:
        super().__init__(sparsifier)
        self.csr = sparsifier.backend == "csr"
        #: Per layer, the sum of |∂L/∂w| since the last update: shaped like the weight on the masked
        #: backend, one entry per active connection (in the order of its values) on csr.
        self.grad_sums: list[Tensor] = []
        self.grad_steps: list[int] = []

    def attach(self) -> None:
        """Zeroed sums sized by the final layers; on csr a hook on each layer's values feeds them."""
        layers = self.topology.layers
        self.grad_steps = [0] * len(layers)
        if not self.csr:
            self.grad_sums = [torch.zeros_like(layer.weight, dtype=torch.float32) for layer in layers]
            return
        self.grad_sums = [torch.zeros(layer.active, device=layer.module.values.device) for layer in layers]
        for index, layer in enumerate(layers):
            hook = self._values_hook(index)
            self.add_hook(layer.module.values.register_post_accumulate_grad_hook(hook))

    def _values_hook(self, index: int) -> Callable[[Tensor], None]:
        def observe(values: Tensor) -> None:
            if values.grad is not None:
                self.observe_gradient(index, values.grad)

        return observe

    def wants_gradients(self) -> bool:
        """The dense gradient hook on the masked backend; csr layers feed :meth:`observe_gradient` themselves."""
        return not self.csr

    def observe_gradient(self, index: int, grad: Tensor) -> None:
        """Add |∂L/∂w| (dense on masked, at the active connections on csr) to layer ``index``'s sums."""
        self.grad_sums[index].add_(grad.detach().abs())
        self.grad_steps[index] += 1

    def mean_abs_gradient(self, index: int) -> Tensor:
        """Mean |∂L/∂w| of sparse layer ``index`` over the steps since the last update (zeros if none),
        shaped like :attr:`grad_sums`."""
        return self.grad_sums[index] / max(self.grad_steps[index], 1)

    def _mean_at_active(self, index: int, view: SparseLayerView) -> Tensor:
        """Mean |∂L/∂w| at the active connections of layer ``index``, aligned with ``view.active_positions()``."""
        mean = self.mean_abs_gradient(index)
        return mean if self.csr else mean.view(-1)[view.active_positions()]

    def select(self) -> Selection:
        prune, importance = [], []
        for index, view in enumerate(self.sparsifier.views):
            active = view.active_positions()
            scores = sensitivity_scores(self._mean_at_active(index, view), view.active_values(), self.hparams["form"])
            count = min(int(round(self.values["zeta"] * active.numel())), view.numel - view.active)
            prune.append(active[torch.argsort(scores, stable=True)[:count].to(active.device)])
            importance.append(node_sensitivity(view.shape, active.to(scores.device), scores))
        for total in self.grad_sums:
            total.zero_()
        self.grad_steps = [0] * len(self.grad_steps)
        return Selection(prune, importance)

    def update(self) -> int:
        changed = super().update()
        if self.csr:  # one entry per connection: follow the new connections (δ ≠ 1 changes their number)
            self.grad_sums = [
                total.new_zeros(view.active) for total, view in zip(self.grad_sums, self.sparsifier.views)
            ]
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "grad_sums": [total.clone() for total in self.grad_sums],
            "grad_steps": list(self.grad_steps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sums = state.get("grad_sums")
        if (
            sums is None
            or len(sums) != len(self.grad_sums)
            or any(s.shape != mine.shape for s, mine in zip(sums, self.grad_sums))
        ):
            raise UsageError(f"the checkpoint's method state does not belong to method {self.name}")
        super().load_state_dict(state)
        for mine, saved in zip(self.grad_sums, sums):
            mine.copy_(saved)
        self.grad_steps = [int(steps) for steps in state["grad_steps"]]
