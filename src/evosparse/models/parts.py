"""Which weights form the fully connected part of a model and which the convolutional part.

The Path-Weight and switcher papers sparsify only the fully connected layers of conv nets; other
setups sparsify every layer or only the convolutions. The part is decided by module type, so it
works for any model, and only weight matrices/kernels are named (never biases or norm parameters).
"""

from __future__ import annotations

from torch import nn

from evosparse.errors import UsageError

#: Module types whose ``weight`` belongs to each part of a model.
PART_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "fc": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
}
PART_TYPES["all"] = PART_TYPES["fc"] + PART_TYPES["conv"]


def select_layers(model: nn.Module, part: str) -> list[str]:
    """Qualified names (``"features.0.weight"``) of the weights in ``part`` of ``model``, in module order.

    ``part`` is ``"fc"`` (linear layers), ``"conv"`` (convolutions) or ``"all"`` (both).
    """
    if part not in PART_TYPES:
        raise UsageError(f"unknown layer part {part!r}; choose one of {', '.join(sorted(PART_TYPES))}")
    types = PART_TYPES[part]
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, types) and isinstance(getattr(module, "weight", None), nn.Parameter)
    ]


def excluded_layers(model: nn.Module, sparsify: str) -> list[str]:
    """Weights left dense by ``--sparsify fc`` (the convolutions) or ``--sparsify conv`` (the linear layers)."""
    if sparsify not in PART_TYPES:
        raise UsageError(f"unknown layer part {sparsify!r}; choose one of {', '.join(sorted(PART_TYPES))}")
    return {"all": [], "fc": select_layers(model, "conv"), "conv": select_layers(model, "fc")}[sparsify]
