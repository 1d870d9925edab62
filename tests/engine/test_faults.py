"""Faults: divergence stops cleanly keeping the last good checkpoint; damaged or foreign checkpoints are
refused in one line (saying how to go back one epoch) and never silently rebuilt; resuming needs a
checkpoint unless asked otherwise; every file is written atomically, with the user's umask.

Killed processes and several writers on one folder: ``test_kills.py``; bad paths: ``test_bad_paths.py``.
"""

import os
import stat

import pytest
import torch

from evosparse.engine import checkpoint, loop
from evosparse.engine.config import build_config
from evosparse.engine.export_run import export_run
from evosparse.errors import EvosparseError, UsageError
from support import saved_masks

REPRODUCIBLE = ["epoch", "train_loss", "test_loss", "test_acc", "density", "connections_changed"]


def config(out, **overrides):
    settings = {"epochs": 3, "hidden": "16", "density": 0.3, "batch_size": 128, "out": str(out)}
    return build_config(None, {**settings, **overrides}, [])


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_train_epoch = loop.Trainer.train_epoch

    def poisoned(self, epoch, on_step):
        if epoch == 2:
            with torch.no_grad():
                self.sparsifier.topology.layers[0].weight.fill_(float("nan"))
        return real_train_epoch(self, epoch, on_step)

    monkeypatch.setattr(loop.Trainer, "train_epoch", poisoned)
    with pytest.raises(EvosparseError, match=r"training diverged: the loss is nan at epoch 2, step 1") as info:
        loop.train(config(tmp_path / "run"), progress=False)
    assert "\n" not in str(info.value) and not isinstance(info.value, UsageError)  # exit status 1
    assert f"the checkpoint of epoch 1 is kept in {tmp_path / 'run'}" in str(info.value)
    saved = checkpoint.load_checkpoint(tmp_path / "run" / checkpoint.CHECKPOINT_NAME)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_a_run_diverging_before_its_first_checkpoint_says_that_none_is_kept(tmp_path, monkeypatch):
    def poisoned(self, epoch, on_step):
        with torch.no_grad():
            self.sparsifier.topology.layers[0].weight.fill_(float("nan"))
        return real_train_epoch(self, epoch, on_step)

    real_train_epoch = loop.Trainer.train_epoch
    monkeypatch.setattr(loop.Trainer, "train_epoch", poisoned)
    with pytest.raises(EvosparseError, match="at epoch 1, step 1; no checkpoint was written to") as info:
        loop.train(config(tmp_path / "run"), progress=False)
    assert "is kept" not in str(info.value)
    assert not (tmp_path / "run").exists()  # the folder it made holds nothing, so it is gone


def test_resume_needs_a_checkpoint_unless_asked_to_start_when_there_is_none(tmp_path):
    with pytest.raises(UsageError, match=r"--resume: .*run holds no checkpoint to continue \(is --out right\?\)"):
        loop.train(config(tmp_path / "run", epochs=1), resume=True, progress=False)
    assert not (tmp_path / "run").exists()
    started = loop.train(config(tmp_path / "run", epochs=1), resume_if_present=True, progress=False)
    assert started["epochs"][0]["epoch"] == 1
    again = loop.train(config(tmp_path / "run", epochs=1), resume_if_present=True, progress=False)
    assert again["epochs"] == started["epochs"]  # continued (finished already), not started afresh


def numbers(result):
    return [[record[key] for key in REPRODUCIBLE] for record in result["epochs"]]


def flip_a_byte(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_refused_and_the_previous_checkpoint_goes_back_one_epoch(tmp_path):
    out = tmp_path / "run"
    reference = loop.train(config(out), progress=False)
    path, previous = out / checkpoint.CHECKPOINT_NAME, out / checkpoint.PREVIOUS_NAME
    assert checkpoint.load_checkpoint(previous)["epoch"] == 2
    flip_a_byte(path, path.stat().st_size // 2)
    with pytest.raises(UsageError) as info:
        loop.train(config(out), resume=True, progress=False)
    message = str(info.value)
    assert "\n" not in message and "its SHA-256 does not match its content" in message
    assert message.endswith(f"; to go back one epoch: mv {previous} {path}, then resume")
    os.replace(previous, path)  # what the message says to do: epoch 3 is trained again, identically
    assert numbers(loop.train(config(out), resume=True, progress=False)) == numbers(reference)


@pytest.fixture(scope="module")
def first_checkpoint(tmp_path_factory):
    """The checkpoint of a run's first epoch (no earlier one is kept beside it)."""
    out = tmp_path_factory.mktemp("first") / "run"
    loop.train(config(out, epochs=1), progress=False)
    return out / checkpoint.CHECKPOINT_NAME


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[:-10], "it holds .* bytes of the .* it was written with"),
        (lambda data: data.replace(b'"sha256"', b'"sha257"', 1), "its header is damaged"),
        (lambda data: data.replace(b'"format": 2', b'"format": 3', 1), "it has format 3; this evosparse reads 2"),
        (lambda data: b"X" + data[1:], r"it is unreadable or corrupt \(.*\)"),
    ],
)
def test_damaged_checkpoints_say_what_is_wrong_and_that_no_earlier_one_is_kept(
    first_checkpoint, tmp_path, damage, reason
):
    path = tmp_path / checkpoint.CHECKPOINT_NAME
    path.write_bytes(damage(first_checkpoint.read_bytes()))
    with pytest.raises(UsageError, match=f"^checkpoint {path} cannot be used: {reason}; no earlier checkpoint is kept"):
        checkpoint.load_checkpoint(path)


def test_format_1_checkpoints_written_before_checksums_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "epoch": 7, "weights": torch.arange(3)}, path)
    state = checkpoint.load_checkpoint(path)
    assert state["epoch"] == 7 and torch.equal(state["weights"], torch.arange(3))


def test_every_output_file_gets_the_users_umask(tmp_path):
    umask = 0o027  # neither mkstemp's 0600 nor the usual 0644
    before = os.umask(umask)
    try:
        out = tmp_path / "run"
        loop.train(config(out, epochs=2), progress=False)
        export_run(out)
    finally:
        os.umask(before)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"result.json", "metrics.csv", "curves.png", "checkpoint.pt",
                                       "checkpoint.prev.pt", "epoch_0001.safetensors", "model.safetensors"}  # fmt: skip
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}


def damage_and_resume(tmp_path, damage):
    out = tmp_path / "run"
    loop.train(config(out, epochs=1), progress=False)
    path = out / checkpoint.CHECKPOINT_NAME
    state = checkpoint.load_checkpoint(path)
    damage(state)
    checkpoint.save_checkpoint(path, state)
    with pytest.raises(UsageError) as info:
        loop.train(config(out, epochs=1), resume=True, progress=False)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_checkpoint_from_another_architecture_is_refused(tmp_path):
    def widen(state):
        state["model"]["layers.0.weight"] = torch.zeros(32, 64)

    assert "does not fit this model" in damage_and_resume(tmp_path, widen)


def test_a_checkpoint_missing_masks_is_refused_not_rebuilt_from_zeros(tmp_path):
    def drop_mask(state):
        del state["sparsifier"]["topology"]["layers.0.weight"]

    assert "saved topology does not match the model's sparse layers (first mismatch: layers.0.weight)" in (
        damage_and_resume(tmp_path, drop_mask)
    )


def test_a_checkpoint_of_the_previous_sparsifier_format_is_refused(tmp_path):
    def downgrade(state):  # format 1 had no version and kept boolean masks under "masks"
        sparsifier = state["sparsifier"]
        del sparsifier["format_version"]
        sparsifier["masks"] = saved_masks(sparsifier.pop("topology"))

    assert "sparsifier state has format version None, this evosparse reads 2" in damage_and_resume(tmp_path, downgrade)


def test_a_checkpoint_without_its_sparsifier_state_is_refused(tmp_path):
    assert "does not fit this model" in damage_and_resume(tmp_path, lambda state: state.pop("sparsifier"))


def test_checkpoints_never_unpickle_arbitrary_objects(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": Payload()}, path)
    with pytest.raises(UsageError, match="unreadable or corrupt"):
        checkpoint.load_checkpoint(path)
