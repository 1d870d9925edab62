"""Learning-rate schedules of ``evosparse train`` (``--lr-schedule``, ``--warmup-epochs``, ``--lr-milestones``,
``--lr-gamma``), built from PyTorch's own schedulers.

The scheduler steps after every optimizer step, so warm-up and cosine decay are smooth within an
epoch; lengths given in epochs become steps (``epochs × steps per epoch``). The shapes, for a base
rate ``lr`` and ``W`` warm-up steps:

* warm-up (``LinearLR``): step ``i`` of the first ``W`` runs at ``lr·(i+1)/(W+1)``, then the schedule
  below starts at ``lr``;
* ``constant``: ``lr`` throughout. Without warm-up no scheduler exists at all, so a run trains (and
  checkpoints) exactly as before schedules existed;
* ``cosine`` (``CosineAnnealingLR``): from ``lr`` down to 0 over the steps after the warm-up;
* ``step`` (``MultiStepLR``): ``lr`` multiplied by ``gamma`` (default 0.1) after each milestone epoch,
  the milestones counted from the start of training, so ``--lr-milestones 15,25`` lowers the rate
  when epochs 16 and 26 begin.

The scheduler's state travels in the checkpoint, so a killed and resumed run takes the same rates.
The switcher's own optimizer (its gate networks) is not scheduled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from evosparse.errors import UsageError

LR_SCHEDULES = ("constant", "cosine", "step")
DEFAULT_GAMMA = 0.1


def check_schedule(
    name: str, *, epochs: int, warmup_epochs: int, milestones: Sequence[int] | None, gamma: float | None
) -> None:
    """Refuse, in one line, a schedule that is unknown, cannot take effect, or gets parameters it ignores."""
    if name not in LR_SCHEDULES:
        raise UsageError(f"unknown lr schedule {name!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if not 0 <= warmup_epochs < epochs:
        raise UsageError(f"warm-up epochs must be in [0, epochs) = [0, {epochs}), got {warmup_epochs}")
    if name != "step" and (milestones is not None or gamma is not None):
        raise UsageError(f"--lr-milestones and --lr-gamma apply to --lr-schedule step, not {name}")
    if name != "step":
        return
    if not milestones:
        raise UsageError("--lr-schedule step needs --lr-milestones: the epochs after which the rate drops, e.g. 15,25")
    if list(milestones) != sorted(set(milestones)) or not warmup_epochs < milestones[0] or milestones[-1] >= epochs:
        raise UsageError(
            f"lr milestones must increase strictly and lie after the {warmup_epochs} warm-up epoch(s) and before "
            f"the last epoch {epochs}, got {','.join(map(str, milestones))}"
        )
    if gamma is not None and not 0 < gamma < 1:
        raise UsageError(f"lr gamma must be in (0, 1), got {gamma}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    milestones: Sequence[int] | None = None,
    gamma: float | None = None,
) -> LRScheduler | None:
    """The scheduler to step after every optimizer step, or None for a constant rate without warm-up.

    Create it after everything that adds parameter groups (``sparsify``: LiSET's skip layers), so that
    every group is scheduled.
    """
    check_schedule(name, epochs=epochs, warmup_epochs=warmup_epochs, milestones=milestones, gamma=gamma)
    warmup = warmup_epochs * steps_per_epoch
    main: LRScheduler
    if name == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch - warmup)
    elif name == "step":
        steps = [epoch * steps_per_epoch - warmup for epoch in milestones or ()]
        main = MultiStepLR(optimizer, milestones=steps, gamma=DEFAULT_GAMMA if gamma is None else gamma)
    elif warmup:
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        return None
    if not warmup:
        return main
    ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])
