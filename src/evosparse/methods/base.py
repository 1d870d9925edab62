"""What a sparse-training method is: declared parameters, hooks, and a topology update."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from evosparse.errors import UsageError
from evosparse.methods.context import MethodContext
from evosparse.topology.budget import BudgetRequest
from evosparse.topology.init import GROW_INITS, grown_weight_values
from evosparse.topology.layer import SparseLayer, positions_by_parameter

#: When a method reads gradients at inactive positions (``gradient_at``, ``inactive_gradient_blocks``):
#: never, from the backward pass of a step followed by an update, or from every step's (the last one
#: before an epoch-scheduled update, which a step cannot know in advance).
GradientRecording = Literal["never", "before_update", "every_step"]

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
    #: What runs made before this parameter existed did, where that is not ``default`` (a new default
    #: that changes behaviour): a saved configuration without the parameter is read as this value.
    legacy: bool | int | float | str | None = None
    #: The method's paper's value, where evosparse's default differs from it (a default measured better,
    #: see the method's notes); ``--param defaults=paper`` selects every such value at once.
    paper: bool | int | float | str | None = None

    @property
    def paper_value(self) -> bool | int | float | str:
        """The value under ``defaults=paper``: :attr:`paper` where given, else :attr:`default`."""
        return self.default if self.paper is None else self.paper

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


def grow_params(default: str, why: str = "", paper: str | None = None) -> tuple[Param, ...]:
    """How grown weights start (``grow_init``, one of ``GROW_INITS``; ``paper`` where the paper's differs)
    and their ``grow_std`` when normal."""
    return (
        Param(
            "grow_init",
            default,
            "initial value of grown weights" + (f" ({why})" if why else ""),
            choices=GROW_INITS,
            paper=paper,
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

    Lifecycle (driven by :class:`evosparse.Sparsifier`):

    1. ``__init__(context)``: validate the settings and build the method's own modules (it may draw from
       ``context.generator``). The layers exist but their weights are not initialised yet, and nothing
       of the model or optimizer may be touched here, so a refusal leaves them as they were.
    2. :meth:`attach`: the layers are initialised and in place; install hooks, add parameter groups.
    3. During training: :meth:`after_step` after every optimizer step, :meth:`update` when the schedule
       says so (returns how many connections changed). A method changes the topology only through
       ``layer.rewire``.

    The class attributes are facts the Sparsifier reads; a method never writes into the Sparsifier.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    params: ClassVar[tuple[Param, ...]] = ()
    #: ``False`` only for the dense baseline: no masks at all.
    sparse: ClassVar[bool] = True
    #: Whether the number of active connections per layer stays at its initial budget (an instance may
    #: narrow it from its parameters, e.g. AWS's stochastic mode).
    fixed_budget: bool = True
    #: Whether the topology changes during training.
    evolves: ClassVar[bool] = False
    #: Dense-to-sparse methods (GMP, pruning) start with every connection active and reach the
    #: requested density themselves; ``context.plan.budgets`` holds the per-layer goal. A method whose
    #: start depends on its parameters says so in :meth:`budget_request` (read by :meth:`starts_dense_with`).
    starts_dense: ClassVar[bool] = False
    #: ``False`` for methods that find their own density (the switcher): ``density`` is then optional and,
    #: when given, the method's budget.
    needs_budget: ClassVar[bool] = True
    #: ``False`` for methods that train modules of their own (skip layers, switchers) which DDP would not
    #: keep in sync across ranks.
    supports_distributed: ClassVar[bool] = True
    #: Whether the method runs on the csr backend (``--backend csr``). Methods written against the
    #: :class:`~evosparse.topology.layer.SparseLayer` protocol alone do; the switcher reads dense weights.
    supports_csr: ClassVar[bool] = True
    #: ``True`` for methods whose schedule is laid over the training length (RigL's cosine decay, GMP's cubic
    #: schedule, pruning's prune step): a resumed run must keep ``total_steps``.
    needs_total_steps: ClassVar[bool] = False
    #: ``True`` for methods whose update after the final epoch only settles what training reached (the
    #: switcher fixes its last gates as masks); other methods never change the evaluated final model.
    updates_after_final_epoch: ClassVar[bool] = False

    def __init__(self, context: MethodContext) -> None:
        self.context = context
        self.layers: tuple[SparseLayer, ...] = context.layers
        self.hparams: Mapping[str, Any] = context.hparams
        self.generator: torch.Generator = context.generator
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def budget_request(cls, hparams: Mapping[str, Any], density: float | None, epsilon: float | None) -> BudgetRequest:
        """What this method asks of the budget plan, given the run's ``density`` or ``epsilon``."""
        return BudgetRequest(
            cls.name, density, epsilon, sparse=cls.sparse, required=cls.needs_budget, starts_dense=cls.starts_dense
        )

    @classmethod
    def starts_dense_with(cls, hparams: Mapping[str, Any]) -> bool:
        """Whether a run with ``hparams`` starts with every connection active (what its budget request says:
        GMP and GraNet start dense or sparse by their ``initial_density``)."""
        return cls.budget_request(hparams, None, None).starts_dense

    @classmethod
    def starts_with_constant_fan_in(cls, hparams: Mapping[str, Any]) -> bool:
        """Whether, with ``hparams``, the initial topology gives every output unit k or k + 1 inputs
        (:func:`~evosparse.topology.masks.fan_in_mask`) on every backend: the methods that hold each unit's
        fan-in (SRigL, SET per neuron) start from one. A backend that stores a fixed number of slots per
        unit (``--backend condensed``) starts every method so."""
        return False

    @classmethod
    def keeps_fan_ins(cls, hparams: Mapping[str, Any]) -> bool:
        """Whether, with ``hparams``, every update keeps each output unit's number of inputs (or changes the
        fan-ins of a whole layer at once, as SRigL's ablation does), never moving connections between units
        at random: what a backend storing a fixed number of slots per unit needs (``--backend condensed``)."""
        return False

    def add_hook(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        """Keep a hook the method registered (on the model, a layer or a tensor) so ``remove_hooks`` can undo it."""
        self._hooks.append(handle)

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def fold_into_weights(self) -> None:
        """Make the model's own weights compute what the method's forward computed (before ``squash``).

        Nothing to do unless the method changes the forward pass (the switcher's gates).
        """

    def detach(self) -> None:
        """Undo :meth:`attach` when the Sparsifier stops driving the model: hooks (and, in methods that add
        them, parameter groups)."""
        self.remove_hooks()

    def grown_values(self, layer: SparseLayer, count: int) -> Tensor:
        """Starting values of ``count`` connections grown in ``layer``, by the method's ``grow_init``/``grow_std``."""
        return grown_weight_values(layer, count, self.hparams["grow_init"], self.generator, self.hparams["grow_std"])

    def attach(self) -> None:
        """Called once the sparse layers are initialised and in place: install hooks, add parameter groups."""

    def gradient_recording(self) -> GradientRecording:
        """Which backward passes the layers must record for :meth:`update` (see :data:`GradientRecording`)."""
        return "never"

    def after_step(self) -> None:
        """Called after every optimizer step, once the masks have been re-applied."""

    def update(self) -> int:
        """Evolve the topology; return the number of positions that changed."""
        return 0

    def log(self) -> list[dict[str, Any]]:
        """Per-update records worth keeping in result.json (e.g. time-varying parameter trajectories)."""
        return []

    def active_connections(self) -> int:
        """Sparsifiable weights the model computes with now: the layers' count, unless a method gates them."""
        return sum(layer.active for layer in self.layers)

    def export_model(self) -> tuple[nn.Module, dict[str, Tensor]]:
        """The model to export for inference and the active positions of its sparse weights by name."""
        return self.context.model, positions_by_parameter(self.layers)

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
    """Class decorator adding a method to the registry under its ``name``; a taken name is refused."""
    names = [p.name for p in cls.params]
    if len(names) != len(set(names)):
        raise UsageError(f"method {cls.name} declares a parameter twice")
    if DEFAULTS.name in names:
        raise UsageError(f"method {cls.name} declares {DEFAULTS.name!r}, which every method takes already")
    for param in cls.params:
        if param.paper is not None and not _accepts(param, param.paper):
            raise UsageError(f"method {cls.name}: the paper value {param.paper!r} of {param.name} is not one it takes")
    if cls.name in METHODS:
        raise UsageError(f"a method called {cls.name!r} is already registered ({METHODS[cls.name].__qualname__})")
    METHODS[cls.name] = cls
    return cls


def _accepts(param: Param, value: object) -> bool:
    """Whether ``value`` is a valid value of ``param`` as it is (of its type, in its bounds and choices)."""
    try:
        return param.parse(value) == value and type(value) is type(param.default)
    except UsageError:
        return False


def get_method(name: str) -> type[Method]:
    """The registered method called ``name``, or a one-line UsageError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


#: The override every method accepts besides its own parameters: which set of defaults the others start
#: from (``evosparse``: each parameter's ``default``; ``paper``: the method's paper's values).
DEFAULTS = Param(
    "defaults",
    "evosparse",
    "start every parameter not given from evosparse's defaults or from the method's paper's values",
    choices=("evosparse", "paper"),
)


def resolve_params(cls: type[Method], overrides: Mapping[str, object]) -> dict[str, Any]:
    """The method's defaults updated with validated ``overrides``; unknown keys are refused.

    ``defaults="paper"`` among the overrides starts from the paper's values (:attr:`Param.paper`) instead;
    the result holds concrete values only, so a run records what it used either way.
    """
    declared = {p.name: p for p in cls.params}
    overrides = dict(overrides)
    paper = DEFAULTS.parse(overrides.pop(DEFAULTS.name, DEFAULTS.default)) == "paper"
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        known = ", ".join([*declared, DEFAULTS.name])
        hint = "; METHOD.KEY names one method in compare and reproduce only" if "." in unknown[0] else ""
        raise UsageError(f"method {cls.name} has no parameter {unknown[0]!r} (parameters: {known}){hint}")
    values = {p.name: p.paper_value if paper else p.default for p in cls.params}
    values.update({key: declared[key].parse(raw) for key, raw in overrides.items()})
    return values
