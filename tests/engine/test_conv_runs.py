"""Every method trains the conv models through the engine (synthetic CIFAR-shaped data, no download)."""

import pytest
import torch

from evosparse.data.base import Dataset
from evosparse.engine import loop
from evosparse.engine.config import build_config
from evosparse.errors import UsageError
from evosparse.methods import METHODS
from support import counts_steps


def synthetic_cifar(**_: object) -> Dataset:
    """A learnable CIFAR-shaped task: the class is encoded as a bright patch position."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 4, (n,), generator=generator)
        images = torch.randn(n, 3, 32, 32, generator=generator) * 0.3
        for label in range(4):
            rows = labels == label
            images[rows, :, 8 * label : 8 * label + 8, 4:28] += 2.0
        return images, labels

    x_train, y_train = split(128)
    x_test, y_test = split(64)
    return Dataset("synthetic-cifar", x_train, y_train, x_test, y_test, num_classes=4)


@pytest.fixture(autouse=True)
def _synthetic_data(monkeypatch):
    monkeypatch.setattr(loop, "load_dataset", lambda spec, **kw: synthetic_cifar())


def run(tmp_path, method, **overrides):
    values = {
        "method": method,
        "model": "cnn",
        "density": 0.3,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.02,
        "out": str(tmp_path / method),
        "dataset": "cifar10",
        **overrides,
    }
    return loop.train(build_config(None, values, []), progress=False)


CONV_CAPABLE = sorted(set(METHODS) - {"path_weight", "liset", "switcher"})


@pytest.mark.parametrize("method", CONV_CAPABLE)
def test_every_conv_capable_method_runs_an_epoch_on_the_cnn(tmp_path, method):
    params = {"update_interval": 2} if counts_steps(method) else {}
    result = run(tmp_path, method, params=params)
    assert result["distribution"] == "erk" and len(result["epochs"]) == 2
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in result["epochs"])
    assert result["final_test_acc"] > 0.25 or result["epochs"][-1]["test_loss"] < result["epochs"][0]["test_loss"]


@pytest.mark.parametrize("method", ["path_weight", "liset", "switcher"])
def test_fc_only_methods_work_with_sparsify_fc_or_say_why_not(tmp_path, method):
    try:
        result = run(tmp_path, method, sparsify="fc", hidden="32")
    except UsageError as error:
        assert "\n" not in str(error)
        return
    assert [layer["name"] for layer in result["layers"]] == ["classifier.0.weight", "classifier.2.weight"]


def test_sparsify_chooses_the_part_of_the_model(tmp_path):
    conv_only = run(tmp_path, "static", sparsify="conv", epochs=1)
    assert all("features" in layer["name"] for layer in conv_only["layers"])
    fc_only = run(tmp_path, "set", sparsify="fc", epochs=1)
    assert [layer["name"] for layer in fc_only["layers"]] == ["classifier.0.weight"]


def test_augmentation_runs_and_is_refused_on_flat_data(tmp_path, monkeypatch):
    assert len(run(tmp_path, "set", augment=True, epochs=1)["epochs"]) == 1
    monkeypatch.undo()
    with pytest.raises(UsageError, match="crops and flips images"):
        loop.train(build_config(None, {"augment": True, "out": str(tmp_path / "flat")}, []), progress=False)
