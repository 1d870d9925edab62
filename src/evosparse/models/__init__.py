"""Model registry: a name maps to a builder taking the dataset's shape and the user's options."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from evosparse.errors import UsageError
from evosparse.models.cnn import SmallCNN
from evosparse.models.gpt import CharGPT
from evosparse.models.lenet import LeNet5
from evosparse.models.lstm import CharLSTM
from evosparse.models.mlp import MLP
from evosparse.models.resnet import resnet18_cifar
from evosparse.models.vae import VAE


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder needs: sample shape, classes, whether targets are sequences, user options.

    ``hidden`` is ``None`` when the user gave no sizes: each model then uses its paper default;
    ``heads`` (the gpt's attention heads) is ``None`` for its default, one head per 32 channels.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    sequence: bool = False
    hidden: tuple[int, ...] | None = None
    dropout: float = 0.0
    heads: int | None = None
    #: The gpt's token and position embeddings are sparse layers too.
    sparse_embeddings: bool = False


#: Hidden widths of the models that take a width list, used when ``--hidden`` is not given (the vae's
#: last entry is its latent size).
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {
    "mlp": (300, 100),
    "lstm": (512,),
    "gpt": (128, 128),
    "vae": (256, 10),
}
#: Trailing entries of a model's hidden list that are not layer widths (the vae's latent size); scaling
#: the widths leaves them alone.
UNSCALED_TAIL: dict[str, int] = {"vae": 1}


def _build_mlp(spec: ModelSpec) -> nn.Module:
    if spec.sequence:
        raise UsageError("model mlp classifies fixed-size samples; use --model lstm for text:PATH data")
    return MLP(math.prod(spec.input_shape), spec.hidden or DEFAULT_HIDDEN["mlp"], spec.num_classes, spec.dropout)


def _character_widths(name: str, spec: ModelSpec, parts: str) -> tuple[int, int]:
    """(width, count) of the ``parts`` (layers, blocks) of a character model, which share one width."""
    if not spec.sequence:
        raise UsageError(f"model {name} predicts the next character; use a text:PATH dataset")
    widths = spec.hidden or DEFAULT_HIDDEN[name]
    if len(set(widths)) != 1:
        raise UsageError(f"{name}: its {parts} share one width (one entry each), got {list(widths)}")
    return widths[0], len(widths)


def _build_lstm(spec: ModelSpec) -> nn.Module:
    width, layers = _character_widths("lstm", spec, "layers")
    return CharLSTM(spec.num_classes, width, layers, spec.dropout)


def _build_gpt(spec: ModelSpec) -> nn.Module:
    width, blocks = _character_widths("gpt", spec, "blocks")
    if spec.heads is not None and width % spec.heads:
        raise UsageError(f"gpt: width {width} is not divisible into {spec.heads} heads; choose --heads dividing it")
    return CharGPT(
        spec.num_classes, spec.input_shape[0], width, blocks, spec.dropout, spec.heads, spec.sparse_embeddings
    )


def _build_vae(spec: ModelSpec) -> nn.Module:
    if spec.sequence:
        raise UsageError("model vae reconstructs fixed-size samples; it cannot model text:PATH data")
    if spec.dropout:
        raise UsageError("model vae has no dropout; leave --dropout at 0")
    *hidden, latent = spec.hidden or DEFAULT_HIDDEN["vae"]
    return VAE(math.prod(spec.input_shape), hidden, latent)


def _image_shape(name: str, spec: ModelSpec) -> tuple[int, int]:
    """(channels, side) of square image samples, or a one-line error for other data."""
    shape = spec.input_shape
    if spec.sequence or len(shape) != 3 or shape[1] != shape[2]:
        raise UsageError(f"model {name} needs square images (channels, side, side); this dataset gives {shape}")
    return shape[0], shape[1]


def _build_lenet5(spec: ModelSpec) -> nn.Module:
    channels, side = _image_shape("lenet5", spec)
    return LeNet5(channels, spec.num_classes, side)


def _build_cnn(spec: ModelSpec) -> nn.Module:
    channels, side = _image_shape("cnn", spec)
    return SmallCNN(channels, spec.num_classes, side, fc_hidden=spec.hidden or ())


def _build_resnet18(spec: ModelSpec) -> nn.Module:
    channels, _ = _image_shape("resnet18", spec)
    return resnet18_cifar(spec.num_classes, in_channels=channels)


MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": _build_mlp,
    "lstm": _build_lstm,
    "gpt": _build_gpt,
    "lenet5": _build_lenet5,
    "cnn": _build_cnn,
    "resnet18": _build_resnet18,
    "vae": _build_vae,
}

#: Training settings a model needs other than TrainConfig's defaults (a setting given in a TOML file or on
#: the command line wins). The VAE diverges within 5 steps under SGD lr 0.05 with momentum 0.9 (its
#: decoder's logits explode); RMSProp at 1e-3 is the AWS paper's VAE setting (see the aws-vae preset).
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {"vae": {"optimizer": "rmsprop", "lr": 0.001}}

#: Models with convolutions: ERK is their default density distribution (RigL), ER for the others.
CONV_MODELS = frozenset({"lenet5", "cnn", "resnet18"})


def default_distribution(model: str) -> str:
    """The density distribution a run uses when none is given."""
    return "erk" if model in CONV_MODELS else "erdos_renyi"


def build_model(name: str, spec: ModelSpec) -> nn.Module:
    """Instantiate the registered model ``name`` for ``spec``."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    if spec.hidden is not None and any(h < 1 for h in spec.hidden):
        raise UsageError(f"hidden sizes must be positive, got {list(spec.hidden)}")
    if not 0.0 <= spec.dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {spec.dropout}")
    check_heads(name, spec.heads)
    check_sparse_embeddings(name, spec.sparse_embeddings)
    return MODELS[name](spec)


def check_heads(model: str, heads: int | None) -> None:
    """Refuse in one line a head count for a model without attention, or one below 1 (whether it divides
    the width is checked when the widths are known, by the gpt's builder)."""
    if heads is None:
        return
    if model != "gpt":
        raise UsageError(f"--heads sets the attention heads of --model gpt; model {model} has none")
    if heads < 1:
        raise UsageError(f"--heads must be at least 1, got {heads}")


def check_sparse_embeddings(model: str, sparse_embeddings: bool) -> None:
    """Refuse in one line ``--sparse-embeddings`` for a model without embedding tables."""
    if sparse_embeddings and model != "gpt":
        raise UsageError(f"--sparse-embeddings sparsifies the embeddings of --model gpt; model {model} has none")


def architecture_of(model: nn.Module) -> list[int]:
    """Layer widths when the model exposes them (``architecture``), else an empty list."""
    sizes: Sequence[int] = getattr(model, "architecture", [])
    return list(sizes)
