"""Faults: divergence stops cleanly keeping the last good checkpoint; damaged or foreign checkpoints are
refused in one line and never silently rebuilt."""

import pytest
import torch

from evosparse.engine import checkpoint, loop
from evosparse.engine.config import build_config
from evosparse.errors import EvosparseError, UsageError


def config(out, **overrides):
    return build_config(None, {"epochs": 3, "hidden": "16", "density": 0.3, "out": str(out), **overrides}, [])


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
    saved = checkpoint.load_checkpoint(tmp_path / "run" / checkpoint.CHECKPOINT_NAME)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


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
        del state["sparsifier"]["masks"]["layers.0.weight"]

    assert "masks do not match" in damage_and_resume(tmp_path, drop_mask)


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
