"""A killed run resumes from its last checkpoint and reproduces the uninterrupted numbers exactly."""

import json
from pathlib import Path

import pytest
import torch

from evosparse.engine import checkpoint, loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from support import killed_then_resumed

REPRODUCIBLE = ["epoch", "train_loss", "test_loss", "test_acc", "density", "connections_changed"]


def config(out: Path, **overrides):
    base = {"epochs": 4, "hidden": "48,24", "dropout": 0.2, "density": 0.2, "out": str(out), "batch_size": 64}
    return build_config(None, {**base, **overrides}, ["zeta=0.3"])


def numbers(result):
    return [[record[key] for key in REPRODUCIBLE] for record in result["epochs"]]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch, optimizer):
    lr = 0.01 if optimizer == "adam" else 0.05
    reference = loop.train(config(tmp_path / "full", optimizer=optimizer, lr=lr), progress=False)
    resumed = killed_then_resumed(
        lambda: config(tmp_path / "cut", optimizer=optimizer, lr=lr), monkeypatch, kill_after_epoch=2
    )
    assert numbers(resumed) == numbers(reference)
    assert json.loads((tmp_path / "cut" / "result.json").read_text())["final_test_acc"] == reference["final_test_acc"]


def test_a_killed_run_leaves_no_result_until_it_is_resumed(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, state: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        loop.train(config(tmp_path / "cut"), progress=False)
    assert not (tmp_path / "cut" / "result.json").exists()


def test_an_existing_run_is_never_overwritten_without_resume(tmp_path):
    loop.train(config(tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(UsageError, match="already holds a run"):
        loop.train(config(tmp_path / "run", epochs=1), progress=False)


def test_resume_refuses_a_checkpoint_made_with_other_settings(tmp_path):
    loop.train(config(tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(UsageError, match="made with lr=0.05, this run has 0.1"):
        loop.train(config(tmp_path / "run", epochs=1, lr=0.1), resume=True, progress=False)


def test_corrupt_or_truncated_checkpoints_are_refused_in_one_line(tmp_path):
    loop.train(config(tmp_path / "run", epochs=1), progress=False)
    path = tmp_path / "run" / checkpoint.CHECKPOINT_NAME
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b"not a checkpoint at all", data[:100] + b"\x00" * 50 + data[150:]):
        path.write_bytes(damaged)
        with pytest.raises(UsageError) as info:
            loop.train(config(tmp_path / "run", epochs=2), resume=True, progress=False)
        assert "\n" not in str(info.value)


def test_a_checkpoint_with_foreign_content_is_refused(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"format": 99}, path)
    with pytest.raises(UsageError, match="not an evosparse checkpoint"):
        checkpoint.load_checkpoint(path)


def test_a_failed_checkpoint_write_keeps_the_previous_file_and_leaves_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, {"epoch": 2})
    assert checkpoint.load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]
