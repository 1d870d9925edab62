"""`train --train-fraction`: every method trains on the same subset, fraction 1 changes nothing, bad values exit 2;
`train --target-acc` names the first epoch reaching each accuracy."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from evosparse.cli import main
from evosparse.data import load_dataset
from evosparse.data.subset import class_quotas
from evosparse.data.validation import split_validation
from evosparse.engine import loop
from evosparse.engine.config import build_config

SMALL = {"hidden": [8], "epochs": 1, "density": 0.5, "snapshots": False}


@pytest.fixture(autouse=True)
def _no_run_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def trainer(tmp_path, method="set", seed=0, fraction=0.5):
    config = build_config(None, {**SMALL, "method": method, "seed": seed, "train_fraction": fraction})
    config.out = str(tmp_path / f"{method}-{seed}-{fraction}")
    return loop.Trainer(config, progress=False)


def test_every_method_gets_the_same_subset_and_each_seed_its_own(tmp_path):
    static, dense, other_seed = trainer(tmp_path, "static"), trainer(tmp_path, "dense"), trainer(tmp_path, seed=1)
    assert torch.equal(static.data.x_train, dense.data.x_train) and torch.equal(static.data.y_train, dense.data.y_train)
    assert not torch.equal(static.data.x_train, other_seed.data.x_train)
    full, _ = split_validation(load_dataset("digits"), 0.1)  # the subset is drawn from what validation leaves
    assert torch.equal(static.data.x_test, full.x_test) and torch.equal(static.data.x_val, full.x_val)
    counts, full_counts = Counter(static.data.y_train.tolist()), Counter(full.y_train.tolist())
    assert [counts[c] for c in range(10)] == class_quotas([full_counts[c] for c in range(10)], 0.5)
    assert static.steps_per_epoch == -(-len(static.data.y_train) // 32)


def test_result_records_the_fraction_and_the_samples(tmp_path):
    result = trainer(tmp_path, fraction=0.25).run()
    assert result["train_fraction"] == 0.25
    assert result["train_samples"] == sum(
        class_quotas(list(Counter(split_validation(load_dataset("digits"), 0.1)[0].y_train.tolist()).values()), 0.25)
    )


def test_fraction_one_trains_exactly_as_without_a_subset(tmp_path, monkeypatch):
    with_fraction = trainer(tmp_path, fraction=1.0).run()
    monkeypatch.setattr(loop, "subset_training", lambda data, fraction, seed: data)
    without = loop.train(build_config(None, {**SMALL, "out": str(tmp_path / "plain")}), progress=False)
    keys = ("train_loss", "test_loss", "test_acc", "connections_changed")
    assert [[e[k] for k in keys] for e in with_fraction["epochs"]] == [[e[k] for k in keys] for e in without["epochs"]]
    held_out = with_fraction["validation"]["samples"]
    assert with_fraction["train_samples"] == len(load_dataset("digits").y_train) - held_out


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan"])
def test_bad_fraction_exits_2_with_one_line(tmp_path, capsys, value):
    out = tmp_path / "run"
    assert main(["train", "--train-fraction", value, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train fraction must be in (0, 1]" in err and "Traceback" not in err
    assert not out.exists()


def test_bad_fraction_in_a_config_file_exits_2(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("train_fraction = 2\n")
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]) == 2
    assert "train fraction must be in (0, 1], got 2.0" in capsys.readouterr().err


def test_train_reports_the_epoch_reaching_each_target(tmp_path, capsys):
    args = ["train", "--hidden", "8", "--epochs", "2", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--target-acc", "0.01", "--target-acc", "0.999"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "first epoch reaching (val accuracy) 0.01: 1, 0.999: never"
