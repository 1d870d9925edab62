"""Accuracy at matched training loss: the levels every run reaches, and the snapshot nearest each level."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evosparse.analysis.generalisation import (
    Snapshot,
    common_loss_range,
    generalisation_markdown,
    generalisation_summary,
    loss_levels,
    matched_snapshots,
    nearest_epoch,
    plot_generalisation,
)

LOSSES = st.lists(st.floats(0.001, 5.0), min_size=1, max_size=30)


def run(train_losses, test_losses=None, test_accs=None):
    """A run's result.json (its ``epochs`` only) from hand-made curves."""
    test_losses = test_losses or [2 * loss for loss in train_losses]
    test_accs = test_accs or [1 - loss / 10 for loss in train_losses]
    epochs = [
        {"epoch": i, "train_loss": tr, "test_loss": te, "test_acc": acc}
        for i, (tr, te, acc) in enumerate(zip(train_losses, test_losses, test_accs), start=1)
    ]
    return {"epochs": epochs}


def brute_force_epoch(train_losses, level):
    """Every epoch's distance to the level, then the first epoch at the smallest distance."""
    distances = [abs(loss - level) for loss in train_losses]
    return distances.index(min(distances)) + 1


@given(losses=LOSSES, level=st.floats(0.0, 6.0))
def test_nearest_epoch_agrees_with_brute_force(losses, level):
    assert nearest_epoch(losses, level) == brute_force_epoch(losses, level)


def test_nearest_epoch_prefers_the_earlier_epoch_on_ties():
    assert nearest_epoch([3.0, 1.0, 2.0, 1.0], 1.5) == 2


@given(curves=st.lists(LOSSES, min_size=1, max_size=5), count=st.integers(1, 8))
def test_levels_lie_inside_every_curve_and_are_geometric(curves, count):
    levels = loss_levels(curves, count)
    span = common_loss_range(curves)
    if span is None:
        assert levels == [] and max(min(c) for c in curves) > min(max(c) for c in curves)
        return
    assert levels == sorted(levels, reverse=True)
    assert all(min(c) <= level * (1 + 1e-12) and level <= max(c) * (1 + 1e-12) for c in curves for level in levels)
    assert math.isclose(levels[0], span[1]) and (len(levels) == 1 or math.isclose(levels[-1], span[0]))
    ratios = [b / a for a, b in zip(levels, levels[1:])]
    assert all(math.isclose(r, ratios[0], rel_tol=1e-9) for r in ratios)


def test_levels_of_hand_made_curves():
    assert loss_levels([[2.0, 1.0, 0.5], [4.0, 1.0, 0.25]], 3) == pytest.approx([2.0, 1.0, 0.5])
    assert loss_levels([[3.0, 2.0], [1.0, 0.5]], 4) == []  # one run never gets as low as the other starts
    assert loss_levels([[2.0, 1.0], [1.0, 0.5]], 4) == [1.0]  # the ranges touch in one point


def test_matched_snapshots_agree_with_brute_force_on_hand_made_curves():
    # B fits the training data faster but generalises worse; A's second run is not monotone.
    runs = {
        "A": [
            run([2.0, 1.2, 0.8, 0.5, 0.4], test_accs=[0.60, 0.75, 0.84, 0.90, 0.91]),
            run([2.2, 1.0, 1.1, 0.6, 0.35], test_accs=[0.58, 0.78, 0.77, 0.88, 0.92]),
        ],
        "B": [
            run([1.5, 0.7, 0.45, 0.3, 0.2], test_accs=[0.55, 0.70, 0.78, 0.82, 0.83]),
            run([1.6, 0.9, 0.5, 0.32, 0.25], test_accs=[0.54, 0.68, 0.79, 0.81, 0.84]),
        ],
    }
    snapshots = {m: [[Snapshot(**e) for e in r["epochs"]] for r in method_runs] for m, method_runs in runs.items()}
    levels, picked = matched_snapshots(snapshots, count=4)
    assert levels[0] == pytest.approx(1.5) and levels[-1] == pytest.approx(0.4)
    for method, method_runs in runs.items():
        for level, chosen in zip(levels, picked[method]):
            curves = [r["epochs"] for r in method_runs]
            expected = [c[brute_force_epoch([e["train_loss"] for e in c], level) - 1] for c in curves]
            assert [s.epoch for s in chosen] == [e["epoch"] for e in expected]
            assert [s.test_acc for s in chosen] == [e["test_acc"] for e in expected]
    section = generalisation_summary(runs, count=4)
    a_acc = [entry["test_acc"]["mean"] for entry in section["methods"]["A"]["matched"]]
    b_acc = [entry["test_acc"]["mean"] for entry in section["methods"]["B"]["matched"]]
    assert all(a > b for a, b in zip(a_acc, b_acc))


def test_summary_aggregates_the_picked_snapshots_over_seeds():
    runs = {"set": [run([1.0, 0.5, 0.2], [1.1, 0.7, 0.6]), run([0.9, 0.4, 0.25], [1.0, 0.8, 0.5])]}
    section = generalisation_summary(runs, count=2)
    assert section["levels"] == pytest.approx([0.9, 0.25])
    [top, bottom] = section["methods"]["set"]["matched"]
    assert top["epochs"] == [1, 1] and bottom["epochs"] == [3, 3]
    assert bottom["test_loss"]["mean"] == pytest.approx(0.55)
    assert bottom["test_loss"]["std"] == pytest.approx(statistics.stdev([0.6, 0.5]))
    curve = section["methods"]["set"]["curve"]
    assert curve["train_loss"] == pytest.approx([0.95, 0.45, 0.225])
    assert curve["test_loss"] == pytest.approx([1.05, 0.75, 0.55])


def test_markdown_has_a_row_per_method_and_a_column_per_level():
    runs = {"a": [run([1.0, 0.5, 0.2])], "b": [run([1.2, 0.6, 0.3])]}
    text = generalisation_markdown(generalisation_summary(runs, count=3), "g.png", heading_level=3)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert text.startswith("### Test accuracy at matched training loss")
    assert len(table) == 4 and all(line.count("|") == 5 for line in table)
    assert "(ep 1)" in table[2] and "![test loss against training loss](g.png)" in text


def test_markdown_says_when_no_level_is_shared():
    section = generalisation_summary({"a": [run([3.0, 2.0])], "b": [run([1.0, 0.5])]})
    assert section["levels"] == [] and section["methods"]["a"]["matched"] == []
    assert "do not overlap" in generalisation_markdown(section)


@pytest.mark.parametrize("curves", [[[1.0, 0.5, 0.2], [1.2, 0.6, 0.3]], [[3.0, 2.0], [1.0, 0.5]]])
def test_plot_is_written(tmp_path, curves):
    section = generalisation_summary({f"m{i}": [run(c)] for i, c in enumerate(curves)})
    plot_generalisation(tmp_path / "g.png", section, "title")
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
