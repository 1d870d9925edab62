"""A run's topology updates counted from its configuration, as the Sparsifier's schedule makes them."""

import pytest

from evosparse.engine.config import build_config
from evosparse.engine.loop import train
from evosparse.engine.update_schedule import check_updates, epoch_updates
from evosparse.errors import UsageError


def config(tmp_path, method="set", epochs=4, **params):
    settings = {"method": method, "epochs": epochs, "hidden": "16", "density": 0.3, "out": str(tmp_path / "run")}
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
    warnings = []
    for method in ("rigl", "static", "dense"):
        check_updates(config(tmp_path, method, 1), warnings.append)
    assert warnings == []


def test_an_idle_method_is_reported_and_a_dense_to_sparse_one_refused(tmp_path):
    warnings = []
    check_updates(config(tmp_path, "set", 4, update_interval=4), warnings.append)
    assert warnings == [
        "set updates its topology after every 4 epochs but never after the last epoch, so never in 4 epochs: "
        "it keeps its initial topology; train at least 5 epochs for it to evolve"
    ]
    with pytest.raises(UsageError, match=r"in the first 50% of training .* would end dense; train at least 3 epochs"):
        check_updates(config(tmp_path, "prune", 2, update_until=0.5, dense_fraction=0.25), warnings.append)
