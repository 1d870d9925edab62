"""Generalisation at matched training loss (Adaptive Weight Sparsity, Section 4.2).

AWS compares models that fit the training set equally well: snapshots from different epochs that
share a training-loss value, and their held-out accuracy there. At equal training loss, the method
with the higher test accuracy (lower test loss) generalises better; comparing final accuracies
instead mixes generalisation with how far each method got in fitting the data.

The levels run, spaced geometrically because the loss falls roughly exponentially over the epochs,
from the highest training loss every run starts above (the smallest of the runs' maxima) down to
the lowest that some method reaches in all of its runs (so that the bottom level is matched for at
least one method, not set by one lucky seed). Restricting them to the losses every run
spans would let the weakest method set the range: a baseline that never fits the data well (a small
dense network stuck above a loss the others pass in their first epoch) would squeeze every level
into the others' first epoch, and the table would compare nothing. Instead a method is matched at a
level only where each of its runs spans it (the run's smallest training loss ≤ level ≤ its
largest); elsewhere its cell is "not reached" — in summary.json that level's entry of the method's
``matched`` list is ``null``, so the list stays aligned with ``levels``.

For each run and level we take the epoch whose training loss is closest to the level (the earliest
on ties). We pick real snapshots rather than interpolating between two epochs because every
reported number then belongs to a model that existed (AWS, too, chooses snapshots), and because
training-loss curves are not monotone (rewiring, noise), so where a curve crosses a level is not
unique. The picked epoch's own training loss is kept, so the quality of the match can be checked.

``train_loss`` in result.json is the mean over the epoch's mini-batches while the weights change,
so it sits slightly above the end-of-epoch model's training loss, most in the first epochs.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from evosparse.analysis.plots import save_png
from evosparse.errors import UsageError
from evosparse.metrics import spread

DEFAULT_LEVEL_COUNT = 5
SELECTION = "nearest epoch"
NOT_REACHED = "not reached"


@dataclass(frozen=True)
class Snapshot:
    """One run's numbers at one epoch (1-based)."""

    epoch: int
    train_loss: float
    test_loss: float
    test_acc: float


def level_range(methods: Iterable[Iterable[Sequence[float]]]) -> tuple[float, float] | None:
    """``(low, high)`` for the runs of several methods (each a list of training-loss curves).

    ``high`` is the highest loss every run starts above (the smallest of all curves' maxima); ``low``
    the lowest loss that some method reaches in every one of its runs (the smallest, over methods, of
    their runs' largest minimum), so that the bottom level is matched for at least that method.
    ``None`` without curves.
    """
    groups = [[(min(curve), max(curve)) for curve in curves] for curves in methods]
    groups = [spans for spans in groups if spans]
    if not groups:
        return None
    low = min(max(span[0] for span in spans) for spans in groups)
    high = min(span[1] for spans in groups for span in spans)
    return min(low, high), high


def loss_levels(methods: Iterable[Iterable[Sequence[float]]], count: int = DEFAULT_LEVEL_COUNT) -> list[float]:
    """``count`` training-loss levels across :func:`level_range`, highest (earliest) first.

    Geometrically spaced from the top of the range to its bottom, both included exactly (evenly
    spaced when the bottom is zero); a single level when the range is one point; none without curves.
    """
    if count < 1:
        raise UsageError(f"the number of matched-loss levels must be at least 1, got {count}")
    span = level_range(methods)
    if span is None:
        return []
    low, high = span
    if count == 1 or low == high:
        return [high]
    steps = [i / (count - 1) for i in range(1, count - 1)]
    if low > 0:
        inner = [high * (low / high) ** s for s in steps]
    else:
        inner = [high + s * (low - high) for s in steps]
    return [high, *inner, low]


def spans_level(train_losses: Sequence[float], level: float) -> bool:
    """Whether a run's training losses reach both above and below ``level`` (either end included)."""
    return min(train_losses) <= level <= max(train_losses)


def nearest_epoch(train_losses: Sequence[float], level: float) -> int:
    """The 1-based epoch whose training loss is closest to ``level`` (the earliest on ties)."""
    return min(range(len(train_losses)), key=lambda i: (abs(train_losses[i] - level), i)) + 1


def snapshots_of(epochs: Sequence[Mapping[str, Any]]) -> list[Snapshot]:
    """A result.json ``epochs`` list as :class:`Snapshot` records."""
    return [Snapshot(int(e["epoch"]), e["train_loss"], e["test_loss"], e["test_acc"]) for e in epochs]


def matched_snapshots(
    runs: Mapping[str, Sequence[Sequence[Snapshot]]], count: int = DEFAULT_LEVEL_COUNT
) -> tuple[list[float], dict[str, list[list[Snapshot] | None]]]:
    """The levels, and per method and level the snapshot each of its runs has nearest that level.

    ``runs`` maps a method to its runs, each a list of per-epoch snapshots. A method's entry at a
    level is ``None`` ("not reached") unless it has runs and every one of them spans the level.
    """
    losses = {method: [[s.train_loss for s in run] for run in method_runs] for method, method_runs in runs.items()}
    levels = loss_levels(losses.values(), count)
    picked = {
        method: [
            [run[nearest_epoch(curve, level) - 1] for run, curve in zip(runs[method], curves)]
            if curves and all(spans_level(curve, level) for curve in curves)
            else None
            for level in levels
        ]
        for method, curves in losses.items()
    }
    return levels, picked


def mean_loss_curve(runs: Sequence[Sequence[Snapshot]]) -> dict[str, list[float]]:
    """Per epoch, the training and test loss averaged over the runs (up to the shortest run)."""
    by_epoch = list(zip(*runs))
    return {
        "train_loss": [statistics.fmean(s.train_loss for s in column) for column in by_epoch],
        "test_loss": [statistics.fmean(s.test_loss for s in column) for column in by_epoch],
    }


def matched_entry(level: float, chosen: Sequence[Snapshot] | None) -> dict[str, Any] | None:
    """One level's summary.json entry for one method: its runs' picked snapshots, ``None`` if not reached."""
    if chosen is None:
        return None
    return {
        "level": level,
        "epochs": [s.epoch for s in chosen],
        "train_loss": spread([s.train_loss for s in chosen]),
        "test_loss": spread([s.test_loss for s in chosen]),
        "test_acc": spread([s.test_acc for s in chosen]),
    }


def generalisation_summary(
    results: Mapping[str, Sequence[Mapping[str, Any]]], count: int = DEFAULT_LEVEL_COUNT
) -> dict[str, Any]:
    """The matched-training-loss section of a comparison's summary.json.

    ``results`` maps each method to the result.json contents of its runs (one per seed); this also
    serves any set of run folders: ``{"set": [json.loads(Path("runs/a/result.json").read_text())]}``.
    Each method's ``matched`` list has an entry per level, ``null`` where the method does not reach it.
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
                "matched": [matched_entry(level, chosen) for level, chosen in zip(levels, picked[method])],
                "curve": mean_loss_curve(runs[method]),
            }
            for method in runs
        },
    }


def _matched_cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return NOT_REACHED
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
        return heading + "No run has a training loss, so there is no level to match at.\n\n" + plot
    header = ["method", *(f"train loss {level:.4g}" for level in levels)]
    rows = [[method, *map(_matched_cell, entry["matched"])] for method, entry in section["methods"].items()]
    table = "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows])
    return (
        heading
        + table
        + f"\n\nTest {metric_label} (mean ± std over seeds) of each run's snapshot whose training loss is closest "
        "to the level; in brackets the epoch picked in each run. The levels run, geometrically, from the highest "
        "training loss every run starts above down to the lowest some method reaches in all its runs; a method is "
        "matched at a level only if each of its runs' training losses reach both above and below it, otherwise "
        f'"{NOT_REACHED}". '
        f"At equal training loss, a better test {metric_label} means better generalisation (Adaptive Weight "
        "Sparsity, Section 4.2). Training loss is the mean over each epoch's mini-batches.\n\n" + plot
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
    save_png(figure, path)
