"""Generalisation at matched training loss (Adaptive Weight Sparsity, Section 4.2).

AWS compares models that fit the training set equally well: snapshots from different epochs that
share a training-loss value, and their held-out accuracy there. At equal training loss, the method
with the higher test accuracy (lower test loss) generalises better; comparing final accuracies
instead mixes generalisation with how far each method got in fitting the data.

How the snapshots are chosen: the levels are training-loss values every run reaches (the overlap
of all runs' training-loss ranges), spaced geometrically because the loss falls roughly
exponentially over the epochs. For each run and level we take the epoch whose training loss is
closest to the level (the earliest on ties). We pick real snapshots rather than interpolating
between two epochs because every reported number then belongs to a model that existed (AWS, too,
chooses snapshots), and because training-loss curves are not monotone (rewiring, noise), so where a
curve crosses a level is not unique. The picked epoch's own training loss is kept, so the quality
of the match can be checked.

``train_loss`` in result.json is the mean over the epoch's mini-batches while the weights change,
so it sits slightly above the end-of-epoch model's training loss, most in the first epochs.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from evosparse.engine.checkpoint import atomic_write_bytes
from evosparse.metrics import spread

DEFAULT_LEVEL_COUNT = 5
SELECTION = "nearest epoch"


@dataclass(frozen=True)
class Snapshot:
    """One run's numbers at one epoch (1-based)."""

    epoch: int
    train_loss: float
    test_loss: float
    test_acc: float


def common_loss_range(curves: Iterable[Sequence[float]]) -> tuple[float, float] | None:
    """``(low, high)``: the training losses every curve spans, or ``None`` when they share none."""
    spans = [(min(curve), max(curve)) for curve in curves]
    if not spans:
        return None
    low, high = max(span[0] for span in spans), min(span[1] for span in spans)
    return (low, high) if low <= high else None


def loss_levels(curves: Iterable[Sequence[float]], count: int = DEFAULT_LEVEL_COUNT) -> list[float]:
    """``count`` training-loss levels inside every curve's range, highest (earliest) first.

    Geometrically spaced from the top to the bottom of the common range (evenly when it reaches
    zero); a single level when the range is one point; none when the curves share no range.
    """
    span = common_loss_range(curves)
    if span is None:
        return []
    low, high = span
    if count == 1 or low == high:
        return [high]
    steps = [i / (count - 1) for i in range(count)]
    if low > 0:
        return [math.exp(math.log(high) + s * (math.log(low) - math.log(high))) for s in steps]
    return [high + s * (low - high) for s in steps]


def nearest_epoch(train_losses: Sequence[float], level: float) -> int:
    """The 1-based epoch whose training loss is closest to ``level`` (the earliest on ties)."""
    return min(range(len(train_losses)), key=lambda i: (abs(train_losses[i] - level), i)) + 1


def snapshots_of(epochs: Sequence[Mapping[str, Any]]) -> list[Snapshot]:
    """A result.json ``epochs`` list as :class:`Snapshot` records."""
    return [Snapshot(int(e["epoch"]), e["train_loss"], e["test_loss"], e["test_acc"]) for e in epochs]


def matched_snapshots(
    runs: Mapping[str, Sequence[Sequence[Snapshot]]], count: int = DEFAULT_LEVEL_COUNT
) -> tuple[list[float], dict[str, list[list[Snapshot]]]]:
    """The levels, and per method and level the snapshot each of its runs has nearest that level.

    ``runs`` maps a method to its runs, each a list of per-epoch snapshots; every run of every
    method spans every level.
    """
    levels = loss_levels([[s.train_loss for s in run] for method_runs in runs.values() for run in method_runs], count)
    picked = {
        method: [
            [run[nearest_epoch([s.train_loss for s in run], level) - 1] for run in method_runs] for level in levels
        ]
        for method, method_runs in runs.items()
    }
    return levels, picked


def mean_loss_curve(runs: Sequence[Sequence[Snapshot]]) -> dict[str, list[float]]:
    """Per epoch, the training and test loss averaged over the runs (up to the shortest run)."""
    by_epoch = list(zip(*runs))
    return {
        "train_loss": [statistics.fmean(s.train_loss for s in column) for column in by_epoch],
        "test_loss": [statistics.fmean(s.test_loss for s in column) for column in by_epoch],
    }


def generalisation_summary(
    results: Mapping[str, Sequence[Mapping[str, Any]]], count: int = DEFAULT_LEVEL_COUNT
) -> dict[str, Any]:
    """The matched-training-loss section of a comparison's summary.json.

    ``results`` maps each method to the result.json contents of its runs (one per seed); this also
    serves any set of run folders: ``{"set": [json.loads(Path("runs/a/result.json").read_text())]}``.
    """
    runs = {
        method: [snapshots_of(result["epochs"]) for result in method_results]
        for method, method_results in results.items()
    }
    levels, picked = matched_snapshots(runs, count)
    return {
        "selection": SELECTION,
        "levels": levels,
        "methods": {
            method: {
                "matched": [
                    {
                        "level": level,
                        "epochs": [s.epoch for s in chosen],
                        "train_loss": spread([s.train_loss for s in chosen]),
                        "test_loss": spread([s.test_loss for s in chosen]),
                        "test_acc": spread([s.test_acc for s in chosen]),
                    }
                    for level, chosen in zip(levels, picked[method])
                ],
                "curve": mean_loss_curve(runs[method]),
            }
            for method in runs
        },
    }


def _matched_cell(entry: Mapping[str, Any]) -> str:
    metric = entry["test_acc"]
    return f"{metric['mean']:.4f} ± {metric['std']:.4f} (ep {'/'.join(map(str, entry['epochs']))})"


def generalisation_markdown(
    section: Mapping[str, Any],
    plot_name: str = "generalisation.png",
    heading_level: int = 2,
    metric_label: str = "accuracy",
) -> str:
    """The "test accuracy at matched training loss" part of summary.md, under a heading of
    ``heading_level``: a table, how to read it, the plot. ``metric_label`` names what the runs'
    ``test_acc`` holds (a VAE's records its -ELBO there)."""
    heading = "#" * heading_level + f" Test {metric_label} at matched training loss\n\n"
    plot = f"![test loss against training loss]({plot_name})\n"
    levels = section["levels"]
    if not levels:
        return heading + "The runs' training-loss ranges do not overlap, so no level is shared.\n\n" + plot
    header = ["method", *(f"train loss {level:.4g}" for level in levels)]
    rows = [[method, *map(_matched_cell, entry["matched"])] for method, entry in section["methods"].items()]
    table = "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows])
    return (
        heading
        + table
        + f"\n\nTest {metric_label} (mean ± std over seeds) of each run's snapshot whose training loss is closest "
        "to the level; in brackets the epoch picked in each run. The levels span, geometrically, the training "
        f"losses every run reaches. At equal training loss, a better test {metric_label} means better "
        "generalisation (Adaptive Weight Sparsity, Section 4.2). Training loss is the mean over each epoch's "
        "mini-batches.\n\n" + plot
    )


def plot_generalisation(path: Path, section: Mapping[str, Any], title: str) -> None:
    """generalisation.png: each method's mean test loss against its mean training loss, epoch by epoch.

    Training proceeds from right to left (logarithmic axis); the dotted verticals are the matched
    levels. A curve lower at the same training loss generalises better.
    """
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axis = figure.subplots()
    palette = colormaps["tab10"]
    for index, (method, entry) in enumerate(section["methods"].items()):
        curve = entry["curve"]
        axis.plot(
            curve["train_loss"], curve["test_loss"], marker="o", markersize=3, label=method, color=palette(index % 10)
        )
    for level in section["levels"]:
        axis.axvline(level, color="grey", linestyle=":", linewidth=0.8)
    axis.set(xscale="log", xlabel="training loss (log scale)", ylabel="test loss", title=title)
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
