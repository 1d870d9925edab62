"""Accuracy at matched training loss: levels from the highest loss every run starts above down to the
lowest any run reaches, the snapshot nearest each level, and "not reached" where a method's runs stop short."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evosparse.analysis.generalisation import (
    NOT_REACHED,
    Snapshot,
    generalisation_markdown,
    generalisation_summary,
    level_range,
    loss_levels,
    matched_snapshots,
    nearest_epoch,
    plot_generalisation,
)
from evosparse.errors import UsageError

LOSSES = st.lists(st.floats(0.001, 5.0), min_size=1, max_size=30)
METHOD_RUNS = st.dictionaries(
    st.sampled_from(["dense", "small-dense", "set", "static"]), st.lists(LOSSES, min_size=1, max_size=3), min_size=1
)


def run(train_losses, test_losses=None, test_accs=None):
    """A run's result.json (its ``epochs`` only) from hand-made curves."""
    test_losses = test_losses or [2 * loss for loss in train_losses]
    test_accs = test_accs or [1 - loss / 10 for loss in train_losses]
    epochs = [
        {"epoch": i, "train_loss": tr, "test_loss": te, "test_acc": acc}
        for i, (tr, te, acc) in enumerate(zip(train_losses, test_losses, test_accs), start=1)
    ]
    return {"epochs": epochs}


def snapshots(runs):
    """Per method, its runs as :class:`Snapshot` lists."""
    return {m: [[Snapshot(**e) for e in r["epochs"]] for r in method_runs] for m, method_runs in runs.items()}


def brute_force_epoch(train_losses, level):
    """Every epoch's distance to the level, then the first epoch at the smallest distance."""
    distances = [abs(loss - level) for loss in train_losses]
    return distances.index(min(distances)) + 1


def brute_force_reached(curves, level):
    """Every curve has an epoch at or above the level and one at or below it."""
    return bool(curves) and all(any(x >= level for x in c) and any(x <= level for x in c) for c in curves)


def assert_agrees_with_brute_force(runs, levels, picked):
    """Each method is matched exactly where all its runs span the level, at each run's nearest epoch."""
    for method, method_runs in runs.items():
        curves = [[e["train_loss"] for e in r["epochs"]] for r in method_runs]
        for level, chosen in zip(levels, picked[method], strict=True):
            if not brute_force_reached(curves, level):
                assert chosen is None
                continue
            expected = [r["epochs"][brute_force_epoch(c, level) - 1] for r, c in zip(method_runs, curves)]
            assert [s.epoch for s in chosen] == [e["epoch"] for e in expected]
            assert [s.test_acc for s in chosen] == [e["test_acc"] for e in expected]


@given(losses=LOSSES, level=st.floats(0.0, 6.0))
def test_nearest_epoch_agrees_with_brute_force(losses, level):
    assert nearest_epoch(losses, level) == brute_force_epoch(losses, level)


def test_nearest_epoch_prefers_the_earlier_epoch_on_ties():
    assert nearest_epoch([3.0, 1.0, 2.0, 1.0], 1.5) == 2


@given(curves=st.lists(LOSSES, min_size=1, max_size=5), count=st.integers(1, 8))
def test_levels_run_from_the_smallest_maximum_to_the_smallest_minimum_geometrically(curves, count):
    levels = loss_levels([[c] for c in curves], count)  # one run per method
    low, high = min(min(c) for c in curves), min(max(c) for c in curves)
    assert level_range([[c] for c in curves]) == (min(low, high), high)
    assert levels == sorted(levels, reverse=True) and levels[0] == high
    assert all(low <= level <= high for level in levels)
    if low == high or count == 1:
        assert levels == [high]
        return
    assert len(levels) == count and levels[-1] == low
    ratios = [b / a for a, b in zip(levels, levels[1:])]
    assert all(math.isclose(r, ratios[0], rel_tol=1e-9) for r in ratios)


def test_levels_of_hand_made_curves():
    assert loss_levels([[[2.0, 1.0, 0.5]], [[4.0, 1.0, 0.25]]], 3) == pytest.approx([2.0, math.sqrt(0.5), 0.25])
    # Disjoint ranges still give levels: from the lower run's top down to its bottom.
    assert loss_levels([[[3.0, 2.0]], [[1.0, 0.5]]], 2) == [1.0, 0.5]
    assert loss_levels([[[2.0, 1.0]], [[1.0]]], 4) == [1.0]  # the range is one point
    assert loss_levels([[[1.0, 0.0]], [[2.0, 0.5]]], 3) == [1.0, 0.5, 0.0]  # evenly spaced down to zero
    assert loss_levels([], 5) == [] and level_range([]) is None


def test_the_bottom_level_is_reached_in_every_run_of_some_method():
    """A method's lowest level is the highest of its runs' minima: one lucky seed does not set it."""
    method_a = [[2.0, 1.0, 0.2], [2.0, 1.0, 0.4]]
    method_b = [[3.0, 0.5], [3.0, 0.6]]
    assert level_range([method_a, method_b]) == (0.4, 2.0)
    assert loss_levels([method_a, method_b], 2) == [2.0, 0.4]


@pytest.mark.parametrize("count", [0, -3])
def test_a_level_count_below_one_is_a_usage_error(count):
    with pytest.raises(UsageError, match="at least 1"):
        loss_levels([[[1.0, 0.5]]], count)


@given(curves_by_method=METHOD_RUNS, count=st.integers(1, 7))
def test_matched_cells_agree_with_brute_force(curves_by_method, count):
    runs = {method: [run(c) for c in curves] for method, curves in curves_by_method.items()}
    levels, picked = matched_snapshots(snapshots(runs), count)
    assert_agrees_with_brute_force(runs, levels, picked)
    # The top level is the one every run starts above; a run whose losses all lie above it misses it.
    top_reached = [entry[0] is not None for entry in picked.values()]
    assert top_reached == [all(min(c) <= levels[0] for c in curves) for curves in curves_by_method.values()]


def narrow_range_runs():
    """A fits the training data down to 0.1; small-dense never below 0.7 (0.8 in one seed)."""
    return {
        "A": [
            run([2.0, 1.0, 0.5, 0.2, 0.1], test_accs=[0.60, 0.80, 0.88, 0.92, 0.93]),
            run([2.2, 1.1, 0.45, 0.25, 0.1], test_accs=[0.58, 0.79, 0.89, 0.91, 0.94]),
        ],
        "small-dense": [
            run([1.5, 1.2, 1.0, 0.9, 0.8], test_accs=[0.50, 0.55, 0.60, 0.62, 0.63]),
            run([1.6, 1.1, 0.9, 0.75, 0.7], test_accs=[0.48, 0.57, 0.61, 0.64, 0.66]),
        ],
    }


def test_a_narrow_range_method_is_not_reached_where_the_others_are_matched():
    runs = narrow_range_runs()
    levels, picked = matched_snapshots(snapshots(runs), count=5)
    assert levels[0] == 1.5 and levels[-1] == 0.1 and len(levels) == 5
    assert all(chosen is not None for chosen in picked["A"])
    # small-dense spans only the top level in both seeds; 0.76 is reached by its second seed alone.
    assert [chosen is not None for chosen in picked["small-dense"]] == [True, False, False, False, False]
    assert 0.7 < levels[1] < 0.8
    # A's first seed ties at 1.5 between epochs 1 and 2 (distance 0.5 each): the earlier wins.
    assert [[s.epoch for s in chosen] for chosen in picked["A"]] == [[1, 2], [2, 3], [3, 3], [4, 4], [5, 5]]
    assert_agrees_with_brute_force(runs, levels, picked)


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
    levels, picked = matched_snapshots(snapshots(runs), count=4)
    assert levels[0] == 1.5 and levels[-1] == 0.25  # B reaches 0.25 in both runs, A only 0.4
    assert_agrees_with_brute_force(runs, levels, picked)
    assert [c is not None for c in picked["A"]] == [True, True, True, False]
    assert [c is not None for c in picked["B"]] == [True, True, True, True]
    section = generalisation_summary(runs, count=4)
    both = [(a, b) for a, b in zip(section["methods"]["A"]["matched"], section["methods"]["B"]["matched"]) if a and b]
    assert len(both) == 3 and all(a["test_acc"]["mean"] > b["test_acc"]["mean"] for a, b in both)


def test_summary_aggregates_the_picked_snapshots_over_seeds():
    runs = {"set": [run([1.0, 0.5, 0.2], [1.1, 0.7, 0.6]), run([0.9, 0.4, 0.2], [1.0, 0.8, 0.5])]}
    section = generalisation_summary(runs, count=2)
    assert section["levels"] == [0.9, 0.2]
    [top, bottom] = section["methods"]["set"]["matched"]
    assert top["epochs"] == [1, 1] and bottom["epochs"] == [3, 3] and bottom["level"] == 0.2
    assert bottom["test_loss"]["mean"] == pytest.approx(0.55)
    assert bottom["test_loss"]["std"] == pytest.approx(statistics.stdev([0.6, 0.5]))
    curve = section["methods"]["set"]["curve"]
    assert curve["train_loss"] == pytest.approx([0.95, 0.45, 0.2])
    assert curve["test_loss"] == pytest.approx([1.05, 0.75, 0.55])


def test_a_summary_with_unreached_levels_round_trips_through_json():
    section = generalisation_summary(narrow_range_runs())
    assert section["methods"]["small-dense"]["matched"][1:] == [None] * 4
    restored = json.loads(json.dumps(section))
    assert restored == section
    assert generalisation_markdown(restored) == generalisation_markdown(section)


def test_markdown_says_not_reached_in_the_cells_of_a_method_that_stops_short():
    text = generalisation_markdown(generalisation_summary(narrow_range_runs()), "g.png", heading_level=3)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert text.startswith("### Test accuracy at matched training loss")
    assert len(table) == 4 and all(line.count("|") == 7 for line in table)
    a_cells, small_cells = (row.strip("| ").split(" | ")[1:] for row in table[2:])
    assert NOT_REACHED not in table[2] and a_cells[0] == "0.6950 ± 0.1344 (ep 1/2)"
    assert small_cells[0] == "0.4900 ± 0.0141 (ep 1/1)" and small_cells[1:] == [NOT_REACHED] * 4
    assert NOT_REACHED in text.split("\n\n")[2] and "![test loss against training loss](g.png)" in text


def test_disjoint_ranges_leave_the_higher_method_unmatched():
    section = generalisation_summary({"a": [run([3.0, 2.0])], "b": [run([1.0, 0.5])]}, count=2)
    assert section["levels"] == [1.0, 0.5]
    assert section["methods"]["a"]["matched"] == [None, None]
    assert [entry["epochs"] for entry in section["methods"]["b"]["matched"]] == [[1], [2]]


@pytest.mark.parametrize("results", [{}, {"a": []}])
def test_markdown_says_when_there_is_no_level(results):
    section = generalisation_summary(results)
    assert section["levels"] == []
    assert "no level" in generalisation_markdown(section) and "|" not in generalisation_markdown(section)


@pytest.mark.parametrize("curves", [[[1.0, 0.5, 0.2], [1.2, 0.6, 0.3]], [[3.0, 2.0], [1.0, 0.5]]])
def test_plot_is_written(tmp_path, curves):
    section = generalisation_summary({f"m{i}": [run(c)] for i, c in enumerate(curves)})
    plot_generalisation(tmp_path / "g.png", section, "title")
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
