"""The in-memory dataset every loader returns, and the standardisation it applies."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dataset:
    """Train/test (and optional validation) tensors of one classification task.

    Inputs are float32 and already standardised; labels are int64 class indices in
    ``[0, num_classes)``. ``input_shape`` is the shape of one sample (``(64,)`` for flat
    digits, ``(3, 32, 32)`` for CIFAR images). ``class_names[i]`` is what class ``i`` was called
    in the user's data (a table's label values), ``None`` for the built-in datasets.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_size(self) -> int:
        return int(torch.tensor(self.input_shape).prod().item())


def standardise(train: torch.Tensor, *others: torch.Tensor, per_feature: bool) -> list[torch.Tensor]:
    """Shift and scale every split by the training split's statistics.

    Images use one global mean/std (per-pixel statistics blow up rarely-lit border pixels);
    tabular data uses per-feature statistics, with constant features left centred at zero.
    """
    train = train.to(torch.float32)
    if per_feature:
        mean = train.mean(dim=0, keepdim=True)
        std = train.std(dim=0, keepdim=True)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
    else:
        mean = train.mean()
        std = train.std().clamp_min(1e-8)
    return [(train - mean) / std, *((t.to(torch.float32) - mean) / std for t in others)]
