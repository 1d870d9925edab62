"""Models whose hidden widths are scaled by one factor: the wide and small dense baselines (AWS Section 4.3).

A sparse run at density d computes with d·P of the P weights of its dense model. Two dense models
bracket it: ``auto-small`` has as many weights as the sparse run has active ones (the same parameter
budget), ``auto-wide`` has P / d (the dense model "scaled by α⁻¹"; AWS Table 2's wide dense column).
Both multiply every hidden width by one factor s (width = max(1, ⌊s·h + ½⌋)) chosen so that the
number of weights is the closest reachable to the target. A plain number scales by that factor.
Every width of the model's hidden list is scaled; the vae's latent size (its last entry) is kept.

Weights are counted as ``params_dense`` in result.json counts them: the sparsifiable weights (linear
and convolution weights, plus a model's ``sparse_include``; no biases).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from evosparse.errors import UsageError
from evosparse.models import DEFAULT_HIDDEN, UNSCALED_TAIL, ModelSpec, build_model
from evosparse.models.parts import excluded_layers
from evosparse.topology.budget import BudgetRequest, plan_budget
from evosparse.topology.masks import find_sparse_parameters

AUTO_WIDE, AUTO_SMALL = "auto-wide", "auto-small"
AUTO_MODES = (AUTO_WIDE, AUTO_SMALL)

Widths = tuple[int, ...]


@dataclass(frozen=True)
class WidthScaling:
    """What a scaled run used, recorded in result.json as ``width_scaling``.

    ``mode`` is ``auto-wide``, ``auto-small`` or ``factor``; ``params_target`` is null for a factor.
    """

    mode: str
    factor: float
    base_hidden: list[int]
    hidden: list[int]
    params_target: int | None
    params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_width_scale(value: object) -> str:
    """``auto-wide``, ``auto-small`` or a positive factor (kept as text, e.g. ``"1.5"``); else one line."""
    text = str(value).strip()
    if text in AUTO_MODES:
        return text
    try:
        factor = float(text)
    except ValueError:
        raise UsageError(f"width scale must be auto-wide, auto-small or a positive number, got {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(factor) and factor > 0):
        raise UsageError(f"width scale must be auto-wide, auto-small or a positive number, got {value!r}")
    return repr(factor)


def scaled_widths(base: Sequence[int], factor: float) -> Widths:
    """Every width multiplied by ``factor`` and rounded half up, at least 1."""
    return tuple(max(1, math.floor(factor * width + 0.5)) for width in base)


def closest_scaling(count: Callable[[Widths], int], base: Sequence[int], target: int) -> tuple[float, Widths]:
    """The factor (and widths) whose weight ``count`` is the closest reachable to ``target``.

    ``count`` must not decrease when a width grows. Bisection on the factor keeps count(low) ≤ target <
    count(high) until the two factors are adjacent: their widths are the last with a count ≤ target and
    the first above it, and the closer of the two wins (the smaller on a tie).
    """
    low = 0.5 / max(base)  # every width rounds to 1
    if count(scaled_widths(base, low)) >= target:
        return low, scaled_widths(base, low)
    high = 1.0
    while count(scaled_widths(base, high)) <= target:
        low, high = high, 2 * high
    while high - low > 1e-12 * high:
        middle = (low + high) / 2
        if count(scaled_widths(base, middle)) <= target:
            low = middle
        else:
            high = middle
    below, above = scaled_widths(base, low), scaled_widths(base, high)
    if count(above) - target < target - count(below):
        return high, above
    return low, below


def sparse_weight_shapes(model_name: str, spec: ModelSpec, sparsify: str) -> list[torch.Size]:
    """Shapes of the weights a run would sparsify, from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(model_name, spec)
    found = find_sparse_parameters(model, getattr(model, "sparse_include", None), excluded_layers(model, sparsify))
    return [getattr(module, attr).shape for _, module, attr in found]


def target_count(
    width_scale: str,
    dense_shapes: Sequence[torch.Size],
    distribution: str,
    density: float | None,
    epsilon: float | None,
) -> int:
    """The weight count ``auto-wide`` / ``auto-small`` aim at, from the sparse runs' budget at the base widths.

    ``density`` / ``epsilon`` are those of the sparse runs of the same setup (the run's effective density).
    """
    plan = plan_budget(dense_shapes, distribution, BudgetRequest("the sparse runs", density, epsilon))
    active = plan.total_budget
    if width_scale == AUTO_SMALL:
        return active
    total = sum(shape.numel() for shape in dense_shapes)
    assert plan.density is not None  # a required budget always has one
    return round(total / plan.density)


def scale_widths(
    spec: ModelSpec,
    *,
    model: str,
    sparsify: str,
    width_scale: str | None,
    distribution: str,
    density: float | None,
    epsilon: float | None,
) -> tuple[ModelSpec, WidthScaling | None]:
    """``spec`` with its hidden widths scaled as ``width_scale`` asks, and a record of it.

    ``distribution``, ``density`` and ``epsilon`` give the sparse runs' budget the auto modes size against.
    """
    if width_scale is None:
        return spec, None
    hidden = spec.hidden or DEFAULT_HIDDEN.get(model, ())
    split = len(hidden) - UNSCALED_TAIL.get(model, 0)
    base, kept = hidden[:split], hidden[split:]
    if not base:
        raise UsageError(f"model {model} has no hidden widths to scale; give them with --hidden")

    def count(widths: Widths) -> int:
        shapes = sparse_weight_shapes(model, replace(spec, hidden=(*widths, *kept)), sparsify)
        return sum(shape.numel() for shape in shapes)

    target = None
    if width_scale in AUTO_MODES:
        base_shapes = sparse_weight_shapes(model, replace(spec, hidden=hidden), sparsify)
        target = target_count(width_scale, base_shapes, distribution, density, epsilon)
        factor, widths = closest_scaling(count, base, target)
    else:
        factor = float(width_scale)
        widths = scaled_widths(base, factor)
    mode = width_scale if width_scale in AUTO_MODES else "factor"
    record = WidthScaling(mode, factor, list(hidden), [*widths, *kept], target, count(widths))
    return replace(spec, hidden=(*widths, *kept)), record
