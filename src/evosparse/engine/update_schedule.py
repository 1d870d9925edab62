"""Whether a run's topology will evolve at all, known from its configuration before any training.

A method scheduled in epochs (SET, AWS, prune, the switcher's phases, ...) updates after every
``update_interval``-th epoch while fewer than ``update_until`` of the training steps are done, and
never after the last epoch (the switcher's final update only settles what was trained; see
``Sparsifier``). So a 1-epoch run, or one shorter than the interval, never updates: the method is
its initial topology, and a comparison holding it compares nothing. :func:`idle_reason` says why, for
a warning when training starts; :func:`check_updates` refuses, before any training, a dense-to-sparse
method (``prune``) that would end dense. Methods scheduled in steps (RigL, GMP) depend on the number
of batches per epoch and are not judged here.
"""

from __future__ import annotations

import math

from evosparse.criteria.schedules import update_due
from evosparse.engine.config import TrainConfig
from evosparse.errors import UsageError
from evosparse.methods import get_method


def epoch_updates(config: TrainConfig) -> int | None:
    """How many topology updates the run of ``config`` makes (None when its schedule counts steps)."""
    if not get_method(config.method).evolves:
        return 0
    params = config.params  # resolved by ``validate``: every schedule parameter is present
    if params["update_unit"] != "epoch":
        return None
    interval, until = params["update_interval"], params["update_until"]
    # Epochs of equal length: the schedule's rule with one step per epoch. An update after the last epoch
    # (the switcher's) only settles what was trained, so it is not counted.
    return sum(
        update_due(epoch, interval, epoch, until, config.epochs, final=False) for epoch in range(1, config.epochs + 1)
    )


def idle_reason(config: TrainConfig) -> str | None:
    """Why the evolving method of ``config`` never updates its topology in the run (with what would
    make it), or None when it does, does not evolve, or counts steps."""
    if not get_method(config.method).evolves or epoch_updates(config) != 0:
        return None
    interval, until = config.params["update_interval"], config.params["update_until"]
    every = "every epoch" if interval == 1 else f"every {interval} epochs"
    within = "" if until >= 1 else f" in the first {until:.0%} of training"
    fix = f"train at least {math.floor(interval / until) + 1} epochs" if until > 0 else "raise update_until"
    return (
        f"{config.method} updates its topology after {every}{within} but never after the last epoch, "
        f"so never in {config.epochs} epoch{'s' if config.epochs > 1 else ''} ({fix})"
    )


def check_updates(config: TrainConfig) -> None:
    """Refuse a dense-to-sparse method that never updates in the run: it would end dense."""
    why = idle_reason(config)
    if why is not None and get_method(config.method).starts_dense_with(config.params):
        raise UsageError(f"{why}: it would end dense")
