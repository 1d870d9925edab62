"""Model registry: a name maps to a builder taking the dataset's shape and the user's options."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from evosparse.errors import UsageError
from evosparse.models.mlp import MLP


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder needs to know: sample shape, classes, hidden sizes, dropout."""

    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (300, 100)
    dropout: float = 0.0


def _build_mlp(spec: ModelSpec) -> nn.Module:
    input_size = 1
    for size in spec.input_shape:
        input_size *= size
    return MLP(input_size, spec.hidden, spec.num_classes, spec.dropout)


MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {"mlp": _build_mlp}


def build_model(name: str, spec: ModelSpec) -> nn.Module:
    """Instantiate the registered model ``name`` for ``spec``."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    if any(h < 1 for h in spec.hidden):
        raise UsageError(f"hidden sizes must be positive, got {list(spec.hidden)}")
    if not 0.0 <= spec.dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {spec.dropout}")
    return MODELS[name](spec)


def architecture_of(model: nn.Module) -> list[int]:
    """Layer widths when the model exposes them (``MLP.architecture``), else an empty list."""
    sizes: Sequence[int] = getattr(model, "architecture", [])
    return list(sizes)
