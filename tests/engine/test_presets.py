"""`evosparse reproduce`: every paper preset is listed, validates, and maps onto a comparison."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from torch import nn

from evosparse.cli import main
from evosparse.data import mnist, text
from evosparse.data.subset import class_quotas
from evosparse.engine import loop, presets
from evosparse.engine.config import build_config, parse_hidden
from evosparse.engine.presets import AWS_BASE, PRESETS, Preset, aws_lstm_width, aws_width
from evosparse.engine.variants import base_method
from evosparse.engine.width_scaling import scale_widths, sparse_weight_shapes
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


# -- each preset builds what its note says -------------------------------------------------------

#: How many samples each preset's dataset trains on, and the words its note uses for it.
TRAINING_SETS = {
    "mnist": "first 50,000 training images",
    "cifar10": "45,000 of CIFAR-10's 50,000 training images",
    "isolet": "5,614 of ISOLET's 6,238 training samples",
    "text:war_and_peace.txt": "the text's last 10% is the test split and 10% of the rest validates",
}


def comparison_configs(preset, tmp_path):
    return preset.comparison(out=str(tmp_path / "o")).configs()


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_methods_of_a_preset_regrow_weights_alike(name, tmp_path):
    growers = {
        (config.params["grow_init"], config.params["grow_std"])
        for config in comparison_configs(PRESETS[name], tmp_path).values()
        if "grow_init" in config.params
    }
    assert len(growers) <= 1
    if growers:
        assert "N(0, 0.01²)" in PRESETS[name].note and growers == {("normal", 0.01)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_note_states_the_training_set_it_uses(name, tmp_path):
    preset = PRESETS[name]
    assert TRAINING_SETS[preset.dataset] in preset.note
    val_fraction = {config.val_fraction for config in comparison_configs(preset, tmp_path).values()}
    assert val_fraction == {0.1}
    assert mnist.VALIDATION_SIZE == 10_000 and text.TEST_FRACTION == 0.1
    assert sum(class_quotas([500] * 10, 0.1)) == 500 and sum(class_quotas([240] * 25 + [238], 0.1)) == 624


@pytest.mark.parametrize("name", [name for name in PRESETS if name.startswith("aws-mnist-fc-")])
def test_the_aws_fully_connected_presets_widen_the_sparse_runs_and_train_the_base_model(name, tmp_path):
    preset = PRESETS[name]
    density = preset.settings["density"]
    width = aws_width(density)
    assert preset.settings["hidden"] == f"{width},{width},{width}" and f"from 64 to {width}" in preset.note
    configs = comparison_configs(preset, tmp_path)
    assert configs[("small-dense", 0)].width_scale == "auto-small" and "small-dense is that base model" in preset.note
    spec, _ = scale_widths(
        ModelSpec((1, 28, 28), 10, hidden=parse_hidden(preset.settings["hidden"])),
        model="mlp",
        sparsify="all",
        width_scale="auto-small",
        distribution=preset.settings["distribution"],
        density=density,
        epsilon=None,
    )
    assert all(abs(hidden - 64) <= 1 for hidden in spec.hidden)  # the paper's 64-64-64 baseline


def lstm_weights(hidden, vocabulary):
    spec = ModelSpec((100,), vocabulary, sequence=True, hidden=(hidden,))
    return sum(shape.numel() for shape in sparse_weight_shapes("lstm", spec, "all"))


@pytest.mark.parametrize("vocabulary", [65, 90, 110])
def test_the_aws_lstm_preset_widens_the_sparse_runs_to_the_base_models_active_weights(vocabulary, tmp_path):
    preset = PRESETS["aws-text-lstm"]
    hidden, density = int(preset.settings["hidden"]), preset.settings["density"]
    assert hidden == aws_lstm_width(density) and f"from 512 to {hidden}" in preset.note
    active = density * lstm_weights(hidden, vocabulary)
    assert abs(active / lstm_weights(512, vocabulary) - 1) < (0.002 if vocabulary == 90 else 0.03)
    assert comparison_configs(preset, tmp_path)[("small-dense", 0)].width_scale == "auto-small"


def test_the_switcher_presets_impose_no_budget_and_run_the_switchers_defaults_their_notes_name(tmp_path):
    lenet = 784 * 300 + 300 * 100 + 100 * 10
    note = PRESETS["switcher-mnist-lenet300"].note
    suggested = float(re.search(r"--density (\d\.\d+) imposes the paper's", note).group(1))
    assert "connection switching keeps 42.5K" in note and abs(suggested * lenet / 42_500 - 1) < 0.005
    for name in ("switcher-mnist-lenet300", "switcher-cifar10-resnet18"):
        preset = PRESETS[name]
        config = comparison_configs(preset, tmp_path / name)[("switcher", 0)]
        assert config.density == 1.0 and config.params["target_density"] == 0.0
        assert config.params["mode"] == "connection" and "connection switching" in preset.source
        assert (config.params["first_phase"], config.params["gate_init"]) == ("task", "one")
        assert (config.params["switcher_lr"], config.params["switcher_interval"]) == (0.01, 32)
        for words in ("task network trains first", "gates start near 1", "learn at 0.01", "every 32 batches"):
            assert words in preset.note


def test_reproduce_param_overrides_a_presets_own_parameters_for_its_method(tmp_path):
    preset = presets.get_preset("switcher-mnist-lenet300")
    paper = ("switcher.first_phase=switcher", "switcher.gate_init=kaiming", "switcher.mode=neuron")
    comparison = preset.comparison(out=str(tmp_path / "out"), extra_params=paper)
    switcher = comparison.configs()[("switcher", 0)].params
    assert (switcher["first_phase"], switcher["gate_init"], switcher["mode"]) == ("switcher", "kaiming", "neuron")
    assert preset.comparison(out=str(tmp_path / "out")).configs()[("switcher", 0)].params["mode"] == "connection"
