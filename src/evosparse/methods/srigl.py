"""SRigL: structured RigL with a constant fan-in and neuron ablation (Lasby et al. 2023)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from evosparse.criteria.growth import first_per_unit, top_gradient_per_unit, top_gradient_positions
from evosparse.errors import InvariantError
from evosparse.methods.base import Param, register
from evosparse.methods.rigl import ALPHA, SWAP_SCHEDULE, CosineSwaps
from evosparse.topology.budget import fan_in_split
from evosparse.topology.layer import SparseLayer


@register
class SRigL(CosineSwaps):
    """RigL under a constant fan-in: every output unit (neuron, or conv output channel) of a layer keeps the
    same number of inputs, and units with too few salient weights are ablated.

    Lasby, Golubeva, Evci, Nica, Ioannou, "Dynamic Sparse Training with Structured Sparsity" (ICLR 2024,
    arXiv 2305.02299), with the rule read from the authors' code (calgaryml/condensed-sparsity,
    ``RigLConstFanScheduler._rigl_step``). Every ΔT steps until T_end, with RigL's cosine-decayed fraction
    f and n the layer's active connections, n_drop = ⌊f·n⌋ and n_keep = n − n_drop:

    1. **Saliency.** A weight is salient if it is among the n_keep largest |w| of the layer (it would
       survive RigL's drop) or among the n_drop largest |∂L/∂w| of the layer, active or not (it would
       be grown). A unit's salience is its number of salient weights.
    2. **Ablation.** With k₀ = ⌊n / units⌋ the layer's fan-in before any ablation, a unit whose salience is
       below τ = max(1, ⌊γ_sal·k₀⌋) is ablated (the authors' ``min_salient_weights_per_neuron`` = 0.3 as
       a fraction of the sparse fan-in, ``use_sparse_const_fan_in_for_ablation``). At least
       m = ⌈n / fan-in⌉ units stay, the fewest that can hold the budget: when the m-th most salient unit
       (ties: the lower index first) is below τ, τ drops to its salience. Ablation is decided afresh at
       every update, so an ablated unit whose gradients become salient is revived. The last sparse layer
       in the model's order of registration is never ablated, as in the authors' code (the output
       layer in every registry model and in a plain chain; not with ``--sparsify conv``, where the
       classifier is dense and the last convolution is spared), and γ_sal = 0 turns ablation off.
    3. **Fan-ins.** The budget n is split over the surviving units by
       :func:`~evosparse.topology.budget.fan_in_split`: k or k + 1 each (the first units in index order
       get k + 1), so the budget stays exact. The authors give every unit ⌊n / units⌋ and drop the rest.
    4. **Drop.** Ablated units lose every connection; of the others' connections the n_keep largest |w|
       of the layer are kept, and a unit keeping more than its fan-in keeps its largest. Equal |w| drop
       the smaller position first, as in ``rigl`` (the authors truncate such a unit in no stated order).
    5. **Grow.** Each surviving unit grows back to its fan-in at its positions not kept with the largest
       |∂L/∂w| (equal gradients: the smaller position first). A dropped connection that wins its place
       back keeps its weight and optimizer state; new ones start at zero (RigL's reference rule).

    So the drop is RigL's layer-wide magnitude criterion and the constant fan-in is restored by the
    per-unit growth: a unit with many weak weights changes more inputs than a unit with strong ones.
    As in ``rigl``, the update follows the optimizer step of its step (the authors update instead of
    stepping), and the dense gradient is that step's backward pass, recorded only before updates. Every
    inactive position is scored, block by block (bounded memory); a layer that may ablate reads the
    blocks twice (salience, then growth), which on the csr backend doubles RigL's O(out·in·batch) cost.
    """

    name = "srigl"
    summary = "RigL keeping every neuron's fan-in constant, with neuron ablation (Lasby et al. 2023)"
    params = (
        ALPHA,
        Param(
            "gamma_sal",
            0.3,
            "γ_sal: a neuron with fewer than max(1, ⌊γ_sal·k⌋) salient weights is ablated, k the layer's "
            "fan-in before ablation (0: never ablate)",
            minimum=0.0,
            maximum=1.0,
        ),
        *SWAP_SCHEDULE,
    )

    @classmethod
    def starts_with_constant_fan_in(cls, hparams: Mapping[str, Any]) -> bool:
        return True

    @classmethod
    def keeps_fan_ins(cls, hparams: Mapping[str, Any]) -> bool:
        """Every unit keeps k or k + 1 inputs; ablation changes a layer's fan-ins as a whole."""
        return True

    def swap_layers(self, fraction: float) -> int:
        last = len(self.layers) - 1
        return sum(self.swap(layer, fraction, ablate=index != last) for index, layer in enumerate(self.layers))

    def swap(self, layer: SparseLayer, fraction: float, *, ablate: bool = True) -> int:
        """SRigL's update on one layer (steps 1–5 of the class docstring); returns the positions changed."""
        budget = layer.active
        drop_count = math.floor(fraction * budget)
        positions = layer.active_positions()
        units = layer.unit_of(positions)
        # Strongest first; equal |w| list the larger position first, so the smaller one is dropped first.
        strongest = torch.argsort(layer.active_values().abs(), stable=True).flip(0)
        survivors = torch.ones(layer.fan_out_axis_size, dtype=torch.bool, device=positions.device)
        if ablate and self.hparams["gamma_sal"] > 0:
            salience = self.salience(layer, positions, strongest[: budget - drop_count], drop_count)
            survivors = self.surviving_units(salience, budget, layer.fan_in)
        targets = torch.zeros(layer.fan_out_axis_size, dtype=torch.int64, device=positions.device)
        targets[survivors] = fan_in_split(budget, int(survivors.sum())).to(positions.device)
        candidates = strongest[survivors[units[strongest]]][: budget - drop_count]
        kept = torch.zeros(positions.numel(), dtype=torch.bool, device=positions.device)
        kept[candidates[first_per_unit(units[candidates], targets)]] = True
        dropped = positions[~kept]
        need = targets - torch.bincount(units[kept], minlength=targets.numel())
        blocks = itertools.chain(layer.inactive_gradient_blocks(), [(dropped, layer.gradient_at(dropped))])
        grow = top_gradient_per_unit(blocks, layer.unit_of, need).to(dropped.device)
        changed = layer.rewire(dropped[~torch.isin(dropped, grow)], grow[~torch.isin(grow, dropped)], 0.0)
        fan_ins = torch.bincount(layer.unit_of(layer.active_positions()), minlength=targets.numel())
        if layer.active != budget or not torch.equal(fan_ins, targets):
            raise InvariantError(f"{layer.name}: srigl left fan-ins {fan_ins.tolist()}, not {targets.tolist()}")
        return changed

    @staticmethod
    def salience(layer: SparseLayer, positions: Tensor, keep: Tensor, drop_count: int) -> Tensor:
        """Salient weights per unit: the kept ones (``keep`` indexes ``positions``) and the ``drop_count``
        positions of largest |∂L/∂w| in the layer, active or not, counted once each."""
        blocks = itertools.chain(layer.inactive_gradient_blocks(), [(positions, layer.gradient_at(positions))])
        steepest = top_gradient_positions(blocks, drop_count).to(positions.device)
        salient = torch.unique(torch.cat([positions[keep], steepest]))
        return torch.bincount(layer.unit_of(salient), minlength=layer.fan_out_axis_size)

    def surviving_units(self, salience: Tensor, budget: int, fan_in: int) -> Tensor:
        """Which units stay active: salience ≥ τ (step 2 of the class docstring), at least ⌈budget/fan-in⌉."""
        threshold = max(1, math.floor(self.hparams["gamma_sal"] * (budget // salience.numel())))
        fewest = max(1, -(-budget // fan_in))
        ranked = torch.sort(salience, descending=True, stable=True).values
        return salience >= min(threshold, int(ranked[fewest - 1]))
