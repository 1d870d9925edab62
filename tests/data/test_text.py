import pytest
import torch

from evosparse.data import load_dataset
from evosparse.data.text import SEQ_LEN, load_text
from evosparse.engine.config import build_config
from evosparse.errors import DataError, UsageError


def test_windows_are_shifted_by_one_character(tmp_path):
    path = tmp_path / "t.txt"
    text = "abcdefghij" * 30
    path.write_text(text)
    data = load_text(path, seq_len=7, test_fraction=0.2)
    vocabulary = sorted(set(text))
    decode = lambda codes: "".join(vocabulary[c] for c in codes.tolist())  # noqa: E731
    assert data.num_classes == 10 and data.x_train.dtype == torch.long and data.x_train.shape[1] == 7
    assert data.x_train.shape[0] == (int(300 * 0.8) - 1) // 7
    for x, y in zip(data.x_train, data.y_train):
        assert decode(x)[1:] == decode(y)[:-1]
        assert text.find(decode(x) + decode(y)[-1]) >= 0
    assert decode(data.x_test[0]) == text[240:247]


@pytest.mark.parametrize(
    "content, message",
    [(b"ab" * 20, "too short"), (b"a" * 5000, "too short"), (b"\xff\xfe\xfa" * 500, "not UTF-8")],
)
def test_unusable_text_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_text(path)


def test_missing_text_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text(tmp_path / "absent.txt")


def test_context_sets_the_window_length_of_text_datasets_only(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 300)
    for context, length in ((None, SEQ_LEN), (7, 7), (1, 1)):
        data = load_dataset(f"text:{path}", context=context)
        assert data.x_train.shape[1:] == (length,) and data.y_test.shape[1:] == (length,)
        assert data.x_train.shape[0] == (2700 - 1) // length
    with pytest.raises(UsageError, match="--context sets the window length of text:PATH datasets; digits is not"):
        load_dataset("digits", context=7)
    with pytest.raises(UsageError, match="--context sets the window length"):
        build_config(None, {"dataset": "digits", "context": 7})
    with pytest.raises(UsageError, match="--context must be at least 1 character, got 0"):
        build_config(None, {"dataset": f"text:{path}", "context": 0})
    with pytest.raises(DataError, match="too short for windows of 400 characters .--context.: need at least 4011"):
        load_dataset(f"text:{path}", context=400)
