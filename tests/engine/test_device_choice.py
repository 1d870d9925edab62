"""``--device auto`` (the default): CUDA when present, else the CPU; result.json and the checkpoint record the
device used, and a resume is judged by that device, not by how ``--device`` was spelt."""

from pathlib import Path

import pytest
import torch

from evosparse.engine import loop
from evosparse.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from evosparse.engine.config import TrainConfig, build_config, config_difference, device_type
from evosparse.errors import UsageError
from support import killed_then_resumed


def config(out: Path, **overrides):
    base = {"epochs": 2, "hidden": "24", "density": 0.3, "out": str(out), "batch_size": 64}
    return build_config(None, {**base, **overrides})


def test_auto_is_the_default_and_resolves_to_cuda_only_where_torch_sees_a_gpu(monkeypatch):
    assert TrainConfig().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_type("auto") == "cuda" and loop.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_type("auto") == "cpu" and loop.resolve_device("auto") == torch.device("cpu")
    assert device_type("cpu") == "cpu"


def test_config_difference_compares_devices_as_they_resolve(monkeypatch):
    saved = build_config(None, {"device": "cpu"}).to_dict()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config_difference(saved, build_config(None, {})) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config_difference(saved, build_config(None, {})) == ("device", "cpu", "auto")


def test_result_json_records_the_device_the_run_used(tmp_path):
    result = loop.train(config(tmp_path / "run", epochs=1), progress=False)
    assert result["device"] == device_type("auto")


def test_a_run_started_with_an_explicit_device_resumes_under_auto_exactly(tmp_path, monkeypatch):
    reference = loop.train(config(tmp_path / "full", device="cpu"), progress=False)
    devices = iter(["cpu", "auto"])  # started with --device cpu, resumed with the default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto means the CPU here, even on a GPU host
    resumed = killed_then_resumed(
        lambda: config(tmp_path / "cut", device=next(devices)), monkeypatch, kill_after_epoch=1
    )
    assert [e["test_loss"] for e in resumed["epochs"]] == [e["test_loss"] for e in reference["epochs"]]


def test_a_checkpoint_made_on_another_device_type_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loop.train(config(tmp_path / "run", epochs=1), progress=False)
    path = tmp_path / "run" / CHECKPOINT_NAME
    state = load_checkpoint(path)
    assert state["device"] == "cpu"
    save_checkpoint(path, {**state, "device": "cuda"})  # as if trained under --device auto on a GPU machine
    with pytest.raises(UsageError, match="made on cuda, this run is on cpu") as refusal:
        loop.train(config(tmp_path / "run", epochs=1), resume=True, progress=False)
    assert "\n" not in str(refusal.value)
