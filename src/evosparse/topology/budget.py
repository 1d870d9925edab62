"""The budget plan: how many connections each sparse layer starts with and must end with.

One pure function, :func:`plan_budget`, turns the weight shapes, the run's ``density`` or ``epsilon``, the
distribution and what the method needs (:class:`BudgetRequest`) into per-layer targets. The
Sparsifier, width scaling, fixed-topology runs and the switcher all read their budgets from it, so a
budget is derived in exactly one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evosparse.errors import UsageError
from evosparse.topology.distributions import Shape, layer_budgets, layer_densities


@dataclass(frozen=True)
class BudgetRequest:
    """What a method asks of the budget.

    Attributes:
        method: the method's name, for messages.
        density: global fraction of active connections, or None.
        epsilon: SET's ε (Erdős–Rényi per layer), or None.
        sparse: False for the dense baseline (no budget at all).
        required: whether the method needs a density or an epsilon (False: it finds its own density and
            takes ``density``, when given, as its budget).
        starts_dense: dense-to-sparse methods start with every connection active.
        initial_density: a method that starts sparse above its budget (GMP from a sparse start): the
            global density it starts at, split over the layers like the target (never below a layer's
            budget); None: start at the budget (or dense).
    """

    method: str
    density: float | None = None
    epsilon: float | None = None
    sparse: bool = True
    required: bool = True
    starts_dense: bool = False
    initial_density: float | None = None


@dataclass(frozen=True)
class BudgetPlan:
    """Per-layer targets of a run (one entry per sparse weight, in model order).

    Attributes:
        densities: target density of each layer (1.0 where there is no budget).
        budgets: target number of active connections of each layer (its size where there is none).
        initial: number of active connections each layer starts with.
        density: the global target density, or None when the run has none (dense, or a method that
            finds its own density without a budget).
    """

    densities: tuple[float, ...]
    budgets: tuple[int, ...]
    initial: tuple[int, ...]
    density: float | None

    @property
    def total_budget(self) -> int:
        return sum(self.budgets)


def plan_budget(shapes: Sequence[Shape], distribution: str, request: BudgetRequest) -> BudgetPlan:
    """The per-layer targets for ``request`` over weights of ``shapes`` split by ``distribution``.

    Raises a one-line UsageError for a missing, doubled or out-of-range density or epsilon.
    """
    if not shapes:
        raise UsageError("no sparsifiable layers were found in the model")
    sizes = tuple(math.prod(int(s) for s in shape) for shape in shapes)
    density, epsilon = request.density, request.epsilon
    if request.sparse and not request.required and epsilon is not None:
        raise UsageError(f"method {request.method} takes its budget from --density (or none), not --epsilon")
    budgeted = request.sparse and (density is not None or epsilon is not None)
    if request.sparse and request.required and not budgeted:
        raise UsageError(f"method {request.method} needs a density or an epsilon")
    if not budgeted:
        dense = tuple(1.0 for _ in shapes)
        return BudgetPlan(dense, sizes, sizes, None)
    densities = tuple(layer_densities(shapes, distribution=distribution, density=density, epsilon=epsilon))
    budgets = tuple(layer_budgets(shapes, distribution=distribution, density=density, epsilon=epsilon))
    if request.starts_dense:
        initial = sizes
    elif request.initial_density is not None:
        above = layer_budgets(shapes, distribution=distribution, density=request.initial_density)
        initial = tuple(max(budget, count) for budget, count in zip(budgets, above))
    else:
        initial = budgets
    target = density if density is not None else sum(budgets) / sum(sizes)
    return BudgetPlan(densities, budgets, initial, target)


def fan_in_split(budget: int, units: int) -> torch.Tensor:
    """The most even split of a layer's ``budget`` over ``units`` output units (int64, one count per unit).

    A constant fan-in (SRigL, Lasby et al. 2023) gives every unit the same number k of inputs, which holds
    a budget exactly only when it is a multiple of the number of units. The budget is kept exact instead:
    with q, r = divmod(budget, units), the first r units get q + 1 inputs and the others q, so fan-ins
    differ by at most one and the global budget stays what the distribution planned. (The authors' code
    gives every unit ⌊budget/units⌋ and leaves the remainder unused.)
    """
    if units < 1 or budget < 0:
        raise UsageError(f"cannot split {budget} connections over {units} units")
    quotient, remainder = divmod(budget, units)
    counts = torch.full((units,), quotient, dtype=torch.int64)
    counts[:remainder] += 1
    return counts
