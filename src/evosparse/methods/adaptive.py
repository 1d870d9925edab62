"""Adaptive Weight Sparsity (anonymous ICLR 2018 submission): prune small weights, activate large gradients.

Per weight matrix, an update first prunes active weights with probability P(1→0) (small |w|
relative to their mean) and then activates inactive positions with probability P(0→1) (large |∂L/∂w|
relative to their mean); a term s(a − α) pulls the active fraction a toward its target α.

Two modes:

* ``stochastic`` — the general algorithm of the paper's Section 3 with all its parameters. Both
  probabilities use a, the active fraction at the start of the update, and growth draws only from
  positions inactive before the update. The paper gives no values for g, s, l outside the limit;
  ours (g = 10, s = 10, l = 4) kept digits near its α. Since s(a − α) shifts every candidate's
  threshold at once, s·|a − α| well above 1 flips nearly all of them and the density oscillates:
  start near α (the default α is the run's own per-layer density).
* ``deterministic`` (default) — the limit the paper's experiments use (Section 4: β = 1, g → ∞,
  s → ∞, C_g = 0, r = 2kW̄). With g → ∞ both probabilities become step functions; with s → ∞ the
  bias s(a − α) acts as a constraint that holds the number of active weights at its budget. At the
  start of an update a = α (the budget is kept), so pruning is exactly "every active weight with
  |w| < k·W̄" (W̄ = mean |w| of all active weights). For the activation step the constraint shifts the
  gradient threshold l·V̄ to whatever value admits exactly as many positions as were pruned, so the
  activated positions are the inactive ones with the largest |∂L/∂w| (ties broken at random) and l
  plays no role. The number pruned is capped at the layer's free positions (a dense layer swaps
  nothing), and a position pruned in an update is never activated in the same update.

Growth needs the dense gradient at inactive positions; it is taken from the sparsifier's gradient
hook (no second backward pass) at the last training step before the update, as the paper's
per-step algorithm uses the current gradient. With β₀ < 1 only the sampled candidate positions'
gradients are kept; the candidates are drawn (from the method's generator) at the first training
step after each update, so a run resumed from a checkpoint draws the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from evosparse.criteria.magnitude import weakest_of
from evosparse.errors import UsageError
from evosparse.methods.base import SCHEDULE_PARAMS, Method, Param, register

if TYPE_CHECKING:
    from evosparse.sparsifier import Sparsifier

MODES = ("deterministic", "stochastic")
#: Parameters that only the stochastic form reads; the deterministic preset refuses changed values.
STOCHASTIC_ONLY = ("beta0", "beta1", "g", "s", "l", "alpha")


def relative_to(values: torch.Tensor, scale: float) -> torch.Tensor:
    """``values / scale`` with the conventions 0/0 = 1 (a value equal to its reference) and x/0 = ∞."""
    if scale > 0:
        return values / scale
    return torch.where(values > 0, torch.inf, 1.0).to(values.dtype)


def prune_probability(
    magnitude: torch.Tensor, mean_magnitude: float, k: float, g: float, s: float, active: float, target: float
) -> torch.Tensor:
    """P(1→0) = σ(−g(|w|/(k·W̄) − 1 − s(a − α))) for each sampled active weight (AWS, Section 3)."""
    return torch.sigmoid(-g * (relative_to(magnitude, k * mean_magnitude) - 1 - s * (active - target)))


def activation_probability(
    grad_magnitude: torch.Tensor, mean_grad: float, threshold: float, g: float, s: float, active: float, target: float
) -> torch.Tensor:
    """P(0→1) = σ(g(|∂L/∂w|/(l·V̄) − 1 − s(a − α))), l = ``threshold``, per sampled inactive position (AWS, §3)."""
    return torch.sigmoid(g * (relative_to(grad_magnitude, threshold * mean_grad) - 1 - s * (active - target)))


def sample_fraction(positions: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random subset of ``round(fraction·n)`` of ``positions`` (all of them when fraction = 1)."""
    if fraction >= 1.0:
        return positions
    count = round(fraction * positions.numel())
    order = torch.randperm(positions.numel(), generator=generator)[:count]
    return positions[order.to(positions.device)]


def largest_with_random_ties(scores: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the ``count`` largest ``scores``; among scores tied at the cut, a uniformly random subset."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    cut = torch.topk(scores, count).values[-1]
    above = (scores > cut).nonzero().squeeze(1)
    tied = (scores == cut).nonzero().squeeze(1)
    chosen = torch.randperm(tied.numel(), generator=generator)[: count - above.numel()]
    return torch.cat([above, tied[chosen.to(tied.device)]])


def magnitude_threshold_prune(weight: torch.Tensor, mask: torch.Tensor, k: float) -> tuple[torch.Tensor, float]:
    """The g → ∞ pruning set: active positions with |w| < k·W̄, and W̄ (mean |w| over the active ones)."""
    active = mask.view(-1).nonzero().squeeze(1)
    magnitude = weight.detach().view(-1)[active].abs()
    mean = float(magnitude.mean()) if active.numel() else 0.0
    return active[magnitude < k * mean], mean


@dataclass
class Stage:
    """One stochastic stage of a layer: the sampled positions, each one's probability, and the reference
    mean (W̄ for pruning, V̄ for activation). ``gradients`` holds ∂L/∂w at the positions (activation only)."""

    positions: torch.Tensor
    probabilities: torch.Tensor
    reference: float
    gradients: torch.Tensor | None = None


@register
class AdaptiveWeightSparsity(Method):
    """Prune |w| < k·W̄ and activate the largest gradients (deterministic), or the paper's stochastic form.

    Budgets stay exact in ``deterministic`` mode (``fixed_budget`` is True); in ``stochastic`` mode the
    active fraction only tends to α, so the instance sets ``fixed_budget`` to False.
    """

    name = "adaptive"
    summary = "Adaptive Weight Sparsity: prune below k·mean|w|, grow largest |gradient| (ICLR 2018 subm.)"
    evolves = True
    params = (
        Param("mode", "deterministic", "the paper's experimental fixed-budget limit, or the stochastic form", MODES),
        Param("k", 0.5, "pruning threshold: weights with |w| < k·mean|w| are pruned (paper: 0.25 or 0.5)", minimum=0.0),
        Param("c_g", 0.0, "C_g: a new weight is C_g·∂L/∂w + U(-r, r) (C_g < 0 points it downhill)"),
        Param("r", -1.0, "noise radius of new weights; negative = 2·k·W̄ as in the paper's experiments"),
        Param("beta1", 1.0, "stochastic: fraction of active weights sampled for pruning", minimum=0.0, maximum=1.0),
        Param("beta0", 1.0, "stochastic: fraction of inactive positions sampled for growth", minimum=0.0, maximum=1.0),
        Param("g", 10.0, "stochastic: sharpness of both probabilities (∞ = deterministic thresholds)", minimum=0.0),
        Param("s", 10.0, "stochastic: pull of the active fraction a toward α", minimum=0.0),
        Param("l", 4.0, "stochastic: gradients above l·mean|∂L/∂w| tend to be activated", minimum=0.0),
        Param("alpha", 0.0, "stochastic: target active fraction α; 0 = each layer's target", minimum=0.0, maximum=1.0),
        *SCHEDULE_PARAMS,
    )

    def __init__(self, sparsifier: Sparsifier) -> None:
        super().__init__(sparsifier)
        self.stochastic = self.hparams["mode"] == "stochastic"
        self.fixed_budget = not self.stochastic
        if not self.stochastic:
            defaults = {p.name: p.default for p in self.params}
            changed = [name for name in STOCHASTIC_ONLY if self.hparams[name] != defaults[name]]
            if changed:
                raise UsageError(f"parameter {changed[0]} has no effect in deterministic mode; add mode=stochastic")
        self._gradients: dict[int, torch.Tensor] = {}
        self._candidates: dict[int, torch.Tensor] = {}

    # -- gradients ------------------------------------------------------------------------------

    def wants_gradients(self) -> bool:
        return True

    @property
    def _sampled_growth(self) -> bool:
        return self.stochastic and self.hparams["beta0"] < 1.0

    def observe_gradient(self, index: int, grad: torch.Tensor) -> None:
        """Keep this step's gradient (only at the sampled candidates when β₀ < 1), overwriting the last."""
        if self.hparams["update_unit"] == "step" and not self.sparsifier.update_pending():
            return
        flat = grad.detach().view(-1)
        if self._sampled_growth:
            flat = flat[self._growth_candidates(index)]
        kept = self._gradients.get(index)
        if kept is None:
            self._gradients[index] = flat.clone()
        else:
            kept.copy_(flat)

    def _growth_candidates(self, index: int) -> torch.Tensor:
        """The inactive positions growth may choose from (a β₀-sample in stochastic mode, drawn once per update)."""
        if index not in self._candidates:
            inactive = (~self.topology.layers[index].mask.view(-1)).nonzero().squeeze(1)
            fraction = self.hparams["beta0"] if self.stochastic else 1.0
            self._candidates[index] = sample_fraction(inactive, fraction, self.generator)
        return self._candidates[index]

    def _candidate_gradients(self, index: int) -> torch.Tensor:
        """∂L/∂w of the last training step at the growth candidates of layer ``index``."""
        if index not in self._gradients:
            raise UsageError("adaptive grows by gradient: run a training step (backward + step) before each update")
        kept = self._gradients[index]
        return kept if self._sampled_growth else kept[self._growth_candidates(index)]

    def _forget_gradients(self) -> None:
        self._gradients.clear()
        self._candidates.clear()

    # -- shared pieces --------------------------------------------------------------------------

    def target_fraction(self, index: int) -> float:
        """α for layer ``index``: the ``alpha`` parameter, or the layer's target budget / size."""
        layer = self.topology.layers[index]
        return self.hparams["alpha"] or self.sparsifier.target_budgets[index] / layer.numel

    def new_weights(self, gradients: torch.Tensor, mean_magnitude: float) -> torch.Tensor:
        """C_g·∂L/∂w + U(−r, r), with r = 2·k·W̄ unless the ``r`` parameter is set (AWS, Section 3)."""
        radius = self.hparams["r"] if self.hparams["r"] >= 0 else 2 * self.hparams["k"] * mean_magnitude
        noise = (torch.rand(gradients.numel(), generator=self.generator, dtype=torch.float64) * 2 - 1) * radius
        return self.hparams["c_g"] * gradients.to(torch.float64) + noise.to(gradients.device)

    # -- stochastic stages ----------------------------------------------------------------------
    # Both stages use a, the active fraction at the start of the update (the paper conditions both
    # probabilities on the same tracked a). Updating a between the stages lets the activation stage
    # see the deficit the pruning stage just made and overshoot: measured on digits, α = 0.1, s = 10,
    # the density drifted to 0.15-0.20 that way and to 0.12-0.14 this way; with s = 30 it swung
    # between 0.03 and 1.

    def pruning_stage(self, index: int) -> Stage:
        """Sample β₁ of the active weights and compute each one's P(1→0)."""
        layer = self.topology.layers[index]
        active = layer.mask.view(-1).nonzero().squeeze(1)
        sampled = sample_fraction(active, self.hparams["beta1"], self.generator)
        magnitude = layer.weight.detach().view(-1)[sampled].abs().to(torch.float64)
        mean = float(magnitude.mean()) if sampled.numel() else 0.0
        h = self.hparams
        probability = prune_probability(magnitude, mean, h["k"], h["g"], h["s"], *self._fractions(index))
        return Stage(sampled, probability, mean)

    def growth_stage(self, index: int) -> Stage:
        """The growth candidates (inactive before this update) with each one's P(0→1)."""
        candidates = self._growth_candidates(index)
        gradients = self._candidate_gradients(index)
        magnitude = gradients.abs().to(torch.float64)
        mean = float(magnitude.mean()) if candidates.numel() else 0.0
        h = self.hparams
        probability = activation_probability(magnitude, mean, h["l"], h["g"], h["s"], *self._fractions(index))
        return Stage(candidates, probability, mean, gradients)

    def _fractions(self, index: int) -> tuple[float, float]:
        """(a, α): the layer's active fraction now and its target."""
        layer = self.topology.layers[index]
        return layer.active / layer.numel, self.target_fraction(index)

    def _draw(self, stage: Stage) -> torch.Tensor:
        hits = torch.rand(stage.probabilities.numel(), generator=self.generator, dtype=torch.float64)
        return hits.to(stage.probabilities.device) < stage.probabilities

    def _stochastic_update(self, index: int) -> int:
        pruning, growth = self.pruning_stage(index), self.growth_stage(index)
        prune = pruning.positions[self._draw(pruning)]
        chosen = self._draw(growth)
        values = self.new_weights(growth.gradients[chosen], pruning.reference)
        return self.topology.rewire(index, prune, growth.positions[chosen], values)

    # -- deterministic preset -------------------------------------------------------------------

    def _deterministic_update(self, index: int) -> int:
        layer = self.topology.layers[index]
        prune, mean = magnitude_threshold_prune(layer.weight, layer.mask, self.hparams["k"])
        prune = weakest_of(layer.weight, prune, layer.numel - layer.active)
        if prune.numel() == 0:
            return 0
        candidates = self._growth_candidates(index)
        gradients = self._candidate_gradients(index)
        chosen = largest_with_random_ties(gradients.abs(), prune.numel(), self.generator)
        values = self.new_weights(gradients[chosen], mean)
        return self.topology.rewire(index, prune, candidates[chosen], values)

    def update(self) -> int:
        step = self._stochastic_update if self.stochastic else self._deterministic_update
        changed = sum(step(index) for index in range(len(self.topology.layers)))
        self._forget_gradients()
        return changed

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """No state to restore; gradients and candidates kept so far belong to the old masks and are dropped."""
        super().load_state_dict(state)
        self._forget_gradients()
