"""A run's topology updates counted from its configuration, as the Sparsifier's schedule makes them."""

import pytest

from evosparse.engine.config import build_config
from evosparse.engine.loop import train
from evosparse.engine.update_schedule import check_updates, epoch_updates, idle_reason
from evosparse.errors import UsageError


def config(tmp_path, method="set", epochs=4, **params):
    settings = {"method": method, "epochs": epochs, "hidden": "16", "density": 0.3, "batch_size": 128,
                "train_fraction": 0.5, "out": str(tmp_path / "run")}  # fmt: skip
    return build_config(None, settings, [f"{key}={value}" for key, value in params.items()])


@pytest.mark.parametrize(
    "method, epochs, params",
    [
        ("set", 1, {}),
        ("set", 3, {}),
        ("set", 4, {"update_interval": 2}),
        ("set", 4, {"update_interval": 4}),
        ("set", 5, {"update_interval": 2, "update_until": 0.5}),
        ("set", 5, {"update_interval": 2, "update_until": 0.9}),
    ],
)
def test_the_count_is_what_training_does(tmp_path, method, epochs, params):
    """SET changes connections at every update, so the epochs that changed some are its updates."""
    result = train(config(tmp_path, method, epochs, **params), progress=False)
    updates = sum(record["connections_changed"] > 0 for record in result["epochs"])
    assert epoch_updates(config(tmp_path, method, epochs, **params)) == updates


def test_the_switchers_final_settling_is_not_an_update(tmp_path):
    """A 1-epoch switcher run trains the task network only: its gates never learn."""
    assert epoch_updates(config(tmp_path, "switcher", 1)) == 0
    assert epoch_updates(config(tmp_path, "switcher", 2)) == 1


def test_step_schedules_and_fixed_topologies_are_not_judged(tmp_path):
    assert epoch_updates(config(tmp_path, "rigl", 1)) is None
    assert epoch_updates(config(tmp_path, "static", 1)) == 0
    assert [idle_reason(config(tmp_path, method, 1)) for method in ("rigl", "static", "dense")] == [None] * 3


def test_an_idle_method_is_named_in_a_warning_and_a_dense_to_sparse_one_refused(tmp_path, capsys):
    check_updates(config(tmp_path, "set", 4, update_interval=4))  # evolves from its initial topology: allowed
    assert idle_reason(config(tmp_path, "set", 4, update_interval=4)) == (
        "set updates its topology after every 4 epochs but never after the last epoch, so never in 4 epochs "
        "(train at least 5 epochs)"
    )
    train(config(tmp_path, "set", 1), progress=False)
    assert capsys.readouterr().err == (
        "evosparse: warning: set updates its topology after every epoch but never after the last epoch, so never "
        "in 1 epoch (train at least 2 epochs): it keeps its initial topology\n"
    )
    with pytest.raises(UsageError, match=r"in the first 50% of training .* \(train at least 3 epochs\): it would end"):
        train(config(tmp_path, "prune", 2, update_until=0.5, dense_fraction=0.25), progress=False)
