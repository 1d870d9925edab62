"""The autograd function of a sparse linear layer y = x Wᵀ + b, shared by the truly sparse layouts.

The csr and condensed layouts store W differently and compute its three products with different
kernels, but take the same steps around them: both work on transposed activations (xᵀ, made contiguous
once, is what the forward reads and what the value gradient reads again; grad_yᵀ likewise), keep only
what the requested gradients need, and hand xᵀ and grad_yᵀ to a gradient tap for growth. That skeleton
is :class:`SparseLinearFunction`; a layout supplies its kernels as a :class:`SparseLinearKernels`.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from evosparse.errors import UsageError

Structure = TypeVar("Structure", contravariant=True)


class SparseLinearKernels(Protocol[Structure]):
    """The products of one sparse layout, all on transposed activations (x_t is (in, batch), grad_y_t
    (out, batch), ``values`` the layout's stored weights)."""

    def forward(self, x_t: Tensor, values: Tensor, bias: Tensor | None, structure: Structure) -> Tensor:
        """y (batch, out) = x Wᵀ + b. Not a view made here: autograd forbids in-place changes
        (ReLU(inplace=True)) of views created inside a custom Function."""
        ...

    def input_gradient_t(self, values: Tensor, grad_y_t: Tensor, structure: Structure) -> Tensor:
        """grad_xᵀ (in, batch) = Wᵀ grad_yᵀ."""
        ...

    def value_gradient(self, x_t: Tensor, grad_y_t: Tensor, structure: Structure) -> Tensor:
        """∂L/∂values, shaped like ``values``: Σ_b grad_yᵀ[o, b] · xᵀ[i, b] at each stored connection (o, i)."""
        ...


class GradientRecorder(Protocol):
    """Receives xᵀ and grad_yᵀ during backward (a :class:`~evosparse.backends.csr_ops.GradientTap`)."""

    def record(self, x_t: Tensor, grad_y_t: Tensor) -> None: ...


class SparseLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b for a 2-D x (batch, in); W given by ``values`` in ``structure``, computed by ``kernels``.

    ``apply(x, values, bias, structure, tap, kernels)``: ``bias`` and ``tap`` may be None. xᵀ is kept
    for backward only when the value gradient or the tap needs it, ``values`` only when the input
    gradient does.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        values: Tensor,
        bias: Tensor | None,
        structure: object,
        tap: GradientRecorder | None,
        kernels: SparseLinearKernels[Any],
    ) -> Tensor:
        x_t = x.t().contiguous()
        y = kernels.forward(x_t, values, bias, structure)
        needs_x, needs_values = ctx.needs_input_grad[:2]
        keep_x_t = needs_values or tap is not None
        ctx.save_for_backward(x_t if keep_x_t else None, values if needs_x else None)
        ctx.structure, ctx.tap, ctx.kernels = structure, tap, kernels
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x_t, values = ctx.saved_tensors
        needs_x, needs_values, needs_bias = ctx.needs_input_grad[:3]
        grad_y_t = grad_y.t().contiguous()
        grad_x = grad_values = grad_bias = None
        if needs_x:
            grad_x = ctx.kernels.input_gradient_t(values, grad_y_t, ctx.structure).t()
        if needs_values:
            grad_values = ctx.kernels.value_gradient(x_t, grad_y_t, ctx.structure)
        if needs_bias:
            grad_bias = grad_y_t.sum(dim=1)
        if ctx.tap is not None:
            ctx.tap.record(x_t, grad_y_t)
        return grad_x, grad_values, grad_bias, None, None, None


def check_operands(
    x: Tensor,
    values: Tensor,
    bias: Tensor | None,
    *,
    shape: tuple[int, int],
    device: torch.device,
    values_shape: tuple[int, ...],
    values_meaning: str,
) -> None:
    """Raise a UsageError unless x (..., in), ``values`` (the layout's ``values_shape``, named to the user as
    ``values_meaning``) and bias (out,) fit a layer of ``shape`` (out, in) whose structure is on ``device``,
    in one floating dtype."""
    out_features, in_features = shape
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[-1] != in_features:
        raise UsageError(f"input must have last dimension {in_features} (in_features), got {describe(x)}")
    if not isinstance(values, Tensor) or values.shape != values_shape:
        wanted = (
            f"a 1-D tensor of {values_shape[0]} entries"
            if len(values_shape) == 1
            else f"a tensor of shape {values_shape}"
        )
        raise UsageError(f"values must be {wanted} ({values_meaning}), got {describe(values)}")
    if bias is not None and (not isinstance(bias, Tensor) or bias.shape != (out_features,)):
        raise UsageError(f"bias must be a 1-D tensor of {out_features} entries (out_features), got {describe(bias)}")
    operands = [("input", x), ("values", values)] + ([("bias", bias)] if bias is not None else [])
    if not values.is_floating_point() or any(t.dtype != values.dtype for _, t in operands):
        raise UsageError(
            "input, values and bias must share one floating dtype, got "
            + ", ".join(f"{name} {t.dtype}" for name, t in operands)
        )
    if any(t.device != device for _, t in operands):
        raise UsageError(
            f"input, values and bias must be on the structure's device {device}, got "
            + ", ".join(f"{name} {t.device}" for name, t in operands)
        )


def describe(obj: object) -> str:
    """Short description of an argument for error messages."""
    if isinstance(obj, Tensor):
        return f"a {obj.dtype} tensor of shape {tuple(obj.shape)}"
    return f"{type(obj).__name__}"
