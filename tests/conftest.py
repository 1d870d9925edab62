"""Shared fixtures: small models and a fixed seed for every test."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def small_mlp(sizes: tuple[int, ...] = (20, 16, 12, 5)) -> nn.Sequential:
    """A ReLU MLP with the given widths (input first)."""
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@pytest.fixture
def mlp() -> nn.Sequential:
    return small_mlp()
