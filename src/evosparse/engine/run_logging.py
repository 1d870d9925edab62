"""Per-epoch logging of a run to TensorBoard and Weights & Biases, beside result.json and metrics.csv.

Both receive the same scalars (:func:`epoch_scalars`), one point per epoch with the epoch as the step:
losses and the metric on each split, the density and every sparse layer's density, the learning rate,
the times, the connections changed and the training multiply-adds. An epoch is logged before its
checkpoint is written, so a kill loses no point; a resumed run appends to the same TensorBoard folder,
purging any point logged after its checkpoint (TensorBoard's ``purge_step``), and continues the same
W&B run (its id is kept in the run folder), so a killed and resumed run shows one unbroken curve.
Both libraries are optional extras, imported only when asked for; W&B honours its own environment
(``WANDB_PROJECT``, ``WANDB_MODE=offline``, ...).
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from evosparse.engine.records import EpochRecord
from evosparse.errors import UsageError
from evosparse.files import atomic_write_text
from evosparse.metrics import Metric

#: File of a run folder that keeps the id of its W&B run, so that a resume continues that run.
WANDB_ID_NAME = "wandb_run_id"


def epoch_scalars(record: EpochRecord, layers: Sequence[Mapping[str, Any]], metric: Metric) -> dict[str, float]:
    """The numbers of one epoch under their logging names (``val/accuracy``, ``sparsity/<layer>``, ...);
    numbers an epoch does not have (no validation split) are left out."""
    named: dict[str, float | None] = {
        "train/loss": record.train_loss,
        "val/loss": record.val_loss,
        f"val/{metric.name}": record.val_acc,
        "test/loss": record.test_loss,
        f"test/{metric.name}": record.test_acc,
        "sparsity/density": record.density,
        "optim/lr": record.lr,
        "time/train_s": record.train_time_s,
        "time/topology_s": record.topology_time_s,
        "topology/connections_changed": record.connections_changed,
        "cost/train_macs": record.train_macs,
        "cost/train_macs_relative": (
            record.train_macs / record.train_macs_dense
            if record.train_macs is not None and record.train_macs_dense
            else None
        ),
    }
    for layer, active in zip(layers, record.layer_active or ()):
        named[f"sparsity/{layer['name']}"] = active / math.prod(layer["shape"])
    return {name: float(value) for name, value in named.items() if value is not None}


class EpochLogger(Protocol):
    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def require(module: str, flag: str, extra: str) -> None:
    """Refuse in one line a logging flag whose library is not installed (before any training)."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{flag} needs the {module} package: pip install 'evosparse[{extra}]'")


class TensorBoardLogger:
    """Scalars into TensorBoard event files in ``folder`` (``tensorboard --logdir`` reads them)."""

    def __init__(self, folder: Path, config: Mapping[str, Any], first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_epoch if first_epoch > 1 else None)
        self.writer.add_text("config", "\n".join(f"    {key} = {value!r}" for key, value in config.items()))

    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Scalars into a Weights & Biases run named after the run folder, its files kept in that folder."""

    def __init__(self, out: Path, config: Mapping[str, Any]) -> None:
        import wandb

        id_file = out / WANDB_ID_NAME
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:16]
        atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "evosparse"),
            name=out.name,
            dir=str(out),
            config=dict(config),
            id=run_id,
            resume="allow",
        )

    def log_epoch(self, epoch: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=epoch)

    def close(self) -> None:
        self.run.finish()


@dataclass(frozen=True)
class RunLogging:
    """Where runs log besides their folder: a TensorBoard folder and/or W&B (``--tensorboard``, ``--wandb``)."""

    tensorboard: Path | None = None
    wandb: bool = False

    def check(self) -> None:
        """Refuse a missing library before any data is loaded."""
        if self.tensorboard is not None:
            require("tensorboard", "--tensorboard", "tensorboard")
        if self.wandb:
            require("wandb", "--wandb", "wandb")

    def below(self, relative: str) -> RunLogging:
        """The logging of one run of a comparison: its own TensorBoard sub-folder ``relative``."""
        return RunLogging(None if self.tensorboard is None else self.tensorboard / relative, self.wandb)

    def open(self, out: Path, config: Mapping[str, Any], first_epoch: int) -> list[EpochLogger]:
        """The loggers of a run in ``out`` whose next epoch is ``first_epoch`` (later ones are purged)."""
        loggers: list[EpochLogger] = []
        if self.tensorboard is not None:
            loggers.append(TensorBoardLogger(self.tensorboard, config, first_epoch))
        if self.wandb:
            loggers.append(WandbLogger(out, config))
        return loggers
