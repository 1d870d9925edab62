"""The object a training loop talks to: masks + method + schedule, driven by ``step``/``end_epoch``.

Shaped like ``torch.optim``: build it once, call :meth:`Sparsifier.step` after every
``optimizer.step()`` and :meth:`Sparsifier.end_epoch` after every epoch, save it with
:meth:`Sparsifier.state_dict`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evosparse.backends.csr_model import (
    CsrTopology,
    build_csr_topology,
    check_backend,
    check_convertible,
    convert_to_csr,
)
from evosparse.backends.csr_ops import GradientTap
from evosparse.backends.layer_view import CsrLayerView, SparseLayerView, masked_views
from evosparse.distributed import TopologySync, current_context
from evosparse.errors import UsageError
from evosparse.methods import Method, get_method, resolve_params
from evosparse.topology.distributions import layer_budgets, layer_densities
from evosparse.topology.init import initialise_sparse_weights
from evosparse.topology.masks import Topology, find_sparse_parameters


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
        init: ``sparse_kaiming`` re-draws active weights with He-normal scaled by the active fan-in;
            ``keep`` keeps the model's own values (masked).
        total_steps: training length, needed when the method's ``update_until`` < 1.
        seed: seeds the generator used for masks, initialisation and random growth.
        backend: ``masked`` (dense weights times boolean masks) or ``csr`` (every sparse ``nn.Linear``
            becomes a :class:`~evosparse.backends.csr_layer.CsrLinear`, and the optimizer trains its
            ``values``; only methods with ``supports_csr``). Linear layers whose weights are on the
            ``meta`` device (a model built under ``torch.device("meta")``) are then drawn sparse
            directly, never dense (:mod:`evosparse.backends.csr_build`).
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
        method_cls = get_method(method)
        check_backend(method_cls, backend)
        self.backend = backend
        self.hparams = resolve_params(method_cls, params)
        if method_cls.evolves and self.hparams["update_until"] < 1.0 and total_steps is None:
            raise UsageError("update_until < 1 needs total_steps, the length of training")
        self.generator = torch.Generator().manual_seed(seed)
        self.model = model
        self.total_steps = total_steps
        self.global_step = 0
        self.epoch = 0
        self.stats = UpdateStats()
        found = find_sparse_parameters(model, include, exclude)
        if not found:
            raise UsageError("the model has no linear or convolution weight to sparsify")
        shapes = [getattr(module, attr).shape for _, module, attr in found]
        self.requested_density = density
        #: How a global density is split over the layers (methods that set their own budget use it too).
        self.distribution = distribution
        if method_cls.sparse and not method_cls.needs_budget:
            if epsilon is not None:
                raise UsageError(f"method {method} takes its budget from --density (or none), not --epsilon")
            self.target_densities = [density or 1.0] * len(shapes)
            self.target_budgets = [shape.numel() for shape in shapes]
        elif method_cls.sparse:
            if density is None and epsilon is None:
                raise UsageError(f"method {method} needs a density or an epsilon")
            spread = {"distribution": distribution, "density": density, "epsilon": epsilon}
            self.target_densities = layer_densities(shapes, **spread)
            self.target_budgets = layer_budgets(shapes, **spread)
        else:
            self.target_densities = [1.0] * len(shapes)
            self.target_budgets = [shape.numel() for shape in shapes]
        initial = [shape.numel() for shape in shapes] if method_cls.starts_dense else self.target_budgets
        # Weights on the meta device have no storage: the csr backend builds them sparse directly.
        direct = any(getattr(module, attr).is_meta for _, module, attr in found)
        if backend == "csr":
            check_convertible(found)
        elif direct:
            raise UsageError("the model's weights are on the meta device; only --backend csr can build them")
        self.topology: Topology | CsrTopology = CsrTopology([], optimizer)  # filled after the method's checks
        if not direct:
            self.topology = Topology.build(found, initial, self.generator, optimizer=optimizer)
        self.density_target: float | None = None
        if method_cls.sparse:
            total = sum(shape.numel() for shape in shapes)
            self.density_target = density if density is not None else sum(self.target_budgets) / total
        context = current_context()
        if context.active and backend == "csr":
            raise UsageError("--backend csr runs in one process; distributed training needs --backend masked")
        if context.active and not method_cls.supports_distributed:
            raise UsageError(
                f"method {method} trains modules of its own that DDP does not synchronise; run it in one process"
            )
        self.sync = TopologySync(context) if context.active else None
        self.method: Method = method_cls(self)  # validates its own settings before the model is touched
        if direct:
            self.topology = build_csr_topology(model, found, initial, init, self.generator, optimizer)
        elif method_cls.sparse:
            for layer in self.topology.layers:
                initialise_sparse_weights(layer, init, self.generator)
        if backend == "csr":
            self._start_csr(optimizer)
        else:
            self.views: list[SparseLayerView] = list(masked_views(self.topology))
            if method_cls.sparse:
                self.topology.install_gradient_hooks()
                if self.method.wants_gradients():
                    self.topology.gradient_observers.append(self.method.observe_gradient)
        self.method.attach()

    def _start_csr(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Convert the masked layers just built (unless built sparse directly) and give the method csr views."""
        if isinstance(self.topology, Topology):
            self.topology = convert_to_csr(self.model, self.topology)
        self.method.topology = self.topology  # type: ignore[assignment]
        self.views = [CsrLayerView(layer.module, optimizer) for layer in self.topology.layers]
        if self.method.wants_gradients():
            # Each backward pass leaves (x, grad_y) in the tap, from which the method reads dL/dW at
            # inactive positions when it updates; no dense gradient exists on this backend.
            for layer in self.topology.layers:
                layer.module.tap = GradientTap()

    # -- schedule -------------------------------------------------------------------------------

    def update_pending(self) -> bool:
        """Whether the coming optimizer step will be followed by a step-scheduled topology update.

        Gradient-driven methods use it to keep the dense gradient of that step only.
        """
        return self.method.sparse and self._update_due("step", self.global_step + 1, self.global_step + 1)

    def _update_due(self, unit: str, count: int, step: int) -> bool:
        """Whether the ``count``-th ``unit`` (ending at global ``step``) is followed by an update."""
        if not self.method.evolves or self.hparams["update_unit"] != unit:
            return False
        if count % self.hparams["update_interval"]:
            return False
        if self.total_steps is None:
            return True
        final = self.method.updates_after_final_epoch and step >= self.total_steps
        return final or step < self.hparams["update_until"] * self.total_steps

    def _update(self) -> None:
        started = time.perf_counter()
        before = [layer.mask.clone() for layer in self.topology.layers] if self.sync else []
        changed = self.method.update() if self.sync is None or self.sync.decides else 0
        if self.sync is not None:
            changed = self.sync.adopt_leader_topology(self.topology, before, changed)
        self.stats.updates += 1
        self.stats.connections_changed += changed
        self.stats.seconds += time.perf_counter() - started
        self.topology.check(fixed_budget=self.method.fixed_budget)

    # -- the training-loop interface ------------------------------------------------------------

    def step(self) -> None:
        """Call after every ``optimizer.step()``: re-applies masks and runs step-scheduled updates."""
        self.global_step += 1
        if not self.method.sparse:
            return
        self.topology.apply_masks()
        self.method.after_step()
        if self._update_due("step", self.global_step, self.global_step):
            self._update()

    def end_epoch(self) -> None:
        """Call after every epoch: runs epoch-scheduled updates (after the final one only where a method asks)."""
        self.epoch += 1
        if self.method.sparse and self._update_due("epoch", self.epoch, self.global_step):
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
            for layer, target in zip(self.topology.layers, self.target_densities)
        ]

    # -- persistence ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "hparams": dict(self.hparams),
            "masks": self.topology.state_dict(),
            "method_state": self.method.state_dict(),
            "global_step": self.global_step,
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks, method state, counters and the growth generator exactly."""
        if state.get("method") != self.method.name:
            raise UsageError(f"checkpoint was made with method {state.get('method')!r}, not {self.method.name!r}")
        if self.method.sparse:
            self.topology.load_state_dict(state["masks"])
        self.method.load_state_dict(state["method_state"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])

    def remove(self) -> None:
        """Detach every hook of the topology and the method (the masks stay applied to the weights)."""
        self.topology.remove_hooks()
        self.method.remove_hooks()


def sparsify(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, method: str = "set", **kwargs: Any
) -> Sparsifier:
    """Make ``model`` sparse and return the :class:`Sparsifier` that keeps and evolves it."""
    return Sparsifier(model, optimizer, method, **kwargs)
