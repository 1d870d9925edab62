"""Building csr layers directly from a sparse random draw, so that a large model never exists densely.

A model whose sparse ``nn.Linear`` weights live on the ``meta`` device (built under
``torch.device("meta")``: shapes without storage) never has a dense weight. :func:`build_csr_layer`
gives each such layer its random topology and sparse initialisation at cost O(nnz log nnz) time
and O(nnz) memory, and the layer's bias a real value. The draw follows the same rules as the masked
backend (every output unit gets one random input first, the rest uniform among free positions; or,
for a constant fan-in, k or k + 1 random inputs per unit; He-normal values scaled by the active fan-in;
PyTorch's default bias range) but not the same random stream, since the masked draw enumerates all
out x in positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from evosparse.backends.csr_layer import CsrLinear
from evosparse.errors import UsageError
from evosparse.topology.budget import fan_in_split
from evosparse.topology.layer import BLOCK_POSITIONS
from evosparse.topology.masks import find_sparse_parameters
from evosparse.topology.positions import sample_absent, sample_per_row

#: Above this many dense weight entries in its linear layers, ``evosparse train --backend csr`` always builds
#: the model on the meta device and its layers with :func:`build_csr_layer` (2²⁸ entries: 1 GiB of float32
#: weights), and refuses in one line a run that cannot be drawn that way.
DIRECT_BUILD_ENTRIES = 1 << 28

#: Up to this many dense weight entries, a csr model is built densely on the CPU and converted, drawing
#: exactly what the masked backend draws: a masked and a csr run of one seed start from the same topology
#: and values. The direct draw cannot reproduce those draws (the masked one permutes all out x in
#: positions and draws a value for each), so above this size the model is drawn directly whenever it can be
#: (:func:`direct_draw_applies`). The conversion's transient is about 4 bytes per dense entry (the
#: weights) plus 25 per entry of the largest layer (the masked draw's position permutation and free list,
#: int64, and its dense value draw), at most about 120 MiB at 2²² entries; measured, 40 MiB of peak RSS
#: above the direct draw's for 784-1500-1500-10 (3.4 M entries, ε 20), where the sparse model takes 5 MiB.
CONVERSION_ENTRIES = 1 << 22


def random_positions(shape: tuple[int, int], count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct sorted flat positions of an (out, in) weight; each row gets one first if count ≥ out.

    Mirrors :func:`evosparse.topology.masks.random_mask` (one random input per output unit, then
    uniform without replacement) without any tensor of out x in entries.
    """
    out_features, in_features = shape
    total = out_features * in_features
    if not 0 <= count <= total:
        raise UsageError(f"cannot place {count} connections in a {shape} weight")
    first = torch.zeros(0, dtype=torch.int64)
    if count >= out_features:
        row_starts = torch.arange(out_features) * in_features
        first = torch.randint(in_features, (out_features,), generator=generator) + row_starts
    rest = sample_absent(first, total, count - first.numel(), generator)
    return torch.sort(torch.cat([first, rest])).values


def build_csr_layer(
    linear: nn.Linear, count: int, init: str, generator: torch.Generator, constant_fan_in: bool = False
) -> CsrLinear:
    """A :class:`CsrLinear` for the (meta) ``linear``: ``count`` random connections, sparse-Kaiming values.

    ``constant_fan_in``: output unit u gets ``fan_in_split(count, out)[u]`` inputs (k or k + 1), drawn per
    unit by :func:`~evosparse.topology.positions.sample_per_row`, as the masked backend's
    :func:`~evosparse.topology.masks.fan_in_mask` draws them (the same distribution, other draws).

    Values ~ N(0, 2 / fan_in) with fan_in the mean active inputs per unit (He et al. 2015, as
    :func:`evosparse.topology.init.sparse_kaiming_std`); the bias ~ U(-1/√in, 1/√in), PyTorch's
    default for ``nn.Linear``. ``init="keep"`` is refused: a meta weight has no values to keep.
    """
    if init != "sparse_kaiming":
        raise UsageError(f"init {init!r} needs the model's own weights; a model built on the meta device has none")
    shape = (linear.out_features, linear.in_features)
    if constant_fan_in:
        positions = sample_per_row(shape[1], fan_in_split(count, shape[0]), generator, BLOCK_POSITIONS)
    else:
        positions = random_positions(shape, count, generator)
    std = math.sqrt(2.0) / math.sqrt(max(1.0, count / shape[0]))
    values = torch.randn(count, generator=generator) * std
    bias = None
    if linear.bias is not None:
        bound = 1.0 / math.sqrt(shape[1])
        bias = (torch.rand(shape[0], generator=generator) * 2 - 1) * bound
    return CsrLinear.from_positions(shape, positions, values, bias)


def direct_draw_applies(
    skeleton: nn.Module, init: str, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> bool:
    """Whether the Sparsifier can draw ``skeleton`` (a model on the meta device) directly: fresh values
    (``init="sparse_kaiming"``), and every parameter belonging to a sparsified ``nn.Linear``
    (``include``/``exclude`` as the Sparsifier gets them), since nothing else can be built from the meta
    device."""
    if init != "sparse_kaiming":
        return False
    found = find_sparse_parameters(skeleton, include, exclude)
    if not found or any(not isinstance(module, nn.Linear) or attr != "weight" for _, module, attr in found):
        return False
    covered = {id(param) for _, module, _ in found for param in module.parameters()}
    return all(id(param) in covered for param in skeleton.parameters())


def build_for_backend(
    backend: str,
    build: Callable[[], nn.Module],
    device: torch.device,
    direct: Callable[[nn.Module], bool] = lambda skeleton: False,
) -> nn.Module:
    """The model ``build()`` makes: on ``device`` for the masked backend; for csr and condensed, never dense
    on ``device`` (a condensed model is built on the CPU and condensed there; one above
    :data:`DIRECT_BUILD_ENTRIES` is refused in one line, as only csr can draw it sparse directly).

    A csr model is left on the meta device (no storage), for the Sparsifier to build its sparse layers
    directly, when its linear layers hold more than :data:`DIRECT_BUILD_ENTRIES` dense weight entries, or
    more than :data:`CONVERSION_ENTRIES` and ``direct(skeleton)`` says it can be drawn so (see
    :func:`direct_draw_applies`). A smaller one is built on the CPU exactly as the masked backend builds it
    (the same random draws: the skeleton, built first, draws nothing, and the global generator is restored
    after it), so both backends start identical; the Sparsifier converts it there and the caller moves the
    sparse model to ``device``. So the device never holds a csr model's dense weights (peak device memory:
    the sparse model), and the host holds them at most once, below the thresholds.
    """
    if backend == "masked":
        return build().to(device)
    state = torch.get_rng_state()
    with torch.device("meta"):
        skeleton = build()
    linear_entries = sum(m.weight.numel() for m in skeleton.modules() if isinstance(m, nn.Linear))
    if backend == "csr" and (
        linear_entries > DIRECT_BUILD_ENTRIES or (linear_entries > CONVERSION_ENTRIES and direct(skeleton))
    ):
        return skeleton
    if linear_entries > DIRECT_BUILD_ENTRIES:
        raise UsageError(
            f"--backend {backend} condenses a model built densely on the CPU; its {linear_entries:,} linear weights "
            f"exceed {DIRECT_BUILD_ENTRIES:,}: use --backend csr, which draws such a model sparse directly"
        )
    torch.set_rng_state(state)
    return build()
