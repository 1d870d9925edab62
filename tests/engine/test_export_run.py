import json

import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from evosparse.backends.export import RawInputModel, load_exported
from evosparse.cli import main
from evosparse.data import digits, load_dataset
from evosparse.engine.config import build_config
from evosparse.engine.export_run import export_run
from evosparse.engine.loop import Trainer, train


def raw_digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits test split as scikit-learn ships it: pixel intensities 0–16, before any standardisation."""
    bunch = load_digits()
    _, x, _, y = train_test_split(
        bunch.data, bunch.target, test_size=digits.TEST_FRACTION, random_state=digits.SPLIT_SEED, stratify=bunch.target
    )
    return torch.as_tensor(x), torch.as_tensor(y)


def exported_and_trained_outputs(tmp_path, settings, params=()):
    """Train a digits run, export it; return the export report and both models' test outputs."""
    out = tmp_path / "run"
    settings = {**settings, "out": str(out)}
    train(build_config(None, settings, list(params)), progress=False)
    report = export_run(out)
    assert report.path == out / "model.safetensors"
    trained = Trainer(build_config(None, settings, list(params)), progress=False)
    trained.restore(resume=True)
    trained.model.eval()
    exported = load_exported(report.path)
    x = load_dataset("digits").x_test
    with torch.no_grad():  # the export takes raw pixels, the trained model standardised ones
        return report, exported(raw_digits_test()[0]), trained.model(x)


@pytest.mark.parametrize(
    "backend, params", [("masked", ()), ("csr", ()), ("condensed", ("per_neuron=true",))]
)  # the condensed file is the same CSR export
def test_an_exported_run_predicts_like_the_trained_model(tmp_path, backend, params):
    settings = {"epochs": 2, "hidden": "32,16", "density": 0.2, "backend": backend}
    report, mine, reference = exported_and_trained_outputs(tmp_path, settings, params)
    assert report.file_bytes < report.dense_bytes
    # sparse sums accumulate in another order than dense ones: equal up to float32 rounding
    torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(mine.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("epochs", [2, 3])  # ending with a switcher epoch, then with a task epoch
@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_an_exported_switcher_run_predicts_like_the_gated_model(tmp_path, mode, epochs):
    settings = {"method": "switcher", "epochs": epochs, "hidden": "32", "density": 0.4}
    _, mine, reference = exported_and_trained_outputs(tmp_path, settings, [f"mode={mode}"])
    torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


def test_an_exported_model_scores_the_runs_accuracy_on_raw_inputs(tmp_path):
    out = tmp_path / "run"
    result = train(
        build_config(None, {"epochs": 3, "hidden": "32", "out": str(out), "val_fraction": 0}), progress=False
    )
    exported = load_exported(export_run(out).path)
    assert isinstance(exported, RawInputModel) and exported.class_names is None
    x, y = raw_digits_test()
    with torch.no_grad():
        accuracy = (exported(x).argmax(1) == y).double().mean().item()
    assert accuracy == pytest.approx(result["final_test_acc"], abs=1e-9)
    assert accuracy > 0.5  # a trained model, far above chance (0.1)


def test_an_export_of_a_table_keeps_its_class_names_and_per_feature_statistics(tmp_path):
    rows = ["size,weight,kind"] + [
        f"{i % 7 * 10 + 100},{(i * 13) % 5 + (i % 3) * 40},{('apple', 'pear', 'plum')[i % 3]}" for i in range(90)
    ]
    table = tmp_path / "fruit.csv"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    settings = {"dataset": f"csv:{table}", "target": "kind", "epochs": 3, "hidden": "8", "out": str(out)}
    train(build_config(None, settings), progress=False)
    exported = load_exported(export_run(out).path)
    assert exported.class_names == json.loads((out / "result.json").read_text())["class_names"]
    assert sorted(exported.class_names) == ["apple", "pear", "plum"]
    assert exported.input_mean.shape == exported.input_std.shape == (2,)  # one statistic per column


def test_export_of_a_folder_without_a_run_exits_2_in_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and err.count("\n") == 1
