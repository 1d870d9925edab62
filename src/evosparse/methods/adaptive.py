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

Growth needs ∂L/∂w at inactive positions; it is taken at the last training step before the update
(no second backward pass), as the paper's per-step algorithm uses the current gradient. The layers
record it (:meth:`~evosparse.topology.layer.SparseLayer.gradient_at`) in whatever form their backend
computes cheaply: the dense gradient on the masked backend; on the csr backend the layer input X and
output gradient dY, from which ∂L/∂w[i, j] = Σ_b dY[b, i] · X[b, j] is computed only where needed (an
SDDMM, exactly equal to the dense gradient there). So:

* deterministic: every inactive position is scored, block of rows by block of rows
  (:meth:`~evosparse.topology.layer.SparseLayer.inactive_gradient_blocks`), keeping only the running
  largest (and ties at the cut): O(block + grown + ties at the cut) memory, and on csr O(out · in ·
  batch) time;
* stochastic with β₀ < 1: the candidates are drawn at the update, for all layers at once, from the
  method's generator (checkpointed, so a resumed run draws the same ones), and the gradient is read at
  them only: O(candidates · batch) on csr. That is the paper's own sampling of a fraction β₀ of the
  inactive positions (here exactly round(β₀ · free) of them, uniformly without replacement); the
  gradient is that of the last mini-batch before the update (the paper updates after every step, this
  library on its schedule);
* stochastic with β₀ = 1 scores every inactive position at once, so it lists all of them: O(out · in)
  time and memory on every backend. Use β₀ < 1 for large layers.

Both modes are written once against the sparse-layer protocol and make the same choices on every backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from evosparse.criteria.magnitude import weakest_of
from evosparse.errors import UsageError
from evosparse.methods.base import SCHEDULE_PARAMS, GradientRecording, Method, Param, register
from evosparse.methods.context import MethodContext
from evosparse.topology.layer import SparseLayer
from evosparse.topology.positions import complement

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


def largest_in_blocks(
    blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, gradients) of the ``count`` largest |gradient| over ``blocks`` of (positions, gradients).

    The same choice, and the same use of ``generator``, as :func:`largest_with_random_ties` on all
    blocks concatenated (ties at the cut broken uniformly at random), keeping in memory only the
    entries at or above the running cut: O(count + ties + block) instead of every position.
    """
    positions, gradients = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    for block_positions, block_gradients in blocks:
        positions = torch.cat([positions.to(block_positions.device), block_positions])
        gradients = torch.cat([gradients.to(block_gradients), block_gradients])
        if positions.numel() > count > 0:
            keep = gradients.abs() >= torch.topk(gradients.abs(), count).values[-1]
            positions, gradients = positions[keep.to(positions.device)], gradients[keep]
    chosen = largest_with_random_ties(gradients.abs(), count, generator)
    return positions[chosen.to(positions.device)], gradients[chosen]


def magnitude_threshold_prune(layer: SparseLayer, k: float) -> tuple[torch.Tensor, float]:
    """The g → ∞ pruning set: active positions with |w| < k·W̄, the weakest first when capped at the layer's
    free positions, and W̄ (mean |w| over the active ones)."""
    positions, values = layer.active_positions(), layer.active_values()
    magnitude = values.abs()
    mean = float(magnitude.mean()) if values.numel() else 0.0
    below = weakest_of(values, (magnitude < k * mean).nonzero().squeeze(1), layer.numel - layer.active)
    return positions[below.to(positions.device)], mean


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

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.stochastic = self.hparams["mode"] == "stochastic"
        self.fixed_budget = not self.stochastic
        if not self.stochastic:
            defaults = {p.name: p.default for p in self.params}
            changed = [name for name in STOCHASTIC_ONLY if self.hparams[name] != defaults[name]]
            if changed:
                raise UsageError(f"parameter {changed[0]} has no effect in deterministic mode; add mode=stochastic")

    def gradient_recording(self) -> GradientRecording:
        return "before_update" if self.hparams["update_unit"] == "step" else "every_step"

    def growth_candidates(self) -> list[torch.Tensor]:
        """Per layer, the inactive positions stochastic growth chooses from: a β₀-sample (drawn for every
        layer, in layer order, before any other draw of the update), or all of them in increasing order."""
        candidates = []
        for layer in self.layers:
            if self.hparams["beta0"] < 1.0:
                count = round(self.hparams["beta0"] * (layer.numel - layer.active))
                candidates.append(layer.sample_inactive(count, self.generator))
            else:
                candidates.append(complement(layer.active_positions(), layer.numel))
        return candidates

    # -- shared pieces --------------------------------------------------------------------------

    def target_fraction(self, index: int) -> float:
        """α for layer ``index``: the ``alpha`` parameter, or the layer's target budget / size."""
        return self.hparams["alpha"] or self.context.plan.budgets[index] / self.layers[index].numel

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
        """Sample β₁ of the active weights of layer ``index`` and compute each one's P(1→0)."""
        layer = self.layers[index]
        active, values = layer.active_positions(), layer.active_values()
        sampled = sample_fraction(
            torch.arange(active.numel(), device=active.device), self.hparams["beta1"], self.generator
        )
        magnitude = values[sampled.to(values.device)].abs().to(torch.float64)
        mean = float(magnitude.mean()) if sampled.numel() else 0.0
        h = self.hparams
        probability = prune_probability(magnitude, mean, h["k"], h["g"], h["s"], *self._fractions(index))
        return Stage(active[sampled], probability, mean)

    def growth_stage(self, index: int, candidates: torch.Tensor) -> Stage:
        """The growth ``candidates`` of layer ``index`` (inactive before this update) with each one's P(0→1)."""
        gradients = self.layers[index].gradient_at(candidates)
        magnitude = gradients.abs().to(torch.float64)
        mean = float(magnitude.mean()) if candidates.numel() else 0.0
        h = self.hparams
        probability = activation_probability(magnitude, mean, h["l"], h["g"], h["s"], *self._fractions(index))
        return Stage(candidates, probability, mean, gradients)

    def _fractions(self, index: int) -> tuple[float, float]:
        """(a, α): the layer's active fraction now and its target."""
        layer = self.layers[index]
        return layer.active / layer.numel, self.target_fraction(index)

    def _draw(self, stage: Stage) -> torch.Tensor:
        hits = torch.rand(stage.probabilities.numel(), generator=self.generator, dtype=torch.float64)
        return hits.to(stage.probabilities.device) < stage.probabilities

    def _stochastic_update(self, index: int, candidates: torch.Tensor) -> int:
        pruning, growth = self.pruning_stage(index), self.growth_stage(index, candidates)
        prune = pruning.positions[self._draw(pruning).to(pruning.positions.device)]
        chosen = self._draw(growth)
        assert growth.gradients is not None
        values = self.new_weights(growth.gradients[chosen], pruning.reference)
        grow = growth.positions[chosen.to(growth.positions.device)]
        return self.layers[index].rewire(prune, grow, values)

    # -- deterministic preset -------------------------------------------------------------------

    def _deterministic_update(self, layer: SparseLayer) -> int:
        prune, mean = magnitude_threshold_prune(layer, self.hparams["k"])
        if prune.numel() == 0:
            return 0
        grow, gradients = largest_in_blocks(layer.inactive_gradient_blocks(), prune.numel(), self.generator)
        return layer.rewire(prune, grow, self.new_weights(gradients, mean))

    def update(self) -> int:
        try:
            if not self.stochastic:
                return sum(self._deterministic_update(layer) for layer in self.layers)
            candidates = self.growth_candidates()
            return sum(self._stochastic_update(index, chosen) for index, chosen in enumerate(candidates))
        finally:
            for layer in self.layers:
                layer.forget_gradients()
