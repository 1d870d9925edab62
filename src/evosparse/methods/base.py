"""What a sparse-training method is: declared parameters, hooks, and a topology update."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from evosparse.errors import UsageError
from evosparse.topology.init import GROW_INITS, grown_weight_values
from evosparse.topology.masks import Topology

if TYPE_CHECKING:
    from evosparse.backends.layer_view import SparseLayerView
    from evosparse.sparsifier import Sparsifier

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Param:
    """A method parameter: its default (which fixes its type), bounds and one-line help."""

    name: str
    default: bool | int | float | str
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def type_name(self) -> str:
        return type(self.default).__name__

    def parse(self, raw: object) -> bool | int | float | str:
        """Convert a CLI string or TOML value to this parameter's type, or raise a one-line UsageError."""
        kind = type(self.default)
        try:
            value = self._coerce(kind, raw)
        except (TypeError, ValueError):
            raise UsageError(f"parameter {self.name} expects {self.type_name}, got {raw!r}") from None
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"parameter {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"parameter {self.name} must be finite, got {value}")
        if self.minimum is not None and value < self.minimum:  # type: ignore[operator]
            raise UsageError(f"parameter {self.name} must be ≥ {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:  # type: ignore[operator]
            raise UsageError(f"parameter {self.name} must be ≤ {self.maximum}, got {value}")
        return value

    @staticmethod
    def _coerce(kind: type, raw: object) -> bool | int | float | str:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip())
        return str(raw)


#: Parameters shared by every method that evolves its topology on a schedule.
SCHEDULE_PARAMS: tuple[Param, ...] = (
    Param(
        "update_unit",
        "epoch",
        "update the topology at the end of every N epochs or every N steps",
        choices=("epoch", "step"),
    ),
    Param("update_interval", 1, "N: how many epochs or steps between topology updates", minimum=1),
    Param(
        "update_until", 1.0, "stop updating after this fraction of training (RigL's T_end)", minimum=0.0, maximum=1.0
    ),
)


def grow_params(default: str, why: str = "") -> tuple[Param, ...]:
    """How grown weights start (``grow_init``, one of ``GROW_INITS``) and their ``grow_std`` when normal."""
    return (
        Param(
            "grow_init", default, "initial value of grown weights" + (f" ({why})" if why else ""), choices=GROW_INITS
        ),
        Param("grow_std", 0.01, "standard deviation of grown weights when grow_init=normal", minimum=0.0),
    )


def step_schedule(interval_help: str, until_help: str, interval: int = 100, until: float = 0.75) -> tuple[Param, ...]:
    """Schedule parameters of methods that act on optimizer steps only (RigL, GMP)."""
    return (
        Param("update_unit", "step", "this method acts every N optimizer steps", choices=("step",)),
        Param("update_interval", interval, interval_help, minimum=1),
        Param("update_until", until, until_help, minimum=0.0, maximum=1.0),
    )


class Method:
    """Base class of a sparse-training method; subclasses register with :func:`register`.

    A method sees the :class:`Topology` and changes it only through ``Topology.rewire``. The hooks
    are called by :class:`evosparse.Sparsifier`: ``observe_gradient`` for every sparse layer's dense
    gradient (only when ``wants_gradients()``), ``after_step`` after each optimizer step, and
    ``update`` when the schedule says so; ``update`` returns how many connections it changed.
    ``self.sparsifier`` gives the clock (``global_step``, ``epoch``, ``total_steps``,
    ``update_pending()``), the model and the optimizer (``topology.optimizer``).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    #: ``False`` only for the dense baseline: no masks at all.
    sparse: ClassVar[bool] = True
    #: Whether the number of active connections per layer stays at its initial budget.
    fixed_budget: ClassVar[bool] = True
    #: Whether the topology changes during training.
    evolves: ClassVar[bool] = False
    #: Dense-to-sparse methods (GMP, pruning) start with every connection active and reach the
    #: requested density themselves; ``Sparsifier.target_budgets`` holds the per-layer goal.
    starts_dense: ClassVar[bool] = False
    #: ``False`` for methods that find their own density (the switcher): ``density`` is then optional and,
    #: when given, the method's budget (``Sparsifier.requested_density``).
    needs_budget: ClassVar[bool] = True
    #: ``False`` for methods that train modules of their own (skip layers, switchers) which DDP would not
    #: keep in sync across ranks.
    supports_distributed: ClassVar[bool] = True
    #: Whether the method runs on the csr backend (``--backend csr``), written against ``SparseLayerView``.
    supports_csr: ClassVar[bool] = False
    #: ``True`` for methods whose update after the final epoch only settles what training reached (the
    #: switcher fixes its last gates as masks); other methods never change the evaluated final model.
    updates_after_final_epoch: ClassVar[bool] = False

    def __init__(self, sparsifier: Sparsifier) -> None:
        self.sparsifier = sparsifier
        self.topology: Topology = sparsifier.topology
        self.hparams: dict[str, Any] = dict(sparsifier.hparams)
        self.generator: torch.Generator = sparsifier.generator
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def add_hook(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        """Keep a hook the method registered (on the model or a tensor) so ``remove_hooks`` can undo it."""
        self._hooks.append(handle)

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def grown_values(self, view: SparseLayerView, count: int) -> torch.Tensor:
        """Starting values of ``count`` connections grown in ``view``, by the method's ``grow_init``/``grow_std``."""
        return grown_weight_values(
            view,  # type: ignore[arg-type]  # reads only ``active`` and ``fan_out_axis_size``
            count,
            self.hparams["grow_init"],
            self.generator,
            self.hparams["grow_std"],
        )

    def attach(self) -> None:
        """Called once the sparse layers are final (csr layers in place): install hooks on the layers here.

        Methods are constructed before the csr backend replaces the layers (so that a method refusing
        its settings leaves the model untouched); hooks put on the layers in ``__init__`` would be lost.
        """

    def wants_gradients(self) -> bool:
        return False

    def observe_gradient(self, index: int, grad: torch.Tensor) -> None:
        """Receive the dense gradient of sparse layer ``index`` (before it is masked)."""

    def after_step(self) -> None:
        """Called after every optimizer step, once the masks have been re-applied."""

    def update(self) -> int:
        """Evolve the topology; return the number of mask positions that changed."""
        return 0

    def log(self) -> list[dict[str, Any]]:
        """Per-update records worth keeping in result.json (e.g. time-varying parameter trajectories)."""
        return []

    def active_connections(self) -> int:
        """Sparsifiable weights the model computes with now: the masks' count, unless a method gates them."""
        return self.topology.active

    def export_model(self) -> tuple[nn.Module, dict[str, torch.Tensor] | None]:
        """The model to export for inference and the masks of its sparse weights (None: csr layers hold theirs)."""
        masks = self.topology.state_dict() if self.sparsifier.backend == "masked" else None
        return self.sparsifier.model, masks

    def extra_parameters(self) -> int:
        """Parameters the method adds for training only (LiSET's skip layers, switcher networks)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise UsageError(f"method {self.name} has no state, but the checkpoint holds some")


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under its ``name``."""
    names = [p.name for p in cls.params]
    assert len(names) == len(set(names)), f"{cls.name}: duplicate parameter names"
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The registered method called ``name``, or a one-line UsageError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


def resolve_params(cls: type[Method], overrides: Mapping[str, object]) -> dict[str, Any]:
    """The method's defaults updated with validated ``overrides``; unknown keys are refused."""
    declared = {p.name: p for p in cls.params}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        raise UsageError(f"method {cls.name} has no parameter {unknown[0]!r} (parameters: {known})")
    values = {p.name: p.default for p in cls.params}
    values.update({key: declared[key].parse(raw) for key, raw in overrides.items()})
    return values
