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
    ``standardisation`` is what turned the raw inputs into these (None for token data), kept so
    that an exported model can take raw inputs.
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
    standardisation: Standardisation | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_size(self) -> int:
        return int(torch.tensor(self.input_shape).prod().item())


@dataclass(frozen=True)
class Standardisation:
    """``x ↦ (x − mean) / std`` in float32: ``mean`` and ``std`` are scalars (images) or one value per
    feature (tables), broadcast over a batch of samples."""

    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) - self.mean) / self.std


def standardise(
    train: torch.Tensor, *others: torch.Tensor, per_feature: bool
) -> tuple[Standardisation, list[torch.Tensor]]:
    """Shift and scale every split by the training split's statistics; returns them and the splits.

    Images use one global mean/std (per-pixel statistics blow up rarely-lit border pixels);
    tabular data uses per-feature statistics, with constant features left centred at zero.
    """
    train = train.to(torch.float32)
    if per_feature:
        mean = train.mean(dim=0)
        std = train.std(dim=0)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
    else:
        mean = train.mean()
        std = train.std().clamp_min(1e-8)
    transform = Standardisation(mean, std)
    return transform, [transform(train), *(transform(t) for t in others)]
