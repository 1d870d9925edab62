"""TensorBoard and W&B logging: every epoch's scalars and per-layer densities written and read back, a
resumed run continuing the same logs, a missing library refused in one line before any work."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from evosparse.cli import main
from evosparse.engine import loop, run_logging
from evosparse.engine.config import build_config
from evosparse.engine.run_logging import RunLogging

LAYERS = ("layers.0.weight", "layers.2.weight", "layers.4.weight")


def config(out, epochs=3):
    return build_config(None, {"hidden": [16, 8], "epochs": epochs, "density": 0.3, "out": str(out)})


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs the tensorboard extra")
@pytest.mark.parametrize("dies", ["after its second checkpoint", "logged but not checkpointed"])
def test_tensorboard_holds_every_epoch_once_and_every_layer_density_across_a_resume(tmp_path, monkeypatch, dies):
    board = tmp_path / "tb"
    with monkeypatch.context() as patch:
        save = loop.save_checkpoint

        def die_at_epoch_2(path, state):
            if state["epoch"] == 2 and dies == "logged but not checkpointed":
                raise KeyboardInterrupt  # the resumed run redoes epoch 2: its first point must be purged
            save(path, state)
            if state["epoch"] == 2:
                raise KeyboardInterrupt

        patch.setattr(loop, "save_checkpoint", die_at_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            loop.train(config(tmp_path / "run"), progress=False, logging=RunLogging(tensorboard=board))
    result = loop.train(config(tmp_path / "run"), resume=True, progress=False, logging=RunLogging(tensorboard=board))
    scalars = read_scalars(board)
    epochs = result["epochs"]
    assert [step for step, _ in scalars["val/accuracy"]] == [1, 2, 3]
    assert [value for _, value in scalars["test/accuracy"]] == pytest.approx([e["test_acc"] for e in epochs])
    assert [value for _, value in scalars["train/loss"]] == pytest.approx([e["train_loss"] for e in epochs])
    for index, name in enumerate(LAYERS):
        layer = result["layers"][index]
        numel = layer["shape"][0] * layer["shape"][1]
        assert [v for _, v in scalars[f"sparsity/{name}"]] == pytest.approx(
            [e["layer_active"][index] / numel for e in epochs]
        )
    assert {"sparsity/density", "optim/lr", "cost/train_macs", "time/train_s"} <= set(scalars)


class FakeRun:
    def __init__(self, **settings) -> None:
        self.settings, self.logged, self.finished = settings, [], False

    def log(self, scalars, step):
        self.logged.append((step, scalars))

    def finish(self):
        self.finished = True


def test_wandb_receives_the_config_and_one_point_per_epoch_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    runs: list[FakeRun] = []

    def init(**settings):
        runs.append(FakeRun(**settings))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.setattr(run_logging, "require", lambda *args: None)
    out = tmp_path / "run"
    loop.train(config(out, epochs=2), progress=False, logging=RunLogging(wandb=True))
    result = loop.train(config(out, epochs=2), resume=True, progress=False, logging=RunLogging(wandb=True))
    first, second = runs
    assert first.settings["config"]["density"] == 0.3 and first.settings["dir"] == str(out)
    assert first.settings["id"] == second.settings["id"] and second.settings["resume"] == "allow"
    assert [step for step, _ in first.logged] == [1, 2] and second.logged == []  # nothing left to train
    assert first.logged[1][1]["val/accuracy"] == result["epochs"][1]["val_acc"]
    assert first.finished and second.finished


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs the wandb extra")
def test_wandb_offline_writes_its_run_into_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--out", str(out), "--no-progress", "--wandb"]) == 0
    run_id = (out / run_logging.WANDB_ID_NAME).read_text().strip()
    [record] = list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert record.stat().st_size > 0


def test_a_missing_logging_library_is_refused_in_one_line_before_training(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--tensorboard", str(tmp_path / "tb"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "evosparse: error: --tensorboard needs the tensorboard package: pip install 'evosparse[tensorboard]'\n"
    )
    assert not out.exists()
