import pytest
import torch

from evosparse.backends.export import load_exported
from evosparse.cli import main
from evosparse.data import load_dataset
from evosparse.engine.config import build_config
from evosparse.engine.export_run import export_run
from evosparse.engine.loop import Trainer, train


def exported_and_trained_outputs(tmp_path, settings, params=()):
    """Train a digits run, export it; return the export report and both models' test outputs."""
    out = tmp_path / "run"
    settings = {**settings, "out": str(out)}
    train(build_config(None, settings, list(params)), progress=False)
    report = export_run(out)
    assert report.path == out / "model.safetensors" and report.file_bytes < report.dense_bytes
    trained = Trainer(build_config(None, settings, list(params)), progress=False)
    trained.restore(resume=True)
    trained.model.eval()
    exported = load_exported(report.path)
    x = load_dataset("digits").x_test
    with torch.no_grad():
        return report, exported(x), trained.model(x)


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_an_exported_run_predicts_like_the_trained_model(tmp_path, backend):
    settings = {"epochs": 2, "hidden": "32,16", "density": 0.2, "backend": backend}
    _, mine, reference = exported_and_trained_outputs(tmp_path, settings)
    # sparse sums accumulate in another order than dense ones: equal up to float32 rounding
    torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(mine.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("epochs", [2, 3])  # ending with a switcher epoch, then with a task epoch
@pytest.mark.parametrize("mode", ["connection", "neuron"])
def test_an_exported_switcher_run_predicts_like_the_gated_model(tmp_path, mode, epochs):
    settings = {"method": "switcher", "epochs": epochs, "hidden": "32", "density": 0.4}
    _, mine, reference = exported_and_trained_outputs(tmp_path, settings, [f"mode={mode}"])
    torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


def test_export_of_a_folder_without_a_run_exits_2_in_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and err.count("\n") == 1
