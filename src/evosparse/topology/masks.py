"""Binary masks over a model's sparse parameters, and the invariants they must keep.

A :class:`Topology` owns one boolean mask per sparse parameter. It guarantees that

* masked weights are exactly zero after :meth:`Topology.apply_masks` (called after every optimizer
  step) and that their gradients are zero before the optimizer sees them;
* :meth:`Topology.rewire` only prunes active positions, only grows inactive ones, never grows a position
  pruned in the same call, and resets every optimizer-state tensor shaped like the parameter (SGD
  momentum, Adam/AdamW moments, ...) at all changed positions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evosparse.errors import UsageError

#: Module types whose weight is sparsified by default; their biases never are.
DEFAULT_SPARSE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Module types whose parameters are never sparsified, whatever a name pattern says.
NEVER_SPARSE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
)

GradientObserver = Callable[[int, torch.Tensor], None]


@dataclass
class SparseLayer:
    """One sparse parameter: where it lives, its mask and its connection budget."""

    name: str
    module: nn.Module
    attr: str
    mask: torch.Tensor
    budget: int

    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.module, self.attr)

    @property
    def shape(self) -> torch.Size:
        return self.mask.shape

    @property
    def numel(self) -> int:
        return self.mask.numel()

    @property
    def active(self) -> int:
        return int(self.mask.sum().item())

    @property
    def fan_out_axis_size(self) -> int:
        """Number of output units (rows of a linear weight, output channels of a conv)."""
        return int(self.mask.shape[0])


def find_sparse_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[tuple[str, nn.Module, str]]:
    """Select the parameters to sparsify, as ``(qualified name, owning module, attribute)``.

    By default the weight of every linear and convolution layer. ``include`` adds parameters whose
    qualified name matches a glob pattern (e.g. ``"*.weight_hh_l0"`` for an LSTM); ``exclude`` removes
    matches. Parameters of normalisation layers and embeddings, and 1-D parameters (biases, gains),
    are never selected: this is decided by type, not by name.
    """
    include, exclude = list(include or []), list(exclude or [])
    chosen: list[tuple[str, nn.Module, str]] = []
    for module_name, module in model.named_modules():
        if isinstance(module, NEVER_SPARSE_TYPES):
            continue
        for attr, param in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{attr}" if module_name else attr
            by_type = isinstance(module, DEFAULT_SPARSE_TYPES) and attr == "weight"
            by_name = any(fnmatch.fnmatchcase(qualified, p) for p in include)
            if not (by_type or by_name) or param.dim() < 2:
                continue
            if any(fnmatch.fnmatchcase(qualified, p) for p in exclude):
                continue
            chosen.append((qualified, module, attr))
    unmatched = [p for p in include if not any(fnmatch.fnmatchcase(q, p) for q, _, _ in chosen)]
    if unmatched:
        raise UsageError(f"include pattern {unmatched[0]!r} matches no sparsifiable (≥2-D, non-norm) parameter")
    return chosen


def random_mask(
    shape: Sequence[int], count: int, generator: torch.Generator, *, cover_rows: bool = True
) -> torch.Tensor:
    """A boolean mask with exactly ``count`` active entries, chosen uniformly at random.

    With ``cover_rows`` (and ``count`` ≥ rows) every output unit (row) first receives one random
    input, so no unit starts without inputs; the rest are placed uniformly among the free positions.
    """
    shape = tuple(int(s) for s in shape)
    total = int(torch.tensor(shape).prod().item())
    if not 0 <= count <= total:
        raise UsageError(f"cannot place {count} connections in a {shape} weight")
    rows = shape[0]
    row_size = total // rows
    flat = torch.zeros(total, dtype=torch.bool)
    placed = 0
    if cover_rows and count >= rows:
        first = torch.randint(row_size, (rows,), generator=generator) + torch.arange(rows) * row_size
        flat[first] = True
        placed = rows
    free = (~flat).nonzero().squeeze(1)
    pick = free[torch.randperm(free.numel(), generator=generator)[: count - placed]]
    flat[pick] = True
    return flat.view(shape)


class LayerCounts:
    """Connection counts over ``self.layers`` (anything with ``numel`` and ``active``), for both backends."""

    layers: Sequence[Any]

    @property
    def total(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def active(self) -> int:
        return sum(layer.active for layer in self.layers)

    def density(self) -> float:
        return self.active / self.total


class Topology(LayerCounts):
    """The masks of a model's sparse parameters, and the only code that changes them."""

    def __init__(self, layers: list[SparseLayer], optimizer: torch.optim.Optimizer | None = None) -> None:
        self.layers = layers
        self.optimizer = optimizer
        self.gradient_observers: list[GradientObserver] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def build(
        cls,
        found: Sequence[tuple[str, nn.Module, str]],
        budgets: Sequence[int],
        generator: torch.Generator,
        *,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Topology:
        """Random masks with the given per-layer budgets over parameters from :func:`find_sparse_parameters`.

        The weights are not touched: call :meth:`apply_masks` once the masks are accepted.
        """
        if len(budgets) != len(found):
            raise UsageError(f"got {len(budgets)} budgets for {len(found)} sparse layers")
        layers = []
        for (name, module, attr), count in zip(found, budgets):
            weight = getattr(module, attr)
            mask = random_mask(weight.shape, count, generator).to(weight.device)
            layers.append(SparseLayer(name, module, attr, mask, count))
        return cls(layers, optimizer)

    # -- invariants ---------------------------------------------------------------------------

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked weight (cheap; called after each optimizer step)."""
        for layer in self.layers:
            layer.weight.mul_(layer.mask)

    def install_gradient_hooks(self) -> None:
        """Mask gradients as they are accumulated, after showing them to the gradient observers.

        Observers see the *dense* gradient, so gradient-driven growth needs no second backward pass.
        """
        self.remove_hooks()
        for index, layer in enumerate(self.layers):
            self._hooks.append(layer.weight.register_post_accumulate_grad_hook(self._grad_hook(index)))

    def _grad_hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if param.grad is None:
                return
            for observer in self.gradient_observers:
                observer(index, param.grad)
            param.grad.mul_(self.layers[index].mask)

        return hook

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def check(self, *, fixed_budget: bool = True) -> None:
        """Assert the invariants: masked weights zero, exact budgets, masks on the weight's device."""
        for layer in self.layers:
            weight = layer.weight
            assert layer.mask.dtype == torch.bool and layer.mask.device == weight.device, layer.name
            assert not weight.detach()[~layer.mask].any(), f"{layer.name}: masked weights are not zero"
            if fixed_budget:
                assert layer.active == layer.budget, f"{layer.name}: {layer.active} active != budget {layer.budget}"

    # -- change ---------------------------------------------------------------------------------

    @torch.no_grad()
    def rewire(
        self,
        index: int,
        prune: torch.Tensor,
        grow: torch.Tensor,
        grow_values: torch.Tensor | float = 0.0,
    ) -> int:
        """Deactivate flat positions ``prune`` and activate ``grow``; return the number changed.

        ``prune`` must be active and ``grow`` inactive *before* the call (so a connection pruned now is
        never regrown in the same update), both without duplicates. Pruned weights become 0, grown
        ones ``grow_values``; optimizer state is reset at both sets.
        """
        layer = self.layers[index]
        flat_mask = layer.mask.view(-1)
        prune = prune.to(flat_mask.device, torch.long)
        grow = grow.to(flat_mask.device, torch.long)
        if prune.numel() and not flat_mask[prune].all():
            raise AssertionError(f"{layer.name}: pruning an inactive connection")
        if grow.numel() and flat_mask[grow].any():
            raise AssertionError(f"{layer.name}: growing an active connection")
        if prune.unique().numel() != prune.numel() or grow.unique().numel() != grow.numel():
            raise AssertionError(f"{layer.name}: duplicate positions in a rewiring")
        flat_weight = layer.weight.data.view(-1)
        flat_mask[prune] = False
        flat_weight[prune] = 0.0
        flat_mask[grow] = True
        flat_weight[grow] = torch.as_tensor(grow_values, dtype=flat_weight.dtype, device=flat_weight.device)
        self.reset_optimizer_state(index, torch.cat([prune, grow]))
        return int(prune.numel() + grow.numel())

    @torch.no_grad()
    def reset_optimizer_state(self, index: int, positions: torch.Tensor) -> None:
        """Zero, at ``positions``, every optimizer-state tensor shaped like the parameter."""
        if self.optimizer is None or positions.numel() == 0:
            return
        weight = self.layers[index].weight
        for value in self.optimizer.state.get(weight, {}).values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                value.view(-1)[positions.to(value.device)] = 0

    # -- persistence ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {layer.name: layer.mask.clone() for layer in self.layers}

    def load_state_dict(self, masks: dict[str, torch.Tensor]) -> None:
        """Restore saved masks; refuse any mismatch instead of guessing masks from zeros."""
        names = [layer.name for layer in self.layers]
        if sorted(masks) != sorted(names):
            missing = sorted(set(names) - set(masks)) or sorted(set(masks) - set(names))
            raise UsageError(f"saved masks do not match the model's sparse layers (first mismatch: {missing[0]})")
        for layer in self.layers:
            saved = masks[layer.name]
            if saved.shape != layer.shape or saved.dtype != torch.bool:
                raise UsageError(
                    f"saved mask for {layer.name} has shape {tuple(saved.shape)}, expected {tuple(layer.shape)}"
                )
            layer.mask.copy_(saved.to(layer.mask.device))
            layer.budget = int(saved.sum().item())
        self.apply_masks()
