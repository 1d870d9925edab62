"""``--precision bf16``: forward passes under bfloat16 autocast, float32 weights; masks stay exact, a resumed run
equals an uninterrupted one, and csr is refused where torch's sparse kernels lack bfloat16."""

from pathlib import Path

import pytest
import torch
from torch import nn

from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_ops import kernels_support
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from support import DEVICES, killed_then_resumed


def config(out: Path, **overrides):
    base = {"epochs": 3, "hidden": "64", "density": 0.2, "out": str(out), "batch_size": 32, "device": "cpu"}
    return build_config(None, {**base, **overrides})


def test_a_bf16_digits_run_learns_keeps_its_masks_exact_and_records_its_precision(tmp_path):
    trainer = loop.Trainer(config(tmp_path / "bf16", precision="bf16"), progress=False)
    result = trainer.run()
    assert result["precision"] == "bf16"
    assert result["final_test_acc"] > 0.8  # ten classes: chance is 0.1
    assert result["epochs"][0]["connections_changed"] > 0  # SET rewired under bf16 too
    for layer in trainer.sparsifier.topology.layers:
        assert layer.weight.dtype == torch.float32
        assert not layer.weight[~layer.mask].any(), layer.name
        assert int(layer.mask.sum()) == layer.active
    fp32 = loop.train(config(tmp_path / "fp32"), progress=False)
    assert fp32["precision"] == "fp32"
    assert [e["test_loss"] for e in result["epochs"]] != [e["test_loss"] for e in fp32["epochs"]]  # autocast acted


def test_a_killed_bf16_run_resumes_exactly(tmp_path, monkeypatch):
    reference = loop.train(config(tmp_path / "full", precision="bf16"), progress=False)
    resumed = killed_then_resumed(lambda: config(tmp_path / "cut", precision="bf16"), monkeypatch, kill_after_epoch=1)
    keys = ("train_loss", "test_loss", "test_acc", "connections_changed")
    assert [[e[k] for k in keys] for e in resumed["epochs"]] == [[e[k] for k in keys] for e in reference["epochs"]]


def test_a_checkpoint_is_not_resumed_in_another_precision(tmp_path):
    loop.train(config(tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(UsageError, match="precision='fp32', this run has 'bf16'"):
        loop.train(config(tmp_path / "run", epochs=1, precision="bf16"), resume=True, progress=False)


def test_precision_comes_from_toml_and_a_wrong_one_is_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('precision = "bf16"\n')
    assert build_config(path).precision == "bf16"
    with pytest.raises(UsageError, match="unknown precision 'fp16'; choose one of fp32, bf16"):
        build_config(None, {"precision": "fp16"})


@pytest.mark.skipif(kernels_support(torch.bfloat16, torch.device("cpu")), reason="torch's CPU CSR kernels have bf16")
def test_csr_in_bf16_is_refused_in_one_line_where_the_sparse_kernels_lack_it(tmp_path):
    with pytest.raises(UsageError, match="--precision bf16 with --backend csr needs") as refusal:
        loop.train(config(tmp_path / "run", precision="bf16", backend="csr"), progress=False)
    assert "\n" not in str(refusal.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("device", DEVICES)
def test_a_csr_layer_under_autocast_computes_in_bf16_where_its_kernels_can_else_in_its_own_dtype(device):
    torch.manual_seed(0)
    first, second = nn.Linear(5, 8).to(device), nn.Linear(8, 6)
    layer = CsrLinear.from_linear(second, torch.rand(6, 8) < 0.5).to(device)
    x = torch.randn(4, 5, device=device)
    expected = layer(first(x).float())
    with torch.autocast(device, dtype=torch.bfloat16):
        hidden = first(x)
        assert hidden.dtype == torch.bfloat16  # what a layer before the csr one hands it under autocast
        y = layer(hidden)
    computes_in_bf16 = kernels_support(torch.bfloat16, torch.device(device))
    assert y.dtype == (torch.bfloat16 if computes_in_bf16 else torch.float32)
    torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.05)
    y.float().sum().backward()
    assert layer.values.grad is not None and layer.values.grad.dtype == torch.float32
