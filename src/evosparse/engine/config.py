"""A training run's configuration: defaults, overridden by a TOML file, overridden by CLI flags.

Every value is validated here, so that bad input fails before any work with one line (exit 2).
"""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evosparse.backends.registry import BACKENDS
from evosparse.data import check_context
from evosparse.data.subset import check_fraction
from evosparse.data.validation import DEFAULT_VAL_FRACTION, check_val_fraction
from evosparse.engine.lr_schedule import check_schedule
from evosparse.engine.precision import PRECISIONS
from evosparse.engine.width_scaling import AUTO_MODES, parse_width_scale
from evosparse.errors import UsageError
from evosparse.methods import get_method, resolve_params
from evosparse.models import MODELS, TRAINING_DEFAULTS, check_heads, check_sparse_embeddings, default_distribution
from evosparse.sparsifier import check_backend
from evosparse.topology.distributions import DISTRIBUTIONS
from evosparse.topology.init import INIT_SCHEMES

OPTIMIZERS = ("sgd", "adam", "rmsprop")
#: Seeds per method of a comparison (``compare --seeds``) unless told otherwise.
DEFAULT_SEEDS = 3
#: ``auto``: CUDA where a GPU is present, else the CPU (see :func:`device_type`).
DEVICES = ("auto", "cpu", "cuda")


def device_type(name: str) -> str:
    """The device type ``--device name`` trains on here: ``auto`` becomes ``cuda`` or ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@dataclass
class TrainConfig:
    """Everything that determines a training run (and nothing that merely displays it)."""

    method: str = "set"
    params: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    target: str | None = None
    data_dir: str | None = None
    model: str = "mlp"
    hidden: list[int] | None = None
    #: ``auto-wide``, ``auto-small`` or a factor (as text) for the hidden widths; see ``width_scaling``.
    width_scale: str | None = None
    dropout: float = 0.0
    #: Attention heads of ``--model gpt`` (None: one per 32 channels; see ``models.gpt.default_heads``).
    heads: int | None = None
    #: Characters per window of a ``text:PATH`` dataset (None: ``data.text.SEQ_LEN``).
    context: int | None = None
    #: The gpt's token and position embeddings are sparse layers too.
    sparse_embeddings: bool = False
    density: float | None = None
    epsilon: float | None = None
    distribution: str | None = None
    init: str = "sparse_kaiming"
    #: Run folder whose final masks a ``static`` run holds fixed (AWS Section 5.1); see ``fixed_topology``.
    fixed_topology_from: str | None = None
    sparsify: str = "all"
    augment: bool = False
    train_fraction: float = 1.0
    #: Share of the training split held out for model selection (a dataset's own split when it ships one).
    val_fraction: float = DEFAULT_VAL_FRACTION
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.05
    #: ``constant``, ``cosine`` or ``step`` (see ``lr_schedule``), after ``warmup_epochs`` of linear warm-up.
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    #: ``step``: the epochs after which the rate is multiplied by ``lr_gamma`` (default 0.1).
    lr_milestones: list[int] | None = None
    lr_gamma: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    seed: int = 0
    backend: str = "masked"
    device: str = "auto"
    #: ``fp32``, or ``bf16``: forward passes under bfloat16 autocast (see ``precision``).
    precision: str = "fp32"
    #: Compile the model's training forward pass with ``torch.compile`` (see ``compilation``).
    compile: bool = False
    out: str | None = None
    snapshots: bool = True

    #: Used when neither density nor epsilon is given.
    DEFAULT_DENSITY = 0.1

    def output_folder(self) -> Path:
        """``out``, or a new time-stamped folder under ``runs/`` so repeated runs never collide."""
        if self.out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.out = f"runs/{self.method}-{self.dataset.replace(':', '_').replace('/', '_')}-seed{self.seed}-{stamp}"
        return Path(self.out)

    @property
    def effective_distribution(self) -> str:
        """``distribution``, or the model's default (ERK for conv models, Erdős–Rényi otherwise)."""
        return self.distribution or default_distribution(self.model)

    @property
    def effective_density(self) -> float | None:
        """``density``, or the default when the method needs a budget and none was given."""
        if self.density is None and self.epsilon is None and get_method(self.method).needs_budget:
            return self.DEFAULT_DENSITY
        return self.density

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
#: Names of the configuration fields (a saved config may hold others, from older or newer versions).
CONFIG_FIELDS = frozenset(_FIELD_TYPES)


#: What a run used for a setting its checkpoint does not record, where that differs from today's default:
#: runs made before ``val_fraction`` existed had no validation split.
LEGACY_VALUES: dict[str, Any] = {"val_fraction": 0.0}

#: Settings naming folders: a finished run that was moved (with its sources) still matches its config.
LOCATION_KEYS = ("out", "fixed_topology_from")


def config_difference(
    saved: Mapping[str, Any], config: TrainConfig, ignore: Sequence[str] = ()
) -> tuple[str, Any, Any] | None:
    """The first setting where a checkpoint's saved config differs from ``config``, or ``None``.

    A key missing from ``saved`` (a checkpoint written before that setting existed) counts as what such
    a run used: the setting's default, or its :data:`LEGACY_VALUES` entry; the same holds for a method
    parameter missing from the saved ``params`` (its ``legacy`` value where the default changed
    behaviour). Devices are compared as they resolve here (:func:`device_type`), so ``auto`` matches
    the device it stands for; where a saved ``auto`` ran is recorded in the checkpoint itself and
    checked on resume.
    """
    defaults = {**TrainConfig().to_dict(), **LEGACY_VALUES}
    for key, value in config.to_dict().items():
        before = saved.get(key, defaults[key])
        if key == "params" and isinstance(before, Mapping) and saved.get("method") == config.method:
            method = get_method(config.method)
            legacy = {param.name: param.legacy for param in method.params if param.legacy is not None}
            before = {**resolve_params(method, {}), **legacy, **before}
        if key == "device" and isinstance(before, str) and device_type(before) == device_type(value):
            continue
        if key not in ignore and before != value:
            return key, before, value
    return None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML configuration file, turning every failure into a one-line UsageError."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read config file {path}: {getattr(error, 'strerror', None) or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {path} is not valid TOML: {error}") from None


def parse_param_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``["zeta=0.2", ...]`` into a dict; the method's declared types convert the values later."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_positive_ints(value: object, what: str) -> list[int]:
    """Positive integers from ``"300,100"`` or a TOML list; ``what`` names them in the one-line refusal."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise UsageError(f"{what} must be a comma-separated list of integers, got {value!r}")
    try:
        sizes = [int(str(item).strip()) for item in items]
    except ValueError:
        raise UsageError(f"{what} must be integers, got {value!r}") from None
    if any(size < 1 for size in sizes):
        raise UsageError(f"{what} must be positive, got {value!r}")
    return sizes


def parse_hidden(value: object) -> list[int]:
    """Hidden sizes from ``"300,100"`` or a TOML list."""
    return parse_positive_ints(value, "hidden sizes")


def _coerce_field(name: str, value: object) -> Any:
    """Check a TOML/CLI value against the field's declared type."""
    kind = _FIELD_TYPES[name]
    if name == "hidden":
        return None if value is None else parse_hidden(value)
    if name == "lr_milestones":
        return None if value is None else parse_positive_ints(value, "lr milestones")
    if name == "width_scale":
        return None if value is None else parse_width_scale(value)
    if name == "params":
        if not isinstance(value, Mapping):
            raise UsageError("params must be a table of method parameters")
        return dict(value)
    if value is None:
        if "None" not in kind:
            raise UsageError(f"{name} needs a value")
        return None
    if kind.startswith("int") and not isinstance(value, bool) and isinstance(value, int):
        return value
    if kind.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    if kind.startswith("bool") and isinstance(value, bool):
        return value
    if kind.startswith("str") and isinstance(value, str):
        return value
    raise UsageError(f"{name} has the wrong type: {value!r}")


def build_config(
    toml_path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    param_pairs: Sequence[str] = (),
) -> TrainConfig:
    """Defaults ← the model's own defaults (:data:`~evosparse.models.TRAINING_DEFAULTS`) ← TOML file ←
    explicit CLI values (``None`` means not given) ← ``--param`` pairs."""
    values: dict[str, Any] = {}
    if toml_path is not None:
        values.update(read_toml(toml_path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values = {**TRAINING_DEFAULTS.get(str(values.get("model", TrainConfig.model)), {}), **values}
    if values.get("fixed_topology_from") is not None:
        values.setdefault("method", "static")  # a fixed topology trains with static's semantics
    unknown = sorted(set(values) - set(_FIELD_TYPES))
    if unknown:
        raise UsageError(f"unknown configuration key {unknown[0]!r}")
    config = TrainConfig(**{k: _coerce_field(k, v) for k, v in values.items()})
    config.params = {**config.params, **parse_param_pairs(param_pairs)}
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise a one-line UsageError for the first invalid value; resolve method parameters in place."""
    method_cls = get_method(config.method)
    config.params = resolve_params(method_cls, config.params)
    if config.model not in MODELS:
        raise UsageError(f"unknown model {config.model!r}; choose one of {', '.join(sorted(MODELS))}")
    check_heads(config.model, config.heads)
    check_sparse_embeddings(config.model, config.sparse_embeddings)
    check_context(config.dataset, config.context)
    if config.density is not None and config.epsilon is not None:
        raise UsageError("give either --density or --epsilon, not both")
    if config.density is not None and not (0.0 < config.density <= 1.0):
        raise UsageError(f"density must be in (0, 1], got {config.density}")
    if config.epsilon is not None and not (config.epsilon > 0 and math.isfinite(config.epsilon)):
        raise UsageError(f"epsilon must be positive, got {config.epsilon}")
    if config.distribution is not None:
        _check_choice("distribution", config.distribution, DISTRIBUTIONS)
    _check_choice("sparsify", config.sparsify, ("all", "fc", "conv"))
    _check_choice("init", config.init, INIT_SCHEMES)
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    _check_choice("backend", config.backend, BACKENDS)
    check_backend(method_cls, config.backend, config.params)
    _check_choice("device", config.device, DEVICES)
    _check_choice("precision", config.precision, PRECISIONS)
    check_fraction(config.train_fraction)
    check_val_fraction(config.val_fraction)
    if config.epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {config.epochs}")
    if config.batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {config.batch_size}")
    for name in ("lr", "momentum", "weight_decay", "dropout"):
        value = getattr(config, name)
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{name} must be a non-negative number, got {value}")
    if config.lr == 0:
        raise UsageError("lr must be positive")
    check_schedule(
        config.lr_schedule,
        epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        milestones=config.lr_milestones,
        gamma=config.lr_gamma,
    )
    if not config.dropout < 1:
        raise UsageError(f"dropout must be below 1, got {config.dropout}")
    if config.nesterov and (config.optimizer != "sgd" or config.momentum == 0):
        raise UsageError("nesterov needs --optimizer sgd with a positive momentum")
    if config.fixed_topology_from is not None and (config.method != "static" or config.backend != "masked"):
        raise UsageError(
            "--fixed-topology-from trains with --method static on --backend masked, "
            f"not --method {config.method} on --backend {config.backend}"
        )
    if config.width_scale in AUTO_MODES and config.method != "dense":
        raise UsageError(f"--width-scale {config.width_scale} sizes a dense baseline: use it with --method dense")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
