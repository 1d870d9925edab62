"""Learning-rate schedules: the rates each schedule gives step by step, refusals in one line, the rates a run
records, and a killed run that resumes on the same rates."""

from __future__ import annotations

import math

import pytest
import torch

from evosparse.cli import main
from evosparse.engine import loop
from evosparse.engine.compare import budget_text, schedule_text
from evosparse.engine.config import build_config
from evosparse.engine.lr_schedule import build_scheduler
from evosparse.errors import UsageError
from support import killed_then_resumed


def rates(name: str, epochs: int, steps_per_epoch: int, **settings) -> list[float]:
    """The learning rate of every optimizer step of a run with base rate 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, name, epochs=epochs, steps_per_epoch=steps_per_epoch, **settings)
    seen = []
    for _ in range(epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return seen


def test_constant_without_warmup_builds_no_scheduler_at_all():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert build_scheduler(optimizer, "constant", epochs=5, steps_per_epoch=3) is None


def test_warmup_rises_linearly_to_the_base_rate_then_the_schedule_takes_over():
    assert rates("constant", 3, 2, warmup_epochs=1) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    cosine = rates("cosine", 3, 2, warmup_epochs=1)
    assert cosine[:3] == pytest.approx([1 / 3, 2 / 3, 1])
    assert cosine[3:] == pytest.approx([(1 + math.cos(math.pi * k / 4)) / 2 for k in (1, 2, 3)])


def test_cosine_decays_from_the_base_rate_towards_zero_over_the_run():
    assert rates("cosine", 4, 5) == pytest.approx([(1 + math.cos(math.pi * k / 20)) / 2 for k in range(20)])


def test_step_multiplies_by_gamma_when_each_milestone_epoch_ends():
    assert rates("step", 4, 2, milestones=[1, 3]) == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert rates("step", 4, 2, warmup_epochs=1, milestones=[2, 3], gamma=0.5) == pytest.approx(
        [1 / 3, 2 / 3, 1, 1, 0.5, 0.5, 0.25, 0.25]
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr_schedule": "linear"}, "unknown lr schedule 'linear'; choose one of constant, cosine, step"),
        ({"warmup_epochs": 3, "epochs": 3}, "warm-up epochs must be in [0, epochs) = [0, 3), got 3"),
        ({"lr_schedule": "cosine", "lr_milestones": "2"}, "apply to --lr-schedule step, not cosine"),
        ({"lr_gamma": 0.5}, "apply to --lr-schedule step, not constant"),
        ({"lr_schedule": "step"}, "--lr-schedule step needs --lr-milestones"),
        ({"lr_schedule": "step", "lr_milestones": "3,2"}, "lr milestones must increase strictly"),
        ({"lr_schedule": "step", "lr_milestones": "5", "epochs": 5}, "before the last epoch 5, got 5"),
        ({"lr_schedule": "step", "lr_milestones": "1", "warmup_epochs": 1}, "after the 1 warm-up epoch(s)"),
        ({"lr_schedule": "step", "lr_milestones": "2", "lr_gamma": 1.5}, "lr gamma must be in (0, 1), got 1.5"),
        ({"lr_schedule": "step", "lr_milestones": "2,x"}, "lr milestones must be integers"),
    ],
)
def test_bad_schedules_are_refused_in_one_line(settings, message):
    with pytest.raises(UsageError) as error:
        build_config(None, {"epochs": 10, **settings})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_cli_and_a_toml_file_take_the_schedule(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('lr_schedule = "step"\nlr_milestones = [4, 8]\nlr_gamma = 0.5\n')
    config = build_config(tmp_path / "c.toml", {"warmup_epochs": 2})
    assert (config.lr_schedule, config.lr_milestones, config.lr_gamma, config.warmup_epochs) == ("step", [4, 8], 0.5, 2)
    assert main(["train", "--lr-schedule", "cosine", "--lr-gamma", "0.5", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "r").exists()


SMALL = {"hidden": "16", "epochs": 4, "density": 0.5, "batch_size": 128, "snapshots": False}


@pytest.fixture(autouse=True)
def _no_run_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def test_a_run_records_its_schedule_and_each_epochs_last_rate(tmp_path):
    config = build_config(None, {**SMALL, "lr_schedule": "cosine", "warmup_epochs": 1, "out": str(tmp_path / "r")})
    result = loop.train(config, progress=False)
    assert result["lr_schedule"] == {"name": "cosine", "warmup_epochs": 1, "milestones": None, "gamma": None}
    steps = -(-result["train_samples"] // 128)
    expected = rates("cosine", 4, steps, warmup_epochs=1)
    assert [e["lr"] for e in result["epochs"]] == pytest.approx([0.05 * expected[k * steps - 1] for k in (1, 2, 3, 4)])


def test_a_killed_run_resumes_on_the_same_rates(tmp_path, monkeypatch):
    def config(name):
        schedule = {"lr_schedule": "step", "lr_milestones": "1,2", "warmup_epochs": 0}
        return build_config(None, {**SMALL, **schedule, "out": str(tmp_path / name)})

    reference = loop.train(config("full"), progress=False)
    resumed = killed_then_resumed(lambda: config("cut"), monkeypatch, kill_after_epoch=2)
    keys = ("lr", "train_loss", "test_acc", "val_acc")
    assert [[e[k] for k in keys] for e in resumed["epochs"]] == [[e[k] for k in keys] for e in reference["epochs"]]
    assert [e["lr"] for e in reference["epochs"]] == pytest.approx([0.05, 0.005, 0.0005, 0.0005])


def test_compare_names_the_schedule_in_its_setup_line_and_nothing_for_a_constant_rate():
    assert schedule_text({}) == schedule_text({"lr_schedule": "constant", "warmup_epochs": 0}) == ""
    assert schedule_text({"lr_schedule": "cosine", "warmup_epochs": 2}) == " (cosine, 2 warm-up epoch(s))"
    step = {"lr_schedule": "step", "warmup_epochs": 0, "lr_gamma": None, "lr_milestones": [15, 25]}
    assert schedule_text(step) == " (step, ×0.1 after epochs 15,25)"


@pytest.mark.parametrize(
    "methods, density, expected",
    [
        (["dense", "switcher"], None, "no budget"),
        (["dense", "set"], None, "density 0.1"),
        (["dense", "small-dense"], None, "density 0.1"),
        (["switcher"], 0.2, "density 0.2"),
    ],
)
def test_the_setup_line_says_no_budget_only_when_no_method_takes_one(methods, density, expected):
    summary = {"setup": {"epsilon": None, "density": density}, "methods": dict.fromkeys(methods, {})}
    assert budget_text(summary) == expected
