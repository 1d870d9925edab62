"""What a run writes: one row per epoch (``metrics.csv``) and the summary (``result.json``).

``result.json`` follows the schema fixed in ARCHITECTURE.md section 6 (schema 2: validation-based
selection); extra keys are additions only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evosparse.files import atomic_write_text
from evosparse.metrics import Metric, ara, bits_per_char, select_epoch

#: A run folder's record of a finished run (its presence means the run finished).
RESULT_NAME = "result.json"

SCHEMA_VERSION = 2


@dataclass
class EpochRecord:
    """The numbers measured in one epoch (the ``epochs`` entries of result.json).

    ``val_loss``/``val_acc`` are None for a run without a validation split; ``lr`` is the learning rate
    of the epoch's last step (first parameter group); ``layer_active`` the active weights of each sparse
    layer (in the order of result.json's ``layers``) when the epoch was evaluated — it goes to
    ``layers.csv``, not ``metrics.csv``; ``train_macs``/``train_macs_dense`` the epoch's training
    multiply-adds and their dense equivalent (:mod:`~evosparse.engine.training_cost`);
    ``reference_step_s`` the dense model's step time measured after the epoch
    (:mod:`~evosparse.engine.reference_step`; None for a model too large to have one). All are None in
    checkpoints written before they existed, which is why they come last, with a default.
    """

    epoch: int
    train_loss: float
    test_loss: float
    test_acc: float
    density: float
    train_time_s: float
    topology_time_s: float
    connections_changed: int
    val_loss: float | None = None
    val_acc: float | None = None
    lr: float | None = None
    layer_active: list[int] | None = None
    train_macs: int | None = None
    train_macs_dense: int | None = None
    reference_step_s: float | None = None


#: Columns of metrics.csv: every scalar of an epoch (the per-layer counts have their own file).
EPOCH_FIELDS = [name for name in EpochRecord.__dataclass_fields__ if name != "layer_active"]
#: Columns of layers.csv: one row per epoch and sparse layer.
LAYER_FIELDS = ["epoch", "layer", "shape", "target_density", "density", "active"]


def write_metrics_csv(path: Path, epochs: list[EpochRecord]) -> None:
    """Rewrite ``metrics.csv`` atomically with every epoch so far."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EPOCH_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for record in epochs:
        writer.writerow(asdict(record))
    atomic_write_text(path, buffer.getvalue())


def write_layers_csv(path: Path, epochs: list[EpochRecord], layers: list[dict[str, Any]]) -> None:
    """Rewrite ``layers.csv`` atomically: each epoch's active weights and density of every sparse layer
    (``layers`` as in result.json: name, shape, target_density), for epochs that recorded them."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LAYER_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in epochs:
        for layer, active in zip(layers, record.layer_active or ()):
            shape = layer["shape"]
            numel = math.prod(shape)
            writer.writerow(
                {
                    "epoch": record.epoch,
                    "layer": layer["name"],
                    "shape": "x".join(map(str, shape)),
                    "target_density": layer["target_density"],
                    "density": active / numel,
                    "active": active,
                }
            )
    atomic_write_text(path, buffer.getvalue())


def build_result(
    *,
    header: dict[str, Any],
    epochs: list[EpochRecord],
    params_active: int,
    density_final: float,
    wall_time_s: float,
    metric: Metric,
    per_character: bool = False,
) -> dict[str, Any]:
    """Assemble result.json: the run's identity (``header``), per-epoch records and summary numbers.

    ``metric`` is what ``test_acc`` holds (accuracy, or a VAE's −ELBO). ``selected_epoch`` is chosen on
    the validation numbers alone (:func:`select_epoch`; null without a validation split) and
    ``test_acc_at_selected`` is the test value there; ``best_test_acc`` is for information only.
    ``training_macs`` sums the epochs' counts (null when an epoch of a resumed older run has none).
    ``per_character``: the losses are cross-entropies in nats per character (a character model on text),
    so each epoch also gets them in bits per character, and the run its final and selected test value
    (null for other runs).
    """
    accuracies = [record.test_acc for record in epochs]
    counted = [record for record in epochs if record.train_macs is not None and record.train_macs_dense is not None]
    sparse_macs = sum(record.train_macs or 0 for record in counted)
    dense_macs = sum(record.train_macs_dense or 0 for record in counted)
    values = [record.val_acc for record in epochs if record.val_acc is not None]
    losses = [record.val_loss for record in epochs if record.val_loss is not None]
    if len(values) not in (0, len(epochs)) or len(losses) != len(values):
        raise ValueError("some epochs of the run have validation numbers and others have none")
    selected = select_epoch(values, losses, metric.higher_is_better)
    entries = [asdict(record) for record in epochs]
    if per_character:
        for entry in entries:
            entry["test_bits_per_char"] = bits_per_char(entry["test_loss"])
            entry["val_bits_per_char"] = None if entry["val_loss"] is None else bits_per_char(entry["val_loss"])
    return {
        "schema": SCHEMA_VERSION,
        **header,
        "density_final": density_final,
        "params_active": params_active,
        "epochs": entries,
        "final_test_acc": accuracies[-1],
        "best_test_acc": metric.best(accuracies),
        "selected_epoch": selected,
        "test_acc_at_selected": None if selected is None else accuracies[selected - 1],
        "final_test_bits_per_char": entries[-1]["test_bits_per_char"] if per_character else None,
        "test_bits_per_char_at_selected": None
        if selected is None or not per_character
        else entries[selected - 1]["test_bits_per_char"],
        "metric": metric.name,
        "ara": ara(accuracies),
        "training_macs": None
        if len(counted) != len(epochs)
        else {"sparse": sparse_macs, "dense": dense_macs, "relative": sparse_macs / dense_macs if dense_macs else None},
        "wall_time_s": wall_time_s,
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
