"""``evosparse compare --train-fractions 1.0,0.6,0.4``: one comparison per share of the training set.

The Path-Weight paper (Naji et al., Table 1) reports every method's accuracy when trained on
100/80/60/40 % of the training samples. Here each fraction is an ordinary comparison (same methods,
seeds and setup) whose runs train on the class-stratified, seeded subset of ``--train-fraction``
(:mod:`evosparse.data.subset`): at a given seed every method sees the same samples.

Run folders: fraction 1 keeps compare's plain layout ``OUT/METHOD/seedN``, so the runs of a
full-data comparison already in ``OUT`` are reused as they are; fraction F < 1 trains in
``OUT/METHOD/fF/seedN``. Reuse, resume and refusal work run by run exactly as in compare, and every
folder is checked before any training. Outputs in ``OUT``: ``summary.json`` (the shared setup, then
per fraction the methods' numbers and the matched-loss section), ``summary.md`` (a table with a
column per fraction, then each fraction's full table), and per fraction ``curves.png`` /
``generalisation.png`` (``curves-fF.png`` / ``generalisation-fF.png`` for F < 1).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evosparse.analysis.generalisation import generalisation_markdown, plot_generalisation
from evosparse.data.subset import check_fraction
from evosparse.engine.compare import (
    Comparison,
    generalisation_title,
    markdown_table,
    plot_comparison,
    plus_minus,
    reached_text,
    read_result,
    run_comparisons,
    setup_line,
    target_key,
)
from evosparse.engine.run_folder import locked_folder
from evosparse.errors import UsageError
from evosparse.files import atomic_write_text
from evosparse.metrics import result_metric

#: Keys of a comparison's summary shared by all fractions (the rest is per fraction).
SHARED_KEYS = ("schema", "command", "architecture", "metric", "seeds", "targets")


def parse_fractions(fractions: str | Sequence[float]) -> tuple[float, ...]:
    """Training-set fractions from ``"1.0,0.6,0.4"`` (or a sequence), each in (0, 1] and listed once."""
    items = fractions.split(",") if isinstance(fractions, str) else fractions
    try:
        values = tuple(float(str(item).strip()) for item in items)
    except ValueError:
        raise UsageError(f"--train-fractions expects numbers such as 1.0,0.6,0.4, got {fractions!r}") from None
    for value in values:
        check_fraction(value)
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise UsageError(f"--train-fractions lists {repeated[0]:g} more than once")
    return values


def fraction_key(fraction: float) -> str:
    """The fraction as summary.json keys it: ``"1.0"``, ``"0.6"``."""
    return str(float(fraction))


def fraction_folder(fraction: float) -> str:
    """The folder between method and seed: none for the whole training set, ``f0.6`` otherwise."""
    return "" if fraction == 1.0 else f"f{fraction_key(fraction)}"


def fraction_percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def plot_file(stem: str, fraction: float) -> str:
    """``curves.png`` for the whole training set, ``curves-f0.6.png`` for a share of it."""
    folder = fraction_folder(fraction)
    return f"{stem}-{folder}.png" if folder else f"{stem}.png"


def plan_fractions(comparison: Comparison, fractions: str | Sequence[float]) -> tuple[Comparison, ...]:
    """``comparison`` once per fraction, every run's configuration validated (no training)."""
    if "train_fraction" in comparison.settings:
        raise UsageError("give either --train-fraction or --train-fractions, not both")
    planned = tuple(
        dataclasses.replace(
            comparison,
            settings={**comparison.settings, "train_fraction": fraction},
            run_subfolder=fraction_folder(fraction),
        )
        for fraction in parse_fractions(fractions)
    )
    for one in planned:
        one.configs()
    return planned


def train_samples(comparison: Comparison) -> int | None:
    """How many training samples the fraction's runs used (``None`` for runs made before it was recorded)."""
    first = comparison.run_folder(comparison.methods[0], comparison.seeds[0])
    return read_result(first).get("train_samples")


def combine(comparisons: Sequence[Comparison], summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """summary.json of a fractions comparison: what all fractions share, then each fraction's numbers."""
    first = summaries[0]
    fractions = [one.settings["train_fraction"] for one in comparisons]
    return {
        **{key: first[key] for key in SHARED_KEYS},
        "setup": {key: value for key, value in first["setup"].items() if key != "train_fraction"},
        "train_fractions": fractions,
        "fractions": {
            fraction_key(fraction): {
                "train_fraction": fraction,
                "train_samples": train_samples(one),
                "methods": summary["methods"],
                "generalisation": summary["generalisation"],
            }
            for fraction, one, summary in zip(fractions, comparisons, summaries)
        },
    }


def fraction_table(summary: Mapping[str, Any]) -> str:
    """Methods × fractions: final accuracy (mean ± std) per fraction, then the epoch reaching each target."""
    entries = list(summary["fractions"].values())
    percents = [fraction_percent(entry["train_fraction"]) for entry in entries]
    targets = [target_key(t) for t in summary["targets"]]
    header = [
        "method",
        *(f"final {result_metric(summary).short} {p}" for p in percents),
        *(f"epoch to {t} ({p})" for t in targets for p in percents),
    ]
    rows = [
        [
            method,
            *(plus_minus(entry["methods"][method]["final_acc"]) for entry in entries),
            *(reached_text(entry["methods"][method]["epoch_to_target"][t]) for t in targets for entry in entries),
        ]
        for method in entries[0]["methods"]
    ]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows]) + "\n"


def _samples_text(entry: Mapping[str, Any]) -> str:
    samples = entry["train_samples"]
    return f"{fraction_percent(entry['train_fraction'])}: {'not recorded' if samples is None else f'{samples:,}'}"


def fraction_section(summary: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """One fraction's part of summary.md: its full comparison table, curves and matched-loss table."""
    fraction = entry["train_fraction"]
    samples = "" if entry["train_samples"] is None else f" ({entry['train_samples']:,} samples)"
    return (
        f"## {fraction_percent(fraction)} of the training set{samples}\n\n"
        + markdown_table({**summary, "methods": entry["methods"]})
        + f"\n![test accuracy per epoch]({plot_file('curves', fraction)})\n\n"
        + generalisation_markdown(
            entry["generalisation"],
            plot_file("generalisation", fraction),
            heading_level=3,
            metric_label=result_metric(summary).label,
        )
    )


def render_fractions_markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: the command, the setup, the fractions table and how to read it, then every fraction."""
    seeds = summary["seeds"]
    entries = list(summary["fractions"].values())
    return (
        "# Comparison over training-set fractions\n\n"
        f"```\n{summary['command']}\n```\n\n"
        f"{setup_line(summary)}\n\n"
        + fraction_table(summary)
        + f"\nMean ± sample standard deviation over {len(seeds)} seed(s). Each run trains on a class-stratified "
        "random share of the training set drawn by its seed (the same samples for every method at a seed); "
        "the test set is always complete. Training samples: "
        + ", ".join(map(_samples_text, entries))
        + ". *Epoch to T*: first epoch at which the mean accuracy curve reaches T (in brackets: how many runs "
        "reach it on their own); *never* when the mean curve does not reach it.\n\n"
        + "\n".join(fraction_section(summary, entry) for entry in entries)
    )


def write_fraction_outputs(out: Path, summary: Mapping[str, Any], summaries: Sequence[Mapping[str, Any]]) -> None:
    """Write summary.json, summary.md and each fraction's curves and generalisation plots into ``out``."""
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", render_fractions_markdown(summary))
    for fraction, one in zip(summary["train_fractions"], summaries):
        plot_comparison(out / plot_file("curves", fraction), one)
        title = f"{generalisation_title(one)}, {fraction_percent(fraction)} of the training set"
        plot_generalisation(out / plot_file("generalisation", fraction), one["generalisation"], title)


def run_fraction_comparison(
    comparison: Comparison,
    fractions: str | Sequence[float],
    *,
    progress: bool = True,
    report: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Run (or reuse) ``comparison`` at every training-set fraction; write and return the combined summary."""
    planned = plan_fractions(comparison, fractions)
    with locked_folder(comparison.out):
        summaries = run_comparisons(planned, progress=progress, report=report)
        summary = combine(planned, summaries)
        write_fraction_outputs(comparison.out, summary, summaries)
    return summary
