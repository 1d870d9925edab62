"""The masked backend: a model's own dense weight times a boolean mask, for every layer type.

:class:`MaskedLayer` implements the :class:`~evosparse.topology.layer.SparseLayer` protocol over a
parameter of any module (linear, convolution, LSTM matrices). It guarantees that

* masked weights are exactly zero after :meth:`MaskedLayer.apply_mask` (called after every optimizer
  step) and that their gradients are zero before the optimizer sees them (a gradient hook masks them,
  after showing the dense gradient to the recorder and the active-gradient hooks);
* :meth:`MaskedLayer.rewire` only prunes active positions, only grows inactive ones, never grows a
  position pruned in the same call, and resets every optimizer-state tensor shaped like the parameter
  (SGD momentum, Adam/AdamW moments, ...) at all changed positions.

This module also selects which parameters of a model become sparse (:func:`find_sparse_parameters`),
splits packed parameters into the matrices they hold (:func:`sparse_matrices`) and draws random masks
(:func:`random_mask`).
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from evosparse.errors import InvariantError, UsageError
from evosparse.topology.budget import fan_in_split
from evosparse.topology.init import check_init_scheme, sparse_kaiming_draws
from evosparse.topology.layer import ActiveGradientHook, SparseLayer, Topology, no_gradient_message

#: Module types whose weight is sparsified by default; their biases never are.
DEFAULT_SPARSE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Parameters of ``nn.MultiheadAttention`` sparsified by default: the packed query/key/value projection, or
#: the three separate ones it holds when keys or values have their own width (its output projection is an
#: ``nn.Linear`` and sparse by type).
ATTENTION_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: Modules that read a child linear layer's weight instead of calling the layer: ``nn.MultiheadAttention``
#: hands ``out_proj.weight`` to a functional kernel. Such a child's forward hooks never fire (methods that
#: read a layer's input cannot use it) and it cannot be replaced by a sparse linear module.
WEIGHT_READING_PARENTS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)
#: The matrices packed along the rows of ``nn.MultiheadAttention.in_proj_weight``, in order.
PACKED_PROJECTIONS = ("query", "key", "value")

#: Module types whose parameters are never sparsified, whatever a name pattern says.
NEVER_SPARSE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)
#: Module types whose weight is sparsified only when an include pattern names it on the module itself.
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding,)


def transposed_linear_types() -> tuple[type[nn.Module], ...]:
    """Linear layers that store their weight (in, out): ``transformers.pytorch_utils.Conv1D`` (GPT-2).

    Looked up where transformers is already imported (a model holding one has imported it), so
    evosparse never imports transformers itself.
    """
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return (conv1d,) if isinstance(conv1d, type) else ()


def output_axis(module: nn.Module, attr: str) -> int:
    """The axis of ``module``'s parameter ``attr`` that indexes output units (see ``SparseLayer.output_axis``):
    1 for a weight stored (in, out), as an embedding's (tokens, features) is."""
    return 1 if attr == "weight" and isinstance(module, transposed_linear_types() + EMBEDDING_TYPES) else 0


def find_sparse_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[tuple[str, nn.Module, str]]:
    """Select the parameters to sparsify, as ``(qualified name, owning module, attribute)``.

    By default the weight of every linear and convolution layer (``transformers``' ``Conv1D``
    included) and the query, key and value projections of ``nn.MultiheadAttention``. ``include`` adds parameters whose
    qualified name matches a glob pattern (e.g. ``"*.weight_hh_l0"`` for an LSTM); ``exclude`` removes
    matches. Parameters of normalisation layers and 1-D parameters (biases, gains) are never selected.
    An embedding's weight is selected only when ``include`` gives its exact name on the embedding
    (``"token.weight"``; a glob such as ``"*.weight"`` never selects it), never through another module
    sharing it: a language model's output layer tied to its token embedding stays dense unless the
    embedding itself is included. An ``nn.Embedding(sparse=True)`` is refused (its sparse gradient and
    optimizer state cannot be masked). Both are decided by type, not name.
    """
    include, exclude = list(include or []), list(exclude or [])
    chosen: list[tuple[str, nn.Module, str]] = []
    sparse_types = DEFAULT_SPARSE_TYPES + transposed_linear_types()

    def owned_by(types: tuple[type[nn.Module], ...]) -> set[int]:
        return {id(p) for module in model.modules() if isinstance(module, types) for p in module.parameters(False)}

    never, embedded = owned_by(NEVER_SPARSE_TYPES), owned_by(EMBEDDING_TYPES)
    for module_name, module in model.named_modules():
        if isinstance(module, NEVER_SPARSE_TYPES):
            continue
        for attr, param in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{attr}" if module_name else attr
            by_type = (isinstance(module, sparse_types) and attr == "weight") or (
                isinstance(module, nn.MultiheadAttention) and attr in ATTENTION_PROJECTIONS
            )
            by_name = any(fnmatch.fnmatchcase(qualified, p) for p in include)
            if id(param) in embedded:
                if not isinstance(module, EMBEDDING_TYPES):
                    continue  # a tied copy of an embedding: the embedding decides
                by_name = qualified in include
                if by_name and getattr(module, "sparse", False):
                    raise UsageError(
                        f"{qualified}: an nn.Embedding(sparse=True) cannot be kept sparse; use sparse=False"
                    )
            if not (by_type or by_name) or param.dim() < 2 or id(param) in never:
                continue
            if any(fnmatch.fnmatchcase(qualified, p) for p in exclude):
                continue
            chosen.append((qualified, module, attr))
    unmatched = [p for p in include if not any(fnmatch.fnmatchcase(q, p) for q, _, _ in chosen)]
    if unmatched:
        raise UsageError(
            f"include pattern {unmatched[0]!r} matches no sparsifiable parameter (≥2-D, not a norm's; an embedding's "
            "only by its exact name on the embedding)"
        )
    return chosen


@dataclass(frozen=True)
class SparseMatrix:
    """One matrix of a model that a sparse layer keeps sparse: a parameter (``rows`` None), or the block
    ``rows = (start, stop)`` of a parameter's rows when the parameter packs several matrices.

    ``name`` is the parameter's qualified name, with the matrix's name in brackets for a block
    (``"attn.in_proj_weight[key]"``); ``called`` is False for a weight its module's parent reads directly
    (``nn.MultiheadAttention.out_proj``): hooks on that module never see its input.
    """

    name: str
    module: nn.Module
    attr: str
    rows: tuple[int, int] | None = None
    #: Whether the module's own forward computes with the weight (False where a parent reads it).
    called: bool = True

    @property
    def parameter(self) -> nn.Parameter:
        return getattr(self.module, self.attr)

    @property
    def weight(self) -> Tensor:
        """The matrix itself: the parameter, or a view of its block of rows."""
        return self.parameter if self.rows is None else self.parameter[self.rows[0] : self.rows[1]]


def weight_read_by_parent(model: nn.Module, module_name: str) -> bool:
    """Whether the submodule ``module_name`` of ``model`` has a parent that reads its weight directly
    (:data:`WEIGHT_READING_PARENTS`) instead of calling it."""
    if not module_name:
        return False
    return isinstance(model.get_submodule(module_name.rpartition(".")[0]), WEIGHT_READING_PARENTS)


def sparse_matrices(model: nn.Module, found: Sequence[tuple[str, nn.Module, str]]) -> list[SparseMatrix]:
    """The matrices the parameters of :func:`find_sparse_parameters` (of ``model``) hold, one sparse layer each.

    ``nn.MultiheadAttention.in_proj_weight`` stacks the query, key and value projections along its rows
    ((3·E, E)); it is split into those three (E, E) matrices, so each has its own budget, its own random
    row cover and fan-in, and its own row in the per-layer report, as separate projections would.
    Every other parameter is one matrix. A matrix whose module is never called (its parent reads the
    weight) is marked ``called=False``.
    """
    matrices: list[SparseMatrix] = []
    for name, module, attr in found:
        if isinstance(module, nn.MultiheadAttention) and attr == "in_proj_weight":
            width = getattr(module, attr).shape[0] // len(PACKED_PROJECTIONS)
            matrices.extend(
                SparseMatrix(f"{name}[{part}]", module, attr, (index * width, (index + 1) * width))
                for index, part in enumerate(PACKED_PROJECTIONS)
            )
        else:
            called = not weight_read_by_parent(model, name.rpartition(".")[0])
            matrices.append(SparseMatrix(name, module, attr, called=called))
    return matrices


def random_mask(
    shape: Sequence[int], count: int, generator: torch.Generator, *, cover_rows: bool = True, output_axis: int = 0
) -> torch.Tensor:
    """A boolean mask with exactly ``count`` active entries, chosen uniformly at random.

    With ``cover_rows`` (and ``count`` ≥ output units) every output unit (index along ``output_axis``)
    first receives one random input, so no unit starts without inputs; the rest are placed uniformly
    among the free positions.
    """
    shape = tuple(int(s) for s in shape)
    if output_axis:
        units_first = (shape[output_axis], *shape[:output_axis], *shape[output_axis + 1 :])
        return random_mask(units_first, count, generator, cover_rows=cover_rows).movedim(0, output_axis).contiguous()
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


def largest_mask(weight: torch.Tensor, count: int, *, output_axis: int = 0) -> torch.Tensor:
    """A boolean mask of the ``count`` largest ``|weight|`` entries (ties: the lower flat position first).

    Every output unit (index along ``output_axis``) first keeps its largest input when ``count`` ≥
    output units, as :func:`random_mask` covers rows, so magnitude alone never leaves a unit without
    inputs; the rest are the largest of the remaining entries.
    """
    if output_axis:
        return largest_mask(weight.movedim(output_axis, 0), count).movedim(0, output_axis).contiguous()
    rows = weight.shape[0]
    if not 0 <= count <= weight.numel():
        raise UsageError(f"cannot place {count} connections in a {tuple(weight.shape)} weight")
    magnitude = weight.detach().abs().reshape(rows, -1).cpu()
    flat = torch.zeros(weight.numel(), dtype=torch.bool)
    placed = 0
    if count >= rows:
        flat[magnitude.argmax(dim=1) + torch.arange(rows) * magnitude.shape[1]] = True
        placed = rows
    remaining = magnitude.reshape(-1).masked_fill(flat, -1.0)
    order = torch.argsort(remaining, descending=True, stable=True)
    flat[order[: count - placed]] = True
    return flat.view(weight.shape)


def fan_in_mask(
    shape: Sequence[int],
    count: int,
    generator: torch.Generator,
    *,
    weight: torch.Tensor | None = None,
    output_axis: int = 0,
) -> torch.Tensor:
    """A boolean mask of ``count`` connections with a constant fan-in (SRigL's topology).

    Output unit u (index along ``output_axis``) gets ``fan_in_split(count, units)[u]`` inputs
    (:func:`~evosparse.topology.budget.fan_in_split`: k or k + 1): drawn uniformly at random, or, when
    ``weight`` is given, its largest ``|weight|`` entries (ties: the lower position first, as
    :func:`largest_mask`).
    """
    shape = tuple(int(s) for s in shape)
    if output_axis:
        units_first = (shape[output_axis], *shape[:output_axis], *shape[output_axis + 1 :])
        moved = None if weight is None else weight.movedim(output_axis, 0)
        return fan_in_mask(units_first, count, generator, weight=moved).movedim(0, output_axis).contiguous()
    total = math.prod(shape)
    if not 0 <= count <= total:
        raise UsageError(f"cannot place {count} connections in a {shape} weight")
    units = shape[0]
    if weight is None:
        scores = torch.rand(units, total // units, generator=generator)
    else:
        scores = weight.detach().abs().reshape(units, -1).cpu()
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    chosen = torch.arange(total // units).expand(units, -1) < fan_in_split(count, units).unsqueeze(1)
    mask = torch.zeros(units, total // units, dtype=torch.bool)
    mask.scatter_(1, order, chosen)
    return mask.view(shape)


class MaskedLayer(SparseLayer):
    """A parameter of ``module`` (attribute ``attr``) kept sparse by a boolean ``mask`` of its shape;
    ``output_axis`` is the axis indexing its output units (1 for a weight stored (in, out)). With ``rows =
    (start, stop)`` the layer is that block of the parameter's rows (one matrix of a packed parameter, see
    :func:`sparse_matrices`): its weight, gradient and optimizer state are the block's views, and its
    positions are numbered within the block.

    ``optimizer`` (if any) trains the parameter; its state is reset where connections change. The
    gradient hook that masks gradients is installed by :meth:`install_hooks` once the layer is in use.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        attr: str,
        mask: Tensor,
        budget: int,
        optimizer: torch.optim.Optimizer | None = None,
        output_axis: int = 0,
        *,
        rows: tuple[int, int] | None = None,
        called: bool = True,
    ) -> None:
        self.name = name
        self.output_axis = output_axis
        self._module = module
        self.attr = attr
        self.rows = rows
        self.called = called
        self._mask = mask
        self.budget = budget
        self.optimizer = optimizer
        self._recording = False
        self._recorded: Tensor | None = None
        self._active_hooks: OrderedDict[int, ActiveGradientHook] = OrderedDict()  # weak-referenceable
        self._mask_handle: RemovableHandle | None = None
        self._multiplier: Tensor | None = None
        self._multiplier_of: tuple[int, int, torch.dtype] | None = None

    # -- what it is -------------------------------------------------------------------------------

    @property
    def parameter(self) -> nn.Parameter:
        """The model's parameter this layer's weight is, or is a block of."""
        return getattr(self._module, self.attr)

    @property
    def weight(self) -> Tensor:
        """The sparse weight: the parameter, or (``rows``) a view of its block."""
        return self._block(self.parameter)

    def _block(self, tensor: Tensor) -> Tensor:
        """This layer's part of a tensor shaped like the parameter (its gradient, an optimizer slot)."""
        return tensor if self.rows is None else tensor[self.rows[0] : self.rows[1]]

    @property
    def parameter_name(self) -> str:
        return self.name if self.rows is None else self.name.rpartition("[")[0]

    @property
    def parameter_offset(self) -> int:
        return 0 if self.rows is None else self.rows[0] * (self.numel // self.shape[0])

    @property
    def mask(self) -> Tensor:
        """The boolean mask, on the weight's device: it follows the model when the model moves
        (``model.to("cuda")`` after ``sparsify``)."""
        device = self.weight.device
        if self._mask.device != device:
            self._mask = self._mask.to(device)
        return self._mask

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def is_linear(self) -> bool:
        """A linear layer whose forward computes with the weight: not one whose parent reads the weight
        directly (``called=False``), whose input a method's forward hook could never see."""
        return isinstance(self._module, nn.Linear) and self.attr == "weight" and self.called

    @property
    def active(self) -> int:
        return int(self.mask.sum().item())

    # -- topology ---------------------------------------------------------------------------------

    def active_positions(self) -> Tensor:
        return self.mask.reshape(-1).nonzero().squeeze(1)

    def active_values(self) -> Tensor:
        return self.weight.detach().reshape(-1)[self.mask.reshape(-1)]

    def contains(self, positions: Tensor) -> Tensor:
        return self.mask.reshape(-1)[positions.to(self.mask.device, torch.int64)]

    @torch.no_grad()
    def rewire(self, prune: Tensor, grow: Tensor, grow_values: Tensor | float = 0.0) -> int:
        flat_mask = self.mask.view(-1)
        prune = prune.to(flat_mask.device, torch.int64).reshape(-1)
        grow = grow.to(flat_mask.device, torch.int64).reshape(-1)
        values = torch.as_tensor(grow_values, dtype=self.weight.dtype).to(flat_mask.device).reshape(-1)
        numel = flat_mask.numel()
        if prune.numel() and (int(prune.min()) < 0 or int(prune.max()) >= numel):
            raise InvariantError(f"{self.name}: pruning an inactive connection (outside the weight)")
        if grow.numel() and (int(grow.min()) < 0 or int(grow.max()) >= numel):
            raise InvariantError(f"{self.name}: growing a position outside the weight")
        if values.numel() not in (1, grow.numel()):
            raise InvariantError(f"{self.name}: {values.numel()} grow values for {grow.numel()} grown positions")
        if prune.numel() and not bool(flat_mask[prune].all()):
            raise InvariantError(f"{self.name}: pruning an inactive connection")
        if grow.numel() and bool(flat_mask[grow].any()):
            raise InvariantError(f"{self.name}: growing an active connection")
        if prune.unique().numel() != prune.numel() or grow.unique().numel() != grow.numel():
            raise InvariantError(f"{self.name}: duplicate positions in a rewiring")
        flat_weight = self.weight.data.view(-1)
        flat_mask[prune] = False
        flat_weight[prune] = 0.0
        flat_mask[grow] = True
        flat_weight[grow] = values.expand(grow.numel()).to(flat_weight.device)
        self.reset_optimizer_state(torch.cat([prune, grow]))
        return int(prune.numel() + grow.numel())

    @torch.no_grad()
    def reset_optimizer_state(self, positions: Tensor) -> None:
        """Zero, at ``positions``, every optimizer-state tensor shaped like the parameter."""
        if self.optimizer is None or positions.numel() == 0:
            return
        parameter = self.parameter
        for value in self.optimizer.state.get(parameter, {}).values():
            if torch.is_tensor(value) and value.shape == parameter.shape:
                self._block(value).view(-1)[positions.to(value.device)] = 0

    def load_positions(self, positions: Tensor) -> None:
        mask = torch.zeros(self.numel, dtype=torch.bool, device=self.mask.device)
        mask[positions.to(self.mask.device, torch.int64)] = True
        self.mask.copy_(mask.view(self.mask.shape))

    @torch.no_grad()
    def apply_mask(self) -> None:
        self.weight.mul_(self.multiplier())

    def multiplier(self) -> Tensor:
        """The mask in the weight's dtype, what the weight and its gradient are multiplied by after every
        step: multiplying by a boolean mask promotes it on every call, about 7× slower on the CPU (300×784
        weight: 155 against 21 µs), which made a masked epoch cost 1.25× a dense one. Re-made whenever the
        mask changes in place (its version counter), moves (its storage) or the weight's dtype changes."""
        mask = self.mask
        key = (mask.data_ptr(), mask._version, self.weight.dtype)
        if self._multiplier is None or self._multiplier_of != key:
            self._multiplier, self._multiplier_of = mask.to(self.weight.dtype), key
        return self._multiplier

    @torch.no_grad()
    def initialise(self, scheme: str, generator: torch.Generator) -> None:
        """See :meth:`SparseLayer.initialise`; an embedding keeps its own values under ``sparse_kaiming``:
        its input is one-hot, so an output feature sees one weight per token, not a fan-in to scale by."""
        check_init_scheme(scheme)
        if scheme == "sparse_kaiming" and not isinstance(self._module, EMBEDDING_TYPES):
            self.weight.copy_(sparse_kaiming_draws(self, generator).to(self.device, self.dtype))
        self.apply_mask()

    # -- gradients --------------------------------------------------------------------------------

    def install_hooks(self) -> None:
        """Mask the gradient as it is accumulated, after recording it and showing it to the hooks."""
        if self._mask_handle is None:
            self._mask_handle = self.parameter.register_post_accumulate_grad_hook(self._on_gradient)

    def remove_hooks(self) -> None:
        if self._mask_handle is not None:
            self._mask_handle.remove()
            self._mask_handle = None

    def _on_gradient(self, param: Tensor) -> None:
        if param.grad is None:
            return
        grad = self._block(param.grad)
        if self._recording:
            self._recorded = grad.detach().clone()
        if self._active_hooks:
            at_active = grad.detach().reshape(-1)[self.mask.reshape(-1)]
            for hook in list(self._active_hooks.values()):
                hook(at_active)
        grad.mul_(self.multiplier())

    def record_gradients(self, enabled: bool) -> None:
        self._recording = enabled
        if not enabled:
            self._recorded = None

    def gradient_at(self, positions: Tensor) -> Tensor:
        if self._recorded is None:
            raise UsageError(no_gradient_message(self.name))
        return self._recorded.reshape(-1)[positions.to(self._recorded.device, torch.int64)]

    def forget_gradients(self) -> None:
        self._recorded = None

    def register_gradient_hook(self, hook: ActiveGradientHook) -> RemovableHandle:
        handle = RemovableHandle(self._active_hooks)
        self._active_hooks[handle.id] = hook
        return handle

    # -- invariants -------------------------------------------------------------------------------

    def check_storage(self) -> None:
        if self.mask.dtype != torch.bool or self.mask.device != self.weight.device:
            raise InvariantError(f"{self.name}: the mask is not a boolean tensor on the weight's device")
        if bool(self.weight.detach()[~self.mask].any()):
            raise InvariantError(f"{self.name}: masked weights are not zero")


def build_masked_topology(
    matrices: Sequence[SparseMatrix],
    budgets: Sequence[int],
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    by_magnitude: bool = False,
    constant_fan_in: bool = False,
) -> Topology:
    """Masks with the given per-layer budgets over the matrices of :func:`sparse_matrices`: random, or
    each weight's largest magnitudes (``by_magnitude``, :func:`largest_mask`); with ``constant_fan_in``
    spread evenly over the output units (:func:`fan_in_mask`), as SRigL starts.

    The weights are not touched: initialise and mask them once the masks are accepted.
    """
    if len(budgets) != len(matrices):
        raise UsageError(f"got {len(budgets)} budgets for {len(matrices)} sparse layers")
    layers = []
    for matrix, count in zip(matrices, budgets):
        weight, axis = matrix.weight, output_axis(matrix.module, matrix.attr)
        if constant_fan_in:
            chosen = fan_in_mask(
                weight.shape, count, generator, weight=weight if by_magnitude else None, output_axis=axis
            )
        elif by_magnitude:
            chosen = largest_mask(weight, count, output_axis=axis)
        else:
            chosen = random_mask(weight.shape, count, generator, output_axis=axis)
        layer = MaskedLayer(
            matrix.name,
            matrix.module,
            matrix.attr,
            chosen.to(weight.device),
            count,
            optimizer,
            axis,
            rows=matrix.rows,
            called=matrix.called,
        )
        layers.append(layer)
    return Topology(layers)
