"""How a global connection budget is split over layers: uniform, Erdős–Rényi and ERK.

Every function returns exact integer counts of active connections per layer, one per weight shape.
Shapes follow PyTorch (``(out, in)`` for linear, ``(out, in, kh, kw)`` for conv weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from evosparse.errors import UsageError

Shape = Sequence[int]

DISTRIBUTIONS = ("uniform", "erdos_renyi", "erk")


def _numel(shape: Shape) -> int:
    return math.prod(int(s) for s in shape)


def erdos_renyi_probability(shape: Shape, epsilon: float) -> float:
    """SET's connection probability p = ε(n_in + n_out)/(n_in·n_out), capped at 1.

    Mocanu et al. 2018 (SET), eq. 1; the same formula is eq. 1 of Naji et al. and of LiSET.
    For a convolution only the channel dimensions count, as in RigL's "ER" variant.
    """
    n_out, n_in = int(shape[0]), int(shape[1])
    return min(1.0, epsilon * (n_in + n_out) / (n_in * n_out))


def _raw_scale(shape: Shape, kind: str) -> float:
    """Unnormalised density of a layer: ER uses channel sizes, ERK also the kernel size (RigL)."""
    if kind == "erdos_renyi":
        n_out, n_in = int(shape[0]), int(shape[1])
        return (n_in + n_out) / (n_in * n_out)
    return sum(int(s) for s in shape) / _numel(shape)


def _largest_remainder(targets: Sequence[float], total: int, caps: Sequence[int]) -> list[int]:
    """Round real per-layer targets to integers that sum exactly to ``total`` and respect ``caps``."""
    counts = [min(cap, math.floor(t)) for t, cap in zip(targets, caps)]
    order = sorted(range(len(targets)), key=lambda i: targets[i] - math.floor(targets[i]), reverse=True)
    missing = total - sum(counts)
    while missing > 0:
        progressed = False
        for i in order:
            if missing == 0:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    return counts


def _scaled_with_dense_fallback(shapes: Sequence[Shape], density: float, kind: str) -> list[float]:
    """Per-layer densities ∝ the raw scale, layers whose density would exceed 1 made dense.

    RigL (Evci et al. 2020, appendix on ERK): find ε with Σ ε·raw_k·n_k = density·Σ n_k over the
    layers that are not dense, repeat while some layer's ε·raw_k exceeds 1.
    """
    sizes = [_numel(s) for s in shapes]
    raw = [_raw_scale(s, kind) for s in shapes]
    total_budget = density * sum(sizes)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        budget_left = total_budget - sum(sizes[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in free)
        eps = budget_left / weight if weight > 0 else 0.0
        overflow = [i for i in free if eps * raw[i] > 1.0]
        if not overflow:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(overflow)


def _validate(shapes: Sequence[Shape], distribution: str, density: float | None, epsilon: float | None) -> None:
    if not shapes:
        raise UsageError("no sparsifiable layers were found in the model")
    if distribution not in DISTRIBUTIONS:
        raise UsageError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    if (density is None) == (epsilon is None):
        raise UsageError("give exactly one of density or epsilon")
    if epsilon is not None:
        if distribution != "erdos_renyi":
            raise UsageError("epsilon sets an Erdős–Rényi density; use --distribution erdos_renyi or --density")
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise UsageError(f"epsilon must be positive, got {epsilon}")
    elif not (0.0 < density <= 1.0):  # type: ignore[operator]
        raise UsageError(f"density must be in (0, 1], got {density}")


def layer_densities(
    shapes: Sequence[Shape],
    *,
    distribution: str = "erdos_renyi",
    density: float | None = None,
    epsilon: float | None = None,
) -> list[float]:
    """Real-valued target density of each layer for a global ``density`` or SET's ``epsilon``."""
    _validate(shapes, distribution, density, epsilon)
    if epsilon is not None:
        return [erdos_renyi_probability(s, epsilon) for s in shapes]
    assert density is not None
    if distribution == "uniform":
        return [density] * len(shapes)
    return _scaled_with_dense_fallback(shapes, density, distribution)


def layer_budgets(
    shapes: Sequence[Shape],
    *,
    distribution: str = "erdos_renyi",
    density: float | None = None,
    epsilon: float | None = None,
) -> list[int]:
    """Exact active-connection count per layer; see :func:`layer_densities` for the targets.

    With ``density`` the counts sum to round(density · total) exactly (uniform, ER and ERK alike),
    distributed by largest remainder. With ``epsilon`` each layer gets round(p_k · n_k) as in SET.
    Every layer keeps at least one connection.
    """
    targets = layer_densities(shapes, distribution=distribution, density=density, epsilon=epsilon)
    sizes = [_numel(s) for s in shapes]
    if epsilon is not None:
        return [max(1, round(p * n)) for p, n in zip(targets, sizes)]
    assert density is not None
    total = round(density * sum(sizes))
    counts = _largest_remainder([d * n for d, n in zip(targets, sizes)], total, sizes)
    return [max(1, c) for c in counts]
