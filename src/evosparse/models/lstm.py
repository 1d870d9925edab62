"""Character-level LSTM (Karpathy et al. 2016), the recurrent model of the Adaptive Weight Sparsity paper."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class CharLSTM(nn.Module):
    """One-hot characters → LSTM → dropout → linear decoder to next-character logits, per time step.

    Besides the decoder (a Linear layer, sparse by default), the input-to-hidden and hidden-to-hidden
    matrices of every LSTM layer are sparsifiable (``sparse_include``).
    """

    sparse_include = ("lstm.weight_ih_l*", "lstm.weight_hh_l*")

    def __init__(self, vocabulary: int, hidden: int = 512, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.lstm = nn.LSTM(
            vocabulary, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocabulary)
        self.architecture = [vocabulary, *([hidden] * layers), vocabulary]

    def forward(self, codes: Tensor) -> Tensor:
        """``codes`` (batch, time) int64 → logits (batch, time, vocabulary)."""
        states, _ = self.lstm(F.one_hot(codes, self.vocabulary).to(self.decoder.weight.dtype))
        return self.decoder(self.dropout(states))
