import math

import pytest

from evosparse.engine.config import build_config
from evosparse.engine.loop import Trainer, train
from evosparse.errors import UsageError

TEXT = "the quick brown fox jumps over the lazy dog; " * 300


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def lstm_config(text_file, out, method="set", **overrides):
    values = {
        "dataset": f"text:{text_file}",
        "model": "lstm",
        "hidden": "32",
        "method": method,
        "density": 0.3,
        "optimizer": "adam",
        "lr": 0.01,
        "batch_size": 8,
        "epochs": 3,
        "out": str(out),
        **overrides,
    }
    return build_config(None, values, [])


def test_lstm_recurrent_and_input_matrices_are_sparse(text_file, tmp_path):
    trainer = Trainer(lstm_config(text_file, tmp_path / "r"), progress=False)
    names = [layer.name for layer in trainer.sparsifier.topology.layers]
    assert names == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "decoder.weight"]
    assert trainer.sparsifier.density() == pytest.approx(0.3, abs=1e-3)


@pytest.mark.parametrize("method", ["set", "static"])
def test_lstm_learns_next_characters(text_file, tmp_path, method):
    result = train(lstm_config(text_file, tmp_path / method, method=method), progress=False)
    losses = [e["test_loss"] for e in result["epochs"]]
    assert losses[-1] < losses[0] and result["final_test_acc"] > 0.3  # 24 distinct characters: chance ≈ 0.04
    assert result["final_test_bits_per_char"] == pytest.approx(losses[-1] / math.log(2), rel=1e-12)
    assert result["context"] == 100 and result["heads"] is None  # the default window; no attention


def test_models_refuse_the_other_kind_of_data(text_file, tmp_path):
    with pytest.raises(UsageError, match="use a text:PATH dataset"):
        Trainer(build_config(None, {"model": "lstm", "out": str(tmp_path / "a")}, []), progress=False)
    with pytest.raises(UsageError, match="use --model lstm"):
        Trainer(build_config(None, {"dataset": f"text:{text_file}", "out": str(tmp_path / "b")}, []), progress=False)
    with pytest.raises(UsageError, match="lstm: its layers share one width"):
        Trainer(lstm_config(text_file, tmp_path / "c", hidden="32,16"), progress=False)
