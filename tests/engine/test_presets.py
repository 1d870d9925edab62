"""`evosparse reproduce`: every paper preset is listed, validates, and maps onto a comparison."""

from __future__ import annotations

import dataclasses
import json

import pytest
from torch import nn

from evosparse.cli import main
from evosparse.engine import loop, presets
from evosparse.engine.config import build_config, parse_hidden
from evosparse.engine.presets import AWS_BASE, PRESETS, Preset, aws_width
from evosparse.engine.variants import base_method
from evosparse.errors import DataError
from evosparse.methods import METHODS
from evosparse.models import MODELS, ModelSpec, build_model

TINY = Preset(
    name="tiny-digits",
    source="test preset, Table 0",
    methods=("static", "set"),
    settings={"dataset": "digits", "hidden": "16,8", "density": 0.5, "epochs": 30, "lr": 0.05},
    params=("set.zeta=0.2",),
)


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_names_every_preset_with_its_status(capsys):
    code, stdout, _ = run_cli(["reproduce", "--list"], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert len(lines) == len(PRESETS)
    for line, preset in zip(lines, PRESETS.values()):
        assert line.startswith(f"{preset.name}  [{preset.status()}]")
        assert preset.source in line


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_cites_its_paper_and_validates_without_training(name, tmp_path):
    preset = PRESETS[name]
    assert any(word in preset.source for word in ("Table", "Fig.")) and "Section" in preset.source
    unregistered = [m for m in preset.methods if base_method(m) not in METHODS]
    model = preset.settings.get("model", "mlp")
    assert preset.missing() == [f"method {m}" for m in unregistered] + (
        [f"model {model}"] if model not in MODELS else []
    )
    if preset.missing():
        if model in MODELS:  # the shared setup is still valid; only a method is missing
            build_config(None, {**preset.settings, "method": "static", "out": str(tmp_path)})
        return
    comparison = preset.comparison(out=str(tmp_path / "o"))
    configs = comparison.configs()
    assert len(configs) == len(preset.methods) * preset.seeds
    assert {config.dataset for config in configs.values()} == {preset.dataset}
    assert not (tmp_path / "o").exists()


def test_unavailable_presets_fail_with_one_line(capsys, monkeypatch):
    monkeypatch.setitem(
        PRESETS, "future", Preset("future", "Table 9, Section 9", ("set", "teleport"), {"dataset": "digits"})
    )
    code, _, stderr = run_cli(["reproduce", "future"], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "needs method teleport" in stderr and "not available in this version" in stderr
    code, stdout, _ = run_cli(["reproduce", "--list"], capsys)
    assert "future  [needs method teleport (not in this version)]" in stdout


def test_a_dataset_that_cannot_be_downloaded_here_fails_with_one_line(capsys, monkeypatch):
    def offline(name, **kwargs):
        raise DataError(f"could not download {name}.zip")

    monkeypatch.setattr(presets, "load_dataset", offline)
    monkeypatch.setitem(PRESETS, "far", Preset("far", "Table 3, Section 4", ("static",), {"dataset": "isolet"}))
    assert PRESETS["far"].status() == "downloads isolet"
    code, _, stderr = run_cli(["reproduce", "far"], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "preset far downloads isolet, which failed here: could not download isolet.zip" in stderr


def test_a_preset_runs_as_a_comparison_with_overrides(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
    monkeypatch.setitem(PRESETS, TINY.name, TINY)
    out = tmp_path / "rep"
    code, stdout, _ = run_cli(
        ["reproduce", TINY.name, "--epochs", "1", "--seeds", "1", "--out", str(out), "--no-progress"], capsys
    )
    assert code == 0 and "| static |" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["setup"]["epochs"] == 1 and summary["setup"]["density"] == 0.5
    assert summary["command"] == f"evosparse reproduce tiny-digits --epochs 1 --seeds 1 --out {out} --no-progress"
    assert summary["methods"]["set"]["method_params"]["zeta"] == 0.2
    assert list(summary["methods"]) == ["static", "set"]


def test_a_preset_passes_its_fractions_and_learned_source_to_the_comparison(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
    preset = dataclasses.replace(
        TINY, methods=("set", "learned-static"), fractions="1.0,0.5", learned_from="set", params=()
    )
    monkeypatch.setitem(PRESETS, preset.name, preset)
    out = tmp_path / "rep"
    args = ["reproduce", preset.name, "--epochs", "1", "--seeds", "1", "--out", str(out), "--no-progress"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "final acc 50%" in stdout
    for folder in ("set/seed0", "set/f0.5/seed0", "learned-static/seed0", "learned-static/f0.5/seed0"):
        assert (out / folder / "result.json").exists()
    saved = json.loads((out / "learned-static/f0.5/seed0/result.json").read_text())
    assert saved["fixed_topology_from"].endswith("set/f0.5/seed0")


def test_a_shortened_run_gets_its_own_default_folder():
    assert TINY.default_out(None).name == "reproduce-tiny-digits"
    assert TINY.default_out(2).name == "reproduce-tiny-digits-2ep"


@pytest.mark.parametrize("density", [10**-0.5, 0.1, 10**-1.5, 0.01])
def test_aws_widths_keep_the_base_models_active_weights(density):
    base = sum(a * b for a, b in zip(AWS_BASE[:-1], AWS_BASE[1:]))
    width = aws_width(density)
    sizes = (AWS_BASE[0], width, width, width, AWS_BASE[-1])
    active = density * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    assert abs(active - base) / base < 0.01
    assert aws_width(1.0) == 64


@pytest.mark.parametrize("args, message", [(["reproduce", "nope"], "unknown preset 'nope'"), (["reproduce"], "--list")])
def test_bad_preset_requests_exit_2(args, message, capsys):
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and stderr.count("\n") == 1 and message in stderr


def test_the_aws_cnn_preset_builds_the_papers_32_64_64_network():
    preset = PRESETS["aws-cifar10-cnn"]
    hidden = preset.settings.get("hidden")
    spec = ModelSpec((3, 32, 32), 10, hidden=None if hidden is None else parse_hidden(hidden))
    model = build_model(preset.settings["model"], spec)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs == [32, 64, 64] and len(linears) == 1  # no hidden fully connected layer
    assert sum(p.numel() for p in model.parameters()) == 66_570


def test_epochs_scale_the_update_intervals_counted_in_epochs():
    preset = PRESETS["aws-mnist-fc-1"]  # 20 epochs, adaptive every 2
    assert "adaptive.update_interval=2" in preset.params
    for epochs, interval in [(20, 2), (2, 1), (1, 1), (10, 1), (15, 2), (40, 4)]:
        scaled = preset.scaled_params(epochs)
        assert f"adaptive.update_interval={interval}" in scaled
        others = [pair for pair in preset.params if "update_interval" not in pair]
        assert [pair for pair in scaled if "update_interval" not in pair] == others
    stepped = dataclasses.replace(TINY, methods=("rigl",), params=("rigl.update_interval=100",))
    assert stepped.scaled_params(3) == ("rigl.update_interval=100",)  # steps, not epochs: unchanged


def test_a_quick_check_that_cannot_compare_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    preset = dataclasses.replace(TINY, methods=("static", "set", "prune"), params=())
    monkeypatch.setitem(PRESETS, preset.name, preset)
    out = tmp_path / "rep"
    args = ["reproduce", preset.name, "--epochs", "1", "--seeds", "1", "--out", str(out), "--no-progress"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and not out.exists()
    assert stderr == (
        "evosparse: error: prune updates its topology after every epoch but never after the last epoch, so never "
        "in 1 epoch (train at least 2 epochs): it would end dense\n"
    )


def test_a_preset_shortened_to_two_epochs_still_evolves_every_method(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)
    quick = {**TINY.settings, "batch_size": 128, "train_fraction": 0.5}
    preset = dataclasses.replace(TINY, methods=("static", "set", "prune"), params=("set.update_interval=10",))
    preset = dataclasses.replace(preset, settings=quick)
    monkeypatch.setitem(PRESETS, preset.name, preset)
    out = tmp_path / "rep"
    args = ["reproduce", preset.name, "--epochs", "2", "--seeds", "1", "--out", str(out), "--no-progress"]
    code, _, stderr = run_cli(args, capsys)
    assert code == 0 and "warning" not in stderr
    changed = {
        method: json.loads((out / method / "seed0" / "result.json").read_text())["epochs"][0]["connections_changed"]
        for method in preset.methods
    }
    assert changed["static"] == 0 < min(changed["set"], changed["prune"])
