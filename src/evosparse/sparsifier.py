"""The object a training loop talks to: sparse layers + method + schedule, driven by ``step``/``end_epoch``.

Shaped like ``torch.optim`` and ``torch.ao.pruning``: build it once (:func:`sparsify`), call
:meth:`Sparsifier.step` after every ``optimizer.step()`` and :meth:`Sparsifier.end_epoch` after every
epoch, save it with :meth:`Sparsifier.state_dict`, and end with :meth:`Sparsifier.squash` (a plain
model with the zeros baked in) or :meth:`Sparsifier.remove` (stop driving it).

Building one runs this lifecycle (docs/design.md has the picture):

1. validate the arguments and the method's parameters; plan the per-layer budgets
   (:func:`~evosparse.topology.budget.plan_budget`);
2. draw each sparse layer's topology on the chosen backend — nothing of the model is touched yet;
3. construct the method on a :class:`~evosparse.methods.context.MethodContext` (it may still refuse);
4. initialise the weights over the topology and put the layers in place (csr modules into the model
   and the optimizer, gradient hooks); then the method's ``attach``.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evosparse.backends.csr_model import (
    build_csr_direct,
    check_replaceable,
    install_linears,
    linear_twins,
    squash_linears,
)
from evosparse.backends.registry import BACKENDS, CONSTANT_FAN_IN_BACKENDS, LINEAR_BACKENDS
from evosparse.criteria.schedules import update_due
from evosparse.distributed import TopologySync, current_context
from evosparse.errors import UsageError
from evosparse.methods import Method, get_method, resolve_params
from evosparse.methods.context import Clock, MethodContext
from evosparse.topology.budget import BudgetPlan, plan_budget
from evosparse.topology.distributions import DISTRIBUTIONS
from evosparse.topology.init import check_init_scheme
from evosparse.topology.layer import Topology, check_saved_topology
from evosparse.topology.masks import SparseMatrix, build_masked_topology, find_sparse_parameters, sparse_matrices

#: Version of :meth:`Sparsifier.state_dict`'s layout; a state of another version is refused.
STATE_FORMAT_VERSION = 2

#: Modules (models and the modules of their sparse layers) -> the Sparsifier driving them. A claim ends
#: with ``remove()``/``squash()`` only: the Sparsifier's hooks stay on the model until then, even when
#: the caller drops it, so a second Sparsifier would fight them.
_CLAIMS: weakref.WeakKeyDictionary[nn.Module, Sparsifier] = weakref.WeakKeyDictionary()


@dataclass
class LayerReport:
    """Target vs actual density of one sparse layer."""

    name: str
    shape: tuple[int, ...]
    target_density: float
    active: int
    numel: int

    @property
    def density(self) -> float:
        return self.active / self.numel


@dataclass
class UpdateStats:
    """Topology work accumulated since the last :meth:`Sparsifier.take_stats`."""

    updates: int = 0
    connections_changed: int = 0
    seconds: float = 0.0


class Sparsifier:
    """Keeps a model sparse and evolves its topology with a registered method.

    Args:
        model: any ``nn.Module``; the weights of its linear and conv layers (plus ``include`` patterns)
            become sparse.
        optimizer: the optimizer training ``model``; its state is reset where connections change.
        method: a registered method name (see ``evosparse methods``).
        density: global fraction of active connections, split by ``distribution``; or
        epsilon: SET's ε (Erdős–Rényi per layer).
        init: ``sparse_kaiming`` (default) re-draws the active weights with He-normal scaled by the active
            fan-in, which suits training from scratch; ``keep`` keeps the model's own values under a random
            topology; ``keep_largest`` keeps them and starts each layer from its largest magnitudes (every
            output unit keeping its largest input): use it for a pretrained model.
        total_steps: training length, needed when the method's ``update_until`` < 1 and by methods with
            schedules over training (RigL, GMP, pruning).
        seed: seeds the generator used for masks, initialisation and every random choice of the method.
        backend: ``masked`` (dense weights times boolean masks), ``csr`` (every sparse ``nn.Linear``
            becomes a :class:`~evosparse.backends.csr_layer.CsrLinear`, and the optimizer trains its
            ``values``; linear layers whose weights are on the ``meta`` device (a model built under
            ``torch.device("meta")``) are then drawn sparse directly, never dense) or ``condensed``
            (every sparse ``nn.Linear`` becomes a
            :class:`~evosparse.backends.condensed_layer.CondensedLinear`, its values (out, k_max) per-unit
            slots; the topology starts from a constant fan-in, and only methods that keep fan-ins run).
        params: method parameters (see :func:`evosparse.methods.resolve_params`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        method: str = "set",
        *,
        density: float | None = None,
        epsilon: float | None = None,
        distribution: str = "erdos_renyi",
        init: str = "sparse_kaiming",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        total_steps: int | None = None,
        seed: int = 0,
        backend: str = "masked",
        **params: Any,
    ) -> None:
        _check_arguments(model, optimizer, method, density, epsilon, distribution, init, total_steps, seed, backend)
        method_cls = get_method(method)
        self.backend = backend
        self.hparams = resolve_params(method_cls, params)
        check_backend(method_cls, backend, self.hparams)
        if method_cls.evolves and self.hparams["update_until"] < 1.0 and total_steps is None:
            raise UsageError("update_until < 1 needs total_steps, the length of training")
        found = find_sparse_parameters(model, include, exclude)
        _check_unclaimed(model)
        if not found:
            raise UsageError("the model has no linear or convolution weight to sparsify")
        matrices = sparse_matrices(model, found)
        shapes = [tuple(matrix.weight.shape) for matrix in matrices]
        self.plan: BudgetPlan = plan_budget(
            shapes, distribution, method_cls.budget_request(self.hparams, density, epsilon)
        )
        self.sync = _distributed_sync(method_cls, backend)
        self.model = model
        self.optimizer = optimizer
        self.generator = torch.Generator().manual_seed(seed)
        self.clock = Clock(total_steps=total_steps)
        self.stats = UpdateStats()
        #: Counts the events that may change a layer's active count (updates, loads), for cost meters.
        self.topology_version = 0
        self.released = self.squashed = False
        built_directly = any(getattr(module, attr).is_meta for _, module, attr in found)
        self.topology = self._draw_topology(found, matrices, init, built_directly, method_cls)
        context = MethodContext(
            layers=self.topology.layers,
            hparams=self.hparams,
            generator=self.generator,
            model=model,
            optimizer=optimizer,
            plan=self.plan,
            clock=self.clock,
            update_pending=self.update_pending,
        )
        self.method: Method = method_cls(context)  # may still refuse: nothing of the model is touched yet
        self._install(found, init, built_directly)
        self.method.attach()
        self._arm_gradient_recording()
        for module in [model, *(layer.module for layer in self.topology.layers)]:
            _CLAIMS[module] = self

    def _draw_topology(
        self,
        found: Sequence[tuple[str, nn.Module, str]],
        matrices: Sequence[SparseMatrix],
        init: str,
        built_directly: bool,
        method_cls: type[Method],
    ) -> Topology:
        """Step 2 of the lifecycle: every layer's random topology, on the run's backend, the model untouched.

        ``found`` are the sparse parameters, ``matrices`` the matrices they hold (a layer each; the sparse
        linear backends convert whole ``nn.Linear`` weights, so for them the two are the same).
        ``built_directly``: the weights are on the meta device, so csr layers are drawn sparse directly;
        A method starting with a constant fan-in (:meth:`~evosparse.methods.base.Method.starts_with_constant_fan_in`)
        or a backend of :data:`CONSTANT_FAN_IN_BACKENDS`: the budgets are spread evenly over each layer's output
        units."""
        constant_fan_in = method_cls.starts_with_constant_fan_in(self.hparams)
        if self.backend in LINEAR_BACKENDS:
            check_replaceable(self.model, found, self.backend)
        if built_directly:
            if self.backend != "csr":
                raise UsageError("the model's weights are on the meta device; only --backend csr can build them")
            return build_csr_direct(
                self.model, found, self.plan.initial, init, self.generator, self.optimizer, constant_fan_in
            )
        masked = build_masked_topology(
            matrices,
            self.plan.initial,
            self.generator,
            self.optimizer,
            by_magnitude=init == "keep_largest",
            constant_fan_in=constant_fan_in or self.backend in CONSTANT_FAN_IN_BACKENDS,
        )
        make = LINEAR_BACKENDS.get(self.backend)
        return masked if make is None else linear_twins(masked, self.optimizer, self.backend, make)

    def _install(self, found: Sequence[tuple[str, nn.Module, str]], init: str, built_directly: bool) -> None:
        """Step 4: initialise the weights over the topology (drawn already when built directly) and put the
        layers in place."""
        if self.method.sparse and not built_directly:
            for layer in self.topology.layers:
                layer.initialise(init, self.generator)
        if self.backend in LINEAR_BACKENDS:
            install_linears(self.model, found, self.topology, self.optimizer)
        if self.method.sparse:
            for layer in self.topology.layers:
                layer.install_hooks()

    # -- schedule -------------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        return self.clock.step

    @property
    def epoch(self) -> int:
        return self.clock.epoch

    @property
    def total_steps(self) -> int | None:
        return self.clock.total_steps

    @property
    def density_target(self) -> float | None:
        """The run's global target density (None: dense, or a method without a budget)."""
        return self.plan.density

    def update_pending(self) -> bool:
        """Whether the coming optimizer step will be followed by a step-scheduled topology update."""
        return self.method.sparse and self._update_due("step", self.clock.step + 1, self.clock.step + 1)

    def _update_due(self, unit: str, count: int, step: int, planned: int | None = None) -> bool:
        """Whether the ``count``-th ``unit`` (ending at global ``step``) is followed by an update, in a training
        of ``planned`` steps (default: this Sparsifier's ``total_steps``)."""
        if not self.method.evolves or self.hparams["update_unit"] != unit:
            return False
        h = self.hparams
        total = self.clock.total_steps if planned is None else planned
        final = self.method.updates_after_final_epoch
        return update_due(count, h["update_interval"], step, h["update_until"], total, final=final)

    def records_dense_gradient(self) -> bool:
        """Whether the coming backward pass records the dense weight gradient, as the method needs it."""
        need = self.method.gradient_recording()
        return self.method.sparse and (need == "every_step" or (need == "before_update" and self.update_pending()))

    def _arm_gradient_recording(self) -> None:
        """Tell the layers whether to record the coming backward pass."""
        record = self.records_dense_gradient()
        for layer in self.topology.layers:
            layer.record_gradients(record)

    def _update(self) -> None:
        started = time.perf_counter()
        if self.sync is None:
            changed = self.method.update()
        else:
            changed = self.sync.run_update(self.topology.layers, self.method.update)
        self.stats.updates += 1
        self.topology_version += 1
        self.stats.connections_changed += changed
        self.stats.seconds += time.perf_counter() - started
        self.topology.check(fixed_budget=self.method.fixed_budget)

    # -- the training-loop interface ------------------------------------------------------------

    def _check_driving(self, action: str) -> None:
        if self.released:
            raise UsageError(f"this Sparsifier was removed or squashed and drives the model no more; cannot {action}")

    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-applies masks and runs step-scheduled updates."""
        self._check_driving("step")
        self.clock.step += 1
        if not self.method.sparse:
            return
        self.topology.apply_masks()
        self.method.after_step()
        if self._update_due("step", self.clock.step, self.clock.step):
            self._update()
        self._arm_gradient_recording()

    def end_epoch(self) -> None:
        """Call after every epoch: runs epoch-scheduled updates (after the final one only where a method asks)."""
        self._check_driving("end an epoch")
        self.clock.epoch += 1
        if self.method.sparse and self._update_due("epoch", self.clock.epoch, self.clock.step):
            self._update()

    def take_stats(self) -> UpdateStats:
        """Return and reset the topology work done since the previous call."""
        stats, self.stats = self.stats, UpdateStats()
        return stats

    # -- reporting ------------------------------------------------------------------------------

    def density(self) -> float:
        """Fraction of the sparsifiable weights that are active (for gating methods: non-zero gates)."""
        return self.active_connections() / self.topology.total

    def active_connections(self) -> int:
        """Number of sparsifiable weights the model computes with now."""
        return self.method.active_connections()

    def layer_reports(self) -> list[LayerReport]:
        return [
            LayerReport(layer.name, tuple(layer.shape), target, layer.active, layer.numel)
            for layer, target in zip(self.topology.layers, self.plan.densities)
        ]

    # -- persistence ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs, with a format version; topology as active positions on every backend."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "method": self.method.name,
            "hparams": dict(self.hparams),
            "plan": {"density": self.plan.density, "budgets": list(self.plan.budgets)},
            "total_steps": self.clock.total_steps,
            "topology": self.topology.state_dict(),
            "method_state": self.method.state_dict(),
            "global_step": self.clock.step,
            "epoch": self.clock.epoch,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore topology, method state, counters and the generator exactly; refuse in one line a state
        of another format, method, parameters or budget, or one that is malformed.

        A state saved at the end of a shorter training (its ``total_steps`` reached) may be loaded into a
        Sparsifier planned longer — training is extended — unless a schedule of the method spans the
        planned length (``needs_total_steps``, ``update_until`` < 1). The topology update that the old
        end skipped (the last step or epoch of a run is followed by none) then runs here, so the run
        goes on exactly as one planned this long from the start.

        On the csr backend the layers' structure comes with the model's ``state_dict``: load that first.
        """
        self._check_driving("load a state")
        self._check_state(state)
        catch_up = self._skipped_update_due(state)
        if catch_up and self.method.gradient_recording() != "never":
            raise UsageError(
                f"{self.method.name} needs the gradients recorded before the update that the saved run's end "
                "skipped, and a state holds none: its training cannot be extended; start a longer run"
            )
        before = self.state_dict()
        if self.method.sparse:
            self.topology.load_state_dict(state["topology"])
        try:
            self.method.load_state_dict(state["method_state"])
        except Exception as error:  # all or nothing: no weight was touched yet
            if self.method.sparse:
                self.topology.load_state_dict(before["topology"])
            self.method.load_state_dict(before["method_state"])
            if isinstance(error, UsageError):
                raise
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            raise UsageError(
                f"sparsifier state's method state does not fit method {self.method.name} ({reason})"
            ) from None
        if self.method.sparse:
            self.topology.apply_masks()
        self.clock.step = int(state["global_step"])
        self.clock.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])
        self.topology_version += 1
        if catch_up:
            self._update()
        self._arm_gradient_recording()

    def _skipped_update_due(self, state: Mapping[str, Any]) -> bool:
        """Whether ``state`` ends a shorter plan whose last step or epoch skipped an update that this
        Sparsifier's longer plan makes due (see :meth:`load_state_dict`)."""
        step, epoch, saved_total = state["global_step"], state["epoch"], state["total_steps"]
        total = self.clock.total_steps
        if not self.method.sparse or saved_total is None or total is None or step != saved_total or total <= step:
            return False
        unit, count = ("step", step) if self.hparams.get("update_unit") == "step" else ("epoch", epoch)
        return not self._update_due(unit, count, step, saved_total) and self._update_due(unit, count, step)

    def adopt_topology(self, saved: Mapping[str, Any], init: str) -> None:
        """Start from another run's topology (``state_dict()["topology"]`` of a run of the same model and
        budget): rewire every layer to it, then re-draw the weights over it with ``init``."""
        self._check_driving("adopt a topology")
        check_saved_topology(saved, self.topology.layers)
        for layer in self.topology.layers:
            layer.adopt_positions(saved[layer.name]["positions"])
            layer.initialise(init, self.generator)
        self.topology_version += 1

    def _check_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise UsageError(f"a sparsifier state is a mapping, got {type(state).__name__}")
        version = state.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise UsageError(
                f"sparsifier state has format version {version}, this evosparse reads {STATE_FORMAT_VERSION} "
                "(saved by another release?)"
            )
        expected = (
            "method", "hparams", "plan", "total_steps", "topology", "method_state", "global_step", "epoch", "generator"
        )  # fmt: skip
        missing = [key for key in expected if key not in state]
        if missing:
            raise UsageError(f"sparsifier state lacks {missing[0]!r}")
        if state["method"] != self.method.name:
            raise UsageError(f"sparsifier state was saved by method {state['method']!r}, not {self.method.name!r}")
        saved = state["hparams"]
        if not isinstance(saved, Mapping):
            raise UsageError(f"sparsifier state's hparams is not a mapping: {saved!r}"[:160])
        # A parameter added since the state was saved counts as what such runs did (its legacy value or default).
        before = {param.name: param.default if param.legacy is None else param.legacy for param in self.method.params}
        for key, value in self.hparams.items():
            if saved.get(key, before.get(key)) != value:
                raise UsageError(f"sparsifier state was saved with {key}={saved.get(key)!r}, this one has {value!r}")
        plan = state["plan"] if isinstance(state["plan"], Mapping) else {}
        if plan.get("density") != self.plan.density or list(plan.get("budgets", ())) != list(self.plan.budgets):
            raise UsageError(
                f"sparsifier state was saved with density {plan.get('density')} and budgets {plan.get('budgets')}, "
                f"this one has density {self.plan.density} and budgets {list(self.plan.budgets)}"
            )
        for key in ("global_step", "epoch"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
                raise UsageError(f"sparsifier state's {key} is not a count: {state[key]!r}")
        schedule_over_training = self.method.needs_total_steps or self.hparams.get("update_until", 1.0) < 1.0
        if schedule_over_training and state["total_steps"] != self.clock.total_steps:
            raise UsageError(
                f"sparsifier state was saved with total_steps={state['total_steps']}, this one has "
                f"{self.clock.total_steps} (schedules over training would shift)"
            )
        try:
            torch.Generator().set_state(state["generator"])
        except (TypeError, RuntimeError):
            raise UsageError("sparsifier state's generator is not a generator state") from None

    # -- the end --------------------------------------------------------------------------------

    def remove(self) -> None:
        """Stop driving the model: detach every hook of the layers and the method, and what the method added
        to the optimizer (the zeros stay in place).

        A masked model may then be sparsified again; a csr model holds csr layers until :meth:`squash`.
        Calling it again does nothing; the Sparsifier refuses to step, load or adopt afterwards.
        """
        if self.released:
            return
        for layer in self.topology.layers:
            layer.record_gradients(False)
            layer.remove_hooks()
        self.method.detach()
        for module in [self.model, *(layer.module for layer in self.topology.layers)]:
            _CLAIMS.pop(module, None)
        self.released = True

    def squash(self) -> nn.Module:
        """Make the model a plain ``nn.Module`` computing what the sparse model computed, and :meth:`remove`.

        Like ``torch.ao.pruning``'s ``squash_mask``: masked layers already hold their zeros; a method that
        gates its weights (the switcher) folds its gates into them; csr and condensed layers are replaced by
        ``nn.Linear`` layers (in the model and in the optimizer's param groups). Returns the model; only the
        first call changes it.
        """
        if self.squashed:
            return self.model
        if not self.released:  # once removed, the model computes with its own weights already
            self.method.fold_into_weights()
        self.remove()
        if self.backend in LINEAR_BACKENDS:
            squash_linears(self.model, self.topology, self.optimizer)
        self.squashed = True
        return self.model


def sparsify(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, method: str = "set", **kwargs: Any
) -> Sparsifier:
    """Make ``model`` sparse and return the :class:`Sparsifier` that keeps and evolves it."""
    return Sparsifier(model, optimizer, method, **kwargs)


def _check_arguments(
    model: object,
    optimizer: object,
    method: object,
    density: object,
    epsilon: object,
    distribution: object,
    init: object,
    total_steps: object,
    seed: object,
    backend: object,
) -> None:
    """Refuse arguments of the wrong type or outside their choices with one line each."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"model must be an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if not isinstance(method, str):
        raise UsageError(f"method must be a method name (str), got {type(method).__name__}")
    for name, value in (("density", density), ("epsilon", epsilon)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UsageError(f"{name} must be a number, got {value!r}")
        if isinstance(value, int | float) and not math.isfinite(value):
            raise UsageError(f"{name} must be finite, got {value!r}")
    if distribution not in DISTRIBUTIONS:
        raise UsageError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    check_init_scheme(init)
    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
    ):
        raise UsageError(f"total_steps must be a positive integer, got {total_steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    uninitialised = next((m for m in model.modules() if isinstance(m, nn.modules.lazy.LazyModuleMixin)), None)
    if uninitialised is not None and uninitialised.has_uninitialized_params():
        raise UsageError(
            f"the model has an uninitialised lazy module ({type(uninitialised).__name__}): run one forward pass "
            "before sparsify()"
        )


def check_backend(method_cls: type[Method], backend: str, hparams: Mapping[str, Any]) -> None:
    """Refuse, in one line, a sparse-linear backend for a method that trains dense weights or reads them, and
    the condensed backend for a method (with ``hparams``) that moves connections between output units."""
    if backend not in LINEAR_BACKENDS:
        return
    if not method_cls.sparse:
        raise UsageError(f"method {method_cls.name} trains dense weights; --backend {backend} needs a sparse method")
    if not method_cls.supports_csr:
        raise UsageError(
            f"method {method_cls.name} has no {backend} implementation (it reads the dense weights of the masked "
            "backend); use --backend masked"
        )
    if method_cls.starts_dense_with(hparams):
        hint = " (or initial_density below 1)" if "initial_density" in hparams else ""
        raise UsageError(
            f"method {method_cls.name} starts dense; --backend {backend} holds sparse layers only: use --backend "
            f"masked{hint}"
        )
    if backend in CONSTANT_FAN_IN_BACKENDS and not method_cls.keeps_fan_ins(hparams):
        raise UsageError(
            f"method {method_cls.name} changes fan-ins per layer, not per neuron; --backend {backend} needs static, "
            "srigl or set with per_neuron=true"
        )


def _check_unclaimed(model: nn.Module) -> None:
    """Refuse to sparsify a model (or a layer) that a live Sparsifier already drives."""
    if any(module in _CLAIMS for module in model.modules()):
        raise UsageError("this model is already sparsified by another Sparsifier; call its squash() or remove() first")


def _distributed_sync(method_cls: type[Method], backend: str) -> TopologySync | None:
    """The topology synchronisation of a distributed run (None in one process); refuse what DDP cannot do."""
    context = current_context()
    if not context.active:
        return None
    if backend in LINEAR_BACKENDS:
        raise UsageError(f"--backend {backend} runs in one process; distributed training needs --backend masked")
    if not method_cls.supports_distributed:
        raise UsageError(
            f"method {method_cls.name} trains modules of its own that DDP does not synchronise; run it in one process"
        )
    return TopologySync(context)
