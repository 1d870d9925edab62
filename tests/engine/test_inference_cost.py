"""Inference multiply-adds: weights × positions for linear and convolution layers, active weights for sparse
ones, uncounted sparse modules named, random streams untouched; a run records them and `train` prints them
with its per-layer table on stderr."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from evosparse.cli import main
from evosparse.engine import loop
from evosparse.engine.inference_cost import inference_macs
from support import small_conv


def test_convolutions_cost_weights_times_output_positions_and_linears_weights_per_row():
    model = small_conv()  # conv 1→4 and 4→8 (3×3, padding 1) on 6×6, then linear 288→5
    dense = 36 * 36 + 288 * 36 + 288 * 5
    macs = inference_macs(model, torch.zeros(1, 1, 6, 6), {model[0]: 10, model[5]: 100})
    assert macs == {
        "sparse": 10 * 36 + 288 * 36 + 100,
        "dense": dense,
        "relative": (10 * 36 + 288 * 36 + 100) / dense,
        "uncounted": [],
    }
    strided = nn.Conv2d(1, 2, 3, stride=2)  # 7×7 input → 3×3 output positions
    assert inference_macs(strided, torch.zeros(1, 1, 7, 7), {})["dense"] == 18 * 9


def test_a_linear_layer_applied_at_every_time_step_counts_every_step_and_lstm_weights_are_named_uncounted():
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    model = Recurrent()
    macs = inference_macs(model, torch.zeros(1, 5, 3), {model.rnn: 20, model.head: 4})
    assert (macs["dense"], macs["sparse"], macs["uncounted"]) == (5 * 8, 5 * 4, ["rnn"])


def test_counting_leaves_the_random_streams_and_the_training_mode_as_they_were():
    class Noisy(nn.Module):  # draws noise in its forward pass, as the VAE does
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            return self.linear(x + torch.randn_like(x))

    model, sample = Noisy().train(), torch.zeros(1, 4)
    state = torch.get_rng_state()
    assert inference_macs(model, sample, {})["dense"] == 16
    assert torch.equal(torch.get_rng_state(), state) and model.training


@pytest.fixture(autouse=True)
def _no_run_plots(monkeypatch):
    monkeypatch.setattr(loop, "plot_run_curves", lambda *args, **kwargs: None)


def test_train_records_the_cost_and_prints_each_layers_target_and_actual_density(tmp_path, capsys):
    args = ["train", "--hidden", "16", "--density", "0.2", "--epochs", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    macs = result["inference_macs"]
    assert (macs["sparse"], macs["dense"]) == (result["params_active"], result["params_dense"])  # an MLP: once each
    lines = capsys.readouterr().err.splitlines()  # stdout keeps the one-line summary
    assert lines[0].split() == ["layer", "shape", "target", "density", "active"]
    for line, layer in zip(lines[1:], result["layers"]):
        name, shape, target, density, active = line.split()
        assert (name, shape) == (layer["name"], "×".join(map(str, layer["shape"])))
        assert (float(target), float(density)) == (round(layer["target_density"], 4), round(layer["density"], 4))
        assert int(active.replace(",", "")) == layer["active"]
    assert lines[len(result["layers"]) + 1].startswith(f"inference: {macs['sparse']:,} of {macs['dense']:,} dense")
