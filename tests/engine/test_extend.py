"""Extending a run with a larger --epochs: the result equals a run planned that long from the start (the
topology update its old end skipped runs on resume), and runs whose past depends on the planned length
are refused in one line."""

from __future__ import annotations

import json

import pytest

from evosparse.cli import main
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError

SAME = ("train_loss", "val_acc", "test_acc", "test_loss", "density", "layer_active", "train_macs")


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def run(out, epochs, method, params=(), resume=False, **settings):
    values = {"method": method, "hidden": [24, 12], "epochs": epochs, "density": 0.3, "out": str(out), **settings}
    return loop.train(build_config(None, values, list(params)), resume=resume, progress=False)


@pytest.mark.parametrize(
    "method, params",
    [
        ("set", ()),
        ("set", ("update_unit=step", "update_interval=51")),  # digits: 51 steps per epoch at batch 32
        ("static", ()),
        ("sensitivity", ()),
        ("path_weight", ()),
        ("liset", ()),
        ("dense", ()),
    ],
)
def test_an_extended_run_equals_one_planned_that_long(tmp_path, method, params):
    run(tmp_path / "short", 2, method, params)
    extended = run(tmp_path / "short", 4, method, params, resume=True)
    planned = run(tmp_path / "long", 4, method, params)
    assert len(extended["epochs"]) == 4
    for key in SAME:
        assert [e[key] for e in extended["epochs"]] == [e[key] for e in planned["epochs"]], key
    changed = [e["connections_changed"] for e in planned["epochs"]]
    if method not in ("static", "dense"):
        assert changed[1] > 0  # the update after epoch 2, which the short run's end skipped, was caught up
    assert json.loads((tmp_path / "short" / "result.json").read_text())["epochs"] == extended["epochs"]


@pytest.mark.parametrize(
    "method, settings, message",
    [
        ("set", {"lr_schedule": "cosine"}, r"decays its learning rate over 2 epochs \(--lr-schedule cosine\)"),
        ("rigl", {}, "rigl in .* schedules its topology updates over the planned 2 epochs"),
        ("gmp", {}, "gmp in .* schedules its topology updates over the planned 2 epochs"),
        ("adaptive", {}, "adaptive needs the gradients recorded before the update that the saved run's end skipped"),
    ],
)
def test_runs_whose_past_depends_on_their_length_are_not_extended(tmp_path, method, settings, message):
    params = ["update_interval=10"] if method == "gmp" else []
    run(tmp_path / "run", 2, method, params, **settings)
    before = (tmp_path / "run" / "result.json").read_bytes()
    with pytest.raises(UsageError, match=message):
        run(tmp_path / "run", 3, method, params, resume=True, **settings)
    assert (tmp_path / "run" / "result.json").read_bytes() == before  # nothing lost


def test_a_run_cannot_shrink_and_the_cli_says_so_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--hidden", "16", "--out", str(out), "--no-progress"]
    assert main([*args, "--epochs", "3"]) == 0
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "planned for 3 epochs (3 done): --epochs can only grow" in err
