"""``text:PATH``: a UTF-8 text file as next-character prediction sequences (character-level LSTM).

The vocabulary is the sorted set of characters of the whole file; the first 90% of the text trains, the
last 10% tests. Each sample is a window of ``seq_len`` characters (``--context``, default :data:`SEQ_LEN`)
and its target the same window shifted by one character (Karpathy et al. 2016's char-rnn setup, used by
the Adaptive Weight Sparsity paper). The window is the LSTM's unroll length and the gpt's context.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evosparse.data.base import Dataset
from evosparse.errors import DataError

#: Characters per window unless ``--context`` says otherwise.
SEQ_LEN = 100
TEST_FRACTION = 0.1


def _windows(codes: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``seq_len`` inputs and their one-step-shifted targets."""
    count = (codes.numel() - 1) // seq_len
    inputs = codes[: count * seq_len].view(count, seq_len)
    targets = codes[1 : count * seq_len + 1].view(count, seq_len)
    return inputs, targets


def load_text(path: Path, seq_len: int = SEQ_LEN, test_fraction: float = TEST_FRACTION) -> Dataset:
    """Read ``path`` and cut it into (input, target) character windows; inputs are int64 codes."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file {path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"text file {path} is not UTF-8 text") from None
    except OSError as error:
        raise DataError(f"cannot read text file {path}: {error.strerror}") from None
    vocabulary = sorted(set(text))
    index = {char: code for code, char in enumerate(vocabulary)}
    codes = torch.tensor([index[char] for char in text], dtype=torch.long)
    split = int(codes.numel() * (1 - test_fraction))
    train_x, train_y = _windows(codes[:split], seq_len)
    test_x, test_y = _windows(codes[split:], seq_len)
    if len(vocabulary) < 2 or train_x.shape[0] < 1 or test_x.shape[0] < 1:
        needed = int((seq_len + 1) / test_fraction) + 1
        raise DataError(
            f"text file {path} is too short for windows of {seq_len} characters (--context): "
            f"need at least {needed} characters and 2 distinct ones"
        )
    return Dataset(f"text:{path}", train_x, train_y, test_x, test_y, num_classes=len(vocabulary))
