"""Schedules as pure functions of the training step: how much to change, and when the last change is.

No model or training state here, so each formula can be checked against its paper directly.
"""

from __future__ import annotations

import math

from evosparse.errors import UsageError


def cosine_update_fraction(step: float, alpha: float, end_step: float) -> float:
    """RigL's fraction of a layer's active connections to drop (and regrow) at ``step``.

    Evci et al. 2020, "Rigging the Lottery", section 3, eq. 1: f(t) = α/2 · (1 + cos(π t / T_end)),
    the cosine decay from α at t = 0 to 0 at T_end. Steps outside [0, T_end] are clamped (RigL does not
    update after T_end).
    """
    if not end_step > 0:
        raise UsageError(f"the end of the update schedule must be a positive step, got {end_step}")
    progress = min(max(step / end_step, 0.0), 1.0)
    return alpha / 2.0 * (1.0 + math.cos(math.pi * progress))


def cubic_sparsity(step: float, initial: float, final: float, begin_step: float, end_step: float) -> float:
    """Zhu & Gupta's sparsity at ``step``: from ``initial`` at ``begin_step`` to ``final`` at ``end_step``.

    Zhu & Gupta 2017, "To prune, or not to prune", eq. 1: s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³
    with nΔt = end_step − begin_step; the sparsity is s_i before t0 and s_f after t0 + nΔt. The cube
    prunes fast while many redundant weights remain and slowly near the target.
    """
    if not end_step > begin_step:
        raise UsageError(f"pruning must end after it begins (begin step {begin_step}, end step {end_step})")
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def last_update_step(period: int, limit: float) -> int:
    """The last step strictly before ``limit`` that is a multiple of ``period`` (0 when there is none).

    A schedule that updates every ``period`` steps while ``step < update_until · total_steps`` makes its
    final update at this step; a schedule that must *finish* something (GMP's target) ends there.
    """
    if period < 1:
        raise UsageError(f"the update period must be at least one step, got {period}")
    return max(0, period * (math.ceil(limit / period) - 1))


def update_due(count: int, interval: int, step: int, until: float, total_steps: int | None, *, final: bool) -> bool:
    """Whether the ``count``-th scheduled unit (an epoch or a step), ending at global ``step``, is followed by a
    topology update: every ``interval``-th one while ``step`` < ``until`` · ``total_steps``.

    Without a known training length every ``interval``-th unit updates. ``final`` lets the unit that
    ends training update too (the switcher's last update only settles what was trained); for every
    other method the update after the last step never changes the evaluated model, so it is skipped.
    """
    if count % interval:
        return False
    if total_steps is None:
        return True
    return (final and step >= total_steps) or step < until * total_steps
