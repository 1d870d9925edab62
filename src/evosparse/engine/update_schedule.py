"""Whether a run's topology will evolve at all, known from its configuration before any training.

A method scheduled in epochs (SET, AWS, prune, the switcher's phases, ...) updates after every
``update_interval``-th epoch while fewer than ``update_until`` of the training steps are done, and
never after the last epoch (the switcher's final update only settles what was trained; see
``Sparsifier``). So a 1-epoch run, or one shorter than the interval, never updates: the method is
its initial topology, and a comparison holding it compares nothing. :func:`check_updates` says so
in one warning, and refuses a dense-to-sparse method (``prune``), which would end dense. Methods
scheduled in steps (RigL, GMP) depend on the number of batches per epoch and are not judged here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    return sum(1 for epoch in range(interval, config.epochs + 1, interval) if epoch < until * config.epochs)


def check_updates(config: TrainConfig, warn: Callable[[str], None]) -> None:
    """Warn (one line to ``warn``) when an evolving method never updates in this run; refuse a
    dense-to-sparse one, which would then never become sparse."""
    method = get_method(config.method)
    if not method.evolves or epoch_updates(config) != 0:
        return
    interval, until = config.params["update_interval"], config.params["update_until"]
    every = "every epoch" if interval == 1 else f"every {interval} epochs"
    within = "" if until >= 1 else f" in the first {until:.0%} of training"
    why = (
        f"{config.method} updates its topology after {every}{within} but never after the last epoch, "
        f"so never in {config.epochs} epoch{'s' if config.epochs > 1 else ''}"
    )
    fix = f"train at least {math.floor(interval / until) + 1} epochs" if until > 0 else "raise update_until"
    if method.starts_dense:
        raise UsageError(f"{why}: it would end dense; {fix}")
    warn(f"{why}: it keeps its initial topology; {fix} for it to evolve")
