"""Validation-based selection (result.json schema 2): the selected epoch comes from validation numbers only,
every epoch records val_loss/val_acc, `--val-fraction 0` keeps the schema-1 behaviour, old checkpoints stay
resumable only as what they were."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from evosparse.cli import main
from evosparse.data import load_dataset
from evosparse.engine import compare, loop
from evosparse.engine.config import build_config, config_difference
from evosparse.engine.records import EpochRecord, build_result
from evosparse.errors import UsageError
from evosparse.metrics import ACCURACY, NEGATIVE_ELBO, select_epoch, selection_split

SMALL = {"hidden": [16], "epochs": 4, "density": 0.5, "snapshots": False}


@pytest.fixture(autouse=True)
def _no_run_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def test_selection_takes_the_best_value_then_the_lower_loss_then_the_earlier_epoch():
    assert select_epoch([0.5, 0.9, 0.7], [1.0, 1.0, 1.0]) == 2
    assert select_epoch([0.9, 0.9, 0.9], [0.4, 0.3, 0.3]) == 2
    assert select_epoch([3.0, 2.0, 2.5], [3.0, 2.0, 2.5], higher_is_better=False) == 2
    assert select_epoch([], []) is None
    with pytest.raises(UsageError, match="one loss per value"):
        select_epoch([0.5], [])


def record(epoch: int, test_acc: float, val_acc: float | None) -> EpochRecord:
    val_loss = None if val_acc is None else 1 - val_acc
    return EpochRecord(epoch, 1.0, 1 - test_acc, test_acc, 0.5, 0.1, 0.0, 0, val_loss, val_acc)


def result_of(epochs: list[EpochRecord], metric=ACCURACY) -> dict:
    return build_result(header={}, epochs=epochs, params_active=1, density_final=0.5, wall_time_s=1.0, metric=metric)


def test_result_reports_the_test_value_at_the_validation_choice_and_keeps_the_best_for_information():
    result = result_of([record(1, 0.80, 0.70), record(2, 0.75, 0.90), record(3, 0.95, 0.60)])
    assert result["schema"] == 2
    assert (result["selected_epoch"], result["test_acc_at_selected"]) == (2, 0.75)
    assert (result["best_test_acc"], result["final_test_acc"]) == (0.95, 0.95)
    assert result["epochs"][1]["val_acc"] == 0.90
    loss_metric = result_of([record(1, 0.80, 0.70), record(2, 0.75, 0.90)], NEGATIVE_ELBO)
    assert loss_metric["selected_epoch"] == 1  # a loss is selected at its smallest value


def test_a_run_without_validation_selects_nothing_and_a_partial_one_is_an_error():
    result = result_of([record(1, 0.8, None), record(2, 0.9, None)])
    assert result["selected_epoch"] is None and result["test_acc_at_selected"] is None
    with pytest.raises(ValueError, match="some epochs"):
        result_of([record(1, 0.8, 0.7), record(2, 0.9, None)])


def train(tmp_path, name: str, **settings) -> dict:
    return loop.train(build_config(None, {**SMALL, "out": str(tmp_path / name), **settings}), progress=False)


def test_selection_never_reads_the_test_set(tmp_path, monkeypatch):
    """The same run with its test labels scrambled must select the same epoch from the same validation curve."""
    honest = train(tmp_path, "honest")
    real_load = loop.load_dataset

    def scrambled(*args, **kwargs):
        data = real_load(*args, **kwargs)
        shuffled = data.y_test[torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(1))]
        return dataclasses.replace(data, y_test=(shuffled + 1) % data.num_classes)

    monkeypatch.setattr(loop, "load_dataset", scrambled)
    blind = train(tmp_path, "blind")
    assert [e["test_acc"] for e in blind["epochs"]] != [e["test_acc"] for e in honest["epochs"]]
    assert [e["val_acc"] for e in blind["epochs"]] == [e["val_acc"] for e in honest["epochs"]]
    assert blind["selected_epoch"] == honest["selected_epoch"] is not None
    chosen = honest["epochs"][honest["selected_epoch"] - 1]
    assert honest["test_acc_at_selected"] == chosen["test_acc"]
    assert chosen["val_acc"] == max(e["val_acc"] for e in honest["epochs"])


def test_default_run_holds_out_a_tenth_of_digits_and_writes_validation_columns(tmp_path):
    result = train(tmp_path, "run", epochs=2)
    full = len(load_dataset("digits").y_train)
    assert result["validation"] == {"source": "held_out", "fraction": 0.1, "samples": 135}
    assert result["train_samples"] == full - 135
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["val_acc"]) for row in rows] == [e["val_acc"] for e in result["epochs"]]
    assert all(0 <= float(row["val_acc"]) <= 1 and float(row["val_loss"]) > 0 for row in rows)


def test_fraction_zero_trains_on_the_whole_training_split_without_selection(tmp_path):
    result = train(tmp_path, "none", epochs=2, val_fraction=0.0)
    assert result["validation"] is None and result["selected_epoch"] is None
    assert result["train_samples"] == len(load_dataset("digits").y_train)
    assert all(e["val_acc"] is None and e["val_loss"] is None for e in result["epochs"])


def test_a_checkpoint_from_before_validation_resumes_only_without_validation():
    saved = build_config(None, {"val_fraction": 0.0}).to_dict()
    del saved["val_fraction"]
    assert config_difference(saved, build_config(None, {})) == ("val_fraction", 0.0, 0.1)
    assert config_difference(saved, build_config(None, {"val_fraction": 0.0})) is None


def test_train_prints_the_selected_epoch_and_refuses_a_bad_fraction(tmp_path, capsys):
    assert main(["train", "--hidden", "8", "--epochs", "2", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    selected = f"{result['test_acc_at_selected']:.4f} at val-selected epoch {result['selected_epoch']} (best "
    assert summary.count("\n") == 1 and f"test accuracy {result['final_test_acc']:.4f}, {selected}" in summary
    assert main(["train", "--val-fraction", "1", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "validation fraction must be in [0, 1), got 1.0" in err
    assert not (tmp_path / "bad").exists()


def finished_run(val_accs: list[float | None]) -> dict:
    """A result.json with test accuracies 0.8, 0.9 and the given validation accuracies."""
    epochs = [record(epoch, test, val) for epoch, test, val in zip((1, 2), (0.8, 0.9), val_accs)]
    extra = {"method_params": {}, "architecture": [4, 2], "params_dense": 8}
    return {**result_of(epochs), **extra}


def test_compare_reads_epoch_to_target_off_validation_and_reports_the_selected_test_accuracy():
    runs = [finished_run([0.7, 0.95]), finished_run([0.7, 0.95])]
    entry = compare.method_summary(runs, ["a", "b"], [0.75], "val")
    assert entry["epoch_to_target"]["0.75"] == {"mean_curve": 2, "runs": [2, 2]}  # the test curve reaches it at 1
    assert entry["selected_acc"]["values"] == [0.9, 0.9] and entry["selected_epoch"] == [2, 2]


def test_compare_falls_back_to_the_test_curve_for_runs_without_validation_and_says_so():
    old = {key: value for key, value in finished_run([None, None]).items() if key != "selected_epoch"}
    old["epochs"] = [{k: v for k, v in e.items() if not k.startswith("val_")} for e in old["epochs"]]  # schema 1
    assert selection_split(old) == "test" and selection_split(finished_run([0.7, 0.9])) == "val"
    entry = compare.method_summary([old], ["a"], [0.75], selection_split(old))
    assert entry["epoch_to_target"]["0.75"]["runs"] == [1] and entry["selected_acc"] is None
    row = compare.markdown_table({"targets": [0.75], "methods": {"old": entry}}).splitlines()[2]
    assert row.startswith("| old | 0.9000 ± 0.0000 | — | 0.9000 ± 0.0000 |")
