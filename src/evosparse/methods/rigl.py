"""RigL: Rigging the Lottery (Evci et al., ICML 2020)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch

from evosparse.backends.csr_growth import exact_top_inactive_gradients
from evosparse.backends.layer_view import CsrLayerView, SparseLayerView
from evosparse.criteria.growth import largest_first, top_scores_growth
from evosparse.criteria.magnitude import weakest_of
from evosparse.criteria.schedules import cosine_update_fraction
from evosparse.errors import UsageError
from evosparse.methods.base import Method, Param, register, step_schedule

if TYPE_CHECKING:
    from evosparse.sparsifier import Sparsifier


@register
class RigL(Method):
    """Every ΔT steps until T_end, swap a cosine-decayed fraction of each layer's connections.

    Drop: the smallest |w| among the active connections. Grow: as many positions, among those inactive
    before the update, with the largest dense gradient magnitude |∂L/∂w| of the update step's
    mini-batch; grown weights start at zero (and their optimizer state is reset). The dense gradient
    comes from the gradient hook of that step's ordinary backward pass, kept only when an update
    follows, so RigL costs no extra backward pass and no per-step copy.

    On the csr backend the gradient at inactive positions comes from each layer's
    :class:`~evosparse.backends.csr_ops.GradientTap` (the update step's input and output gradient):
    with ``candidates=0`` every inactive position is scored, block of rows by block of rows (exact,
    the same choice as the masked backend; O(out·in·batch) time but bounded memory); with
    ``candidates=N`` only N inactive positions drawn uniformly are scored and the largest are grown
    (an approximation: RigL's growth restricted to a random candidate set, for very large layers,
    at O(N · batch) cost). The sampled mode draws identically on both backends. The tap holds the
    last step's layer input and output gradient between steps (one batch of activations).
    """

    name = "rigl"
    summary = "drop smallest |w|, grow largest dense |gradient|, cosine-decayed fraction (Evci et al. 2020)"
    evolves = True
    supports_csr: ClassVar[bool] = True
    params = (
        Param(
            "alpha",
            0.3,
            "α: fraction of active connections swapped at step 0, cosine-decayed",
            minimum=0.0,
            maximum=1.0,
        ),
        Param(
            "candidates",
            0,
            "growth scores at this many random inactive positions per layer (0: all of them, exact)",
            minimum=0,
        ),
        *step_schedule(
            "ΔT: optimizer steps between topology updates",
            "T_end: fraction of training after which the topology is fixed",
        ),
    )

    def __init__(self, sparsifier: Sparsifier) -> None:
        super().__init__(sparsifier)
        if sparsifier.total_steps is None:
            raise UsageError("method rigl needs total_steps, the length of training, for its cosine decay")
        self.end_step: float = self.hparams["update_until"] * sparsifier.total_steps
        #: |∂L/∂w| by layer index, kept for the coming update only (empty between updates).
        self.kept_gradients: dict[int, torch.Tensor] = {}

    def wants_gradients(self) -> bool:
        return True

    def observe_gradient(self, index: int, grad: torch.Tensor) -> None:
        """Keep |∂L/∂w| of layer ``index`` when the coming optimizer step is followed by an update."""
        if self.sparsifier.update_pending():
            self.kept_gradients[index] = grad.detach().abs()

    def update(self) -> int:
        fraction = cosine_update_fraction(self.sparsifier.global_step, self.hparams["alpha"], self.end_step)
        try:
            return sum(self._swap(index, fraction) for index in range(len(self.sparsifier.views)))
        finally:
            self.kept_gradients.clear()
            for view in self.sparsifier.views:
                if isinstance(view, CsrLayerView) and view.layer.tap is not None:
                    view.layer.tap.clear()

    def _swap(self, index: int, fraction: float) -> int:
        """RigL's update op on one layer: drop the weakest, grow the steepest, assert the exchange is exact."""
        view = self.sparsifier.views[index]
        name = self.topology.layers[index].name
        budget = view.active
        count = min(round(fraction * view.active), view.numel - view.active)
        positions = view.active_positions()
        drop = positions[weakest_of(view.active_values(), torch.arange(view.active), count).to(positions.device)]
        grow = self._steepest_inactive(index, view, count)
        changed = view.rewire(drop, grow, 0.0)
        assert drop.numel() == grow.numel() == count, f"{name}: unequal drop and grow"
        assert not torch.isin(drop.to(grow.device), grow).any(), f"{name}: a position dropped and grown"
        assert view.active == budget, f"{name}: budget {budget} drifted to {view.active}"
        return changed

    def _steepest_inactive(self, index: int, view: SparseLayerView, count: int) -> torch.Tensor:
        """``count`` positions inactive before the update with the largest |∂L/∂w| (among the candidates)."""
        score_at = self._gradient_reader(index, view)
        sample_size = self.hparams["candidates"]
        if sample_size:
            candidates = view.sample_inactive(min(max(sample_size, count), view.numel - view.active), self.generator)
            return candidates[largest_first(score_at(candidates), count).to(candidates.device)]
        if isinstance(view, CsrLayerView):
            return exact_top_inactive_gradients(view.layer, count)
        return top_scores_growth(self.kept_gradients[index], self.topology.layers[index].mask, count)

    def _gradient_reader(self, index: int, view: SparseLayerView) -> Callable[[torch.Tensor], torch.Tensor]:
        """|∂L/∂w| at given flat positions of layer ``index`` from the update step's backward pass."""
        name = self.topology.layers[index].name
        missing = (
            f"rigl: no gradient of {name} was kept for this update (updates must follow a backward pass "
            "and Sparsifier.step)"
        )
        if isinstance(view, CsrLayerView):
            view.recorded_tap(missing)  # refuse before any work
            return lambda positions: view.recorded_gradient_at(positions, missing).abs()
        kept = self.kept_gradients.get(index)
        if kept is None:
            raise UsageError(missing)
        return lambda positions: kept.reshape(-1)[positions.to(kept.device)]
