"""Time a constant fan-in layer (width x width): condensed kernels against dense F.linear and csr, in one run.

Usage: python bench/condensed.py [--widths 1024,2048,4096,8192,16384] [--densities 0.2,0.1,0.05,0.01]
                                 [--batches 1,32,256] [--device auto|cpu|cuda] [--threads 1] [--repeats 5]
                                 [--clock wall|cpu] [--quick] [--alternatives] [--chunk 256]

Each case is a square layer whose every output unit has k = round(density · width) inputs (at least 1),
drawn uniformly, float32, with a bias. Three implementations of the same weights:

- dense: ``F.linear`` with the masked dense weight (zeros where inactive; no mask multiply, so it is the
  floor of any dense implementation);
- condensed: :func:`evosparse.backends.condensed_ops.condensed_linear` on (out, k) values and indices;
- csr: :func:`evosparse.backends.csr_ops.csr_linear` on the same connections in CSR.

"train" is forward and backward with the gradients of the input, the weight (dense: all of it; the
others: the active values) and the bias; "infer" is the forward under ``torch.no_grad()``. All steps of a
case run interleaved (``interleaved_times`` of ``bench/csr_ops.py``), so the ratios compare figures of
one run under the same load; cells are best times in ms, speedups are dense/condensed and csr/condensed
(>1: condensed is faster) of the best times and, in brackets, of the medians. On CUDA every step ends
with a synchronisation and the clock is wall time.

``--alternatives`` also times, per case, the formulations that ``condensed_ops`` chose between (its
docstring quotes them): gathers materialised per chunk of ``--chunk`` output units (extra memory
chunk · k · batch elements), a scatter (``index_add_``) input gradient, CSR products, the embedding
bag's own per-sample-weight backward, and the batch-1 and SDDMM-padding variants.
``--quick``: widths 256,1024, density 0.1, batches 1,32, 3 repeats (seconds). The load average is printed
before and after: on a shared machine prefer ``--clock cpu`` with one thread.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from csr_ops import CLOCKS, interleaved_times, parse_list

from evosparse.backends.condensed_layout import CondensedStructure, expand
from evosparse.backends.condensed_ops import KERNELS, condensed_linear
from evosparse.backends.csr_ops import SDDMM_BATCH_BLOCK, CsrStructure, _sddmm, csr_linear

IMPLEMENTATIONS = ("dense", "condensed", "csr")
QUICK = {"widths": "256,1024", "densities": "0.1", "batches": "1,32", "repeats": 3}


def fan_in_indices(width: int, fan_in: int, generator: torch.Generator, rows_per_draw: int = 512) -> torch.Tensor:
    """(width, fan_in) sorted input indices, each row a uniform draw without replacement (drawn in row blocks)."""
    blocks = []
    for start in range(0, width, rows_per_draw):
        scores = torch.rand(min(rows_per_draw, width - start), width, generator=generator)
        blocks.append(scores.topk(fan_in, dim=1).indices.sort(dim=1).values)
    return torch.cat(blocks)


class Case:
    """A width x width constant fan-in layer in the three storages, with an input batch and output gradient."""

    def __init__(self, width: int, density: float, batch: int, device: torch.device, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.fan_in = max(1, round(density * width))
        self.structure = CondensedStructure.from_indices(fan_in_indices(width, self.fan_in, generator), width).to(
            device
        )
        scale = (2.0 / self.fan_in) ** 0.5
        values = torch.randn(width, self.fan_in, generator=generator) * scale
        self.values = values.to(device).requires_grad_()
        self.weight = expand(self.values.detach(), self.structure).requires_grad_()
        rows = torch.arange(width, device=device).repeat_interleave(self.fan_in)
        self.csr_structure, order = CsrStructure.from_indices(rows, self.structure.indices.flatten(), (width, width))
        self.csr_values = self.values.detach().flatten()[order].requires_grad_()
        self.bias = torch.zeros(width, device=device, requires_grad=True)
        self.x = torch.randn(batch, width, generator=generator).to(device).requires_grad_()
        self.grad_y = torch.randn(batch, width, generator=generator).to(device)

    def forward(self, implementation: str) -> torch.Tensor:
        """y of one implementation (autograd recording as the grad mode says)."""
        if implementation == "dense":
            return F.linear(self.x, self.weight, self.bias)
        if implementation == "condensed":
            return condensed_linear(self.x, self.values, self.structure, self.bias)
        return csr_linear(self.x, self.csr_values, self.csr_structure, self.bias)

    def train(self, implementation: str) -> None:
        """Forward and backward: gradients of input, weight and bias."""
        for tensor in (self.x, self.weight, self.values, self.csr_values, self.bias):
            tensor.grad = None
        self.forward(implementation).backward(self.grad_y)

    def infer(self, implementation: str) -> None:
        """Forward without autograd."""
        with torch.no_grad():
            self.forward(implementation)

    def steps(self) -> dict[str, Callable[[], None]]:
        """ "train NAME" and "infer NAME" of every implementation, each ending synchronised."""
        device = self.x.device
        steps = {}
        for name in IMPLEMENTATIONS:
            steps[f"train {name}"] = synchronised(functools.partial(self.train, name), device)
            steps[f"infer {name}"] = synchronised(functools.partial(self.infer, name), device)
        return steps


def synchronised(step: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``step`` followed by a device synchronisation (so a CUDA step is timed by what the GPU does)."""

    def run() -> None:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def chunk_bounds(length: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) pairs covering range(length) in pieces of ``chunk``."""
    return [(start, min(start + chunk, length)) for start in range(0, length, chunk)]


def gather_bmm_forward(x_t: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, chunk: int) -> torch.Tensor:
    """yᵀ per chunk of output units: xᵀ rows gathered into (chunk, k, batch), then one bmm with the values."""
    fan_in, batch = indices.shape[1], x_t.shape[1]
    y_t = x_t.new_empty(indices.shape[0], batch)
    for start, stop in chunk_bounds(indices.shape[0], chunk):
        gathered = x_t.index_select(0, indices[start:stop].flatten()).view(stop - start, fan_in, batch)
        y_t[start:stop] = torch.bmm(values[start:stop].unsqueeze(1), gathered).squeeze(1)
    return y_t


def gather_einsum_forward(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, chunk: int) -> torch.Tensor:
    """y per chunk of output units: x[:, indices] as (batch, chunk, k), reduced against the values by einsum."""
    y = x.new_empty(x.shape[0], indices.shape[0])
    for start, stop in chunk_bounds(indices.shape[0], chunk):
        y[:, start:stop] = torch.einsum("bck,ck->bc", x[:, indices[start:stop]], values[start:stop])
    return y


def scatter_input_gradient(
    grad_y_t: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, in_features: int, chunk: int
) -> torch.Tensor:
    """grad_xᵀ by ``index_add_`` of values · grad_yᵀ rows into the input rows, per chunk of output units."""
    batch = grad_y_t.shape[1]
    grad_x_t = grad_y_t.new_zeros(in_features, batch)
    for start, stop in chunk_bounds(indices.shape[0], chunk):
        products = values[start:stop].unsqueeze(2) * grad_y_t[start:stop].unsqueeze(1)
        grad_x_t.index_add_(0, indices[start:stop].flatten(), products.view(-1, batch))
    return grad_x_t


def gather_bmm_value_gradient(
    x_t: torch.Tensor, grad_y_t: torch.Tensor, indices: torch.Tensor, chunk: int
) -> torch.Tensor:
    """grad_values per chunk of output units: xᵀ rows gathered into (chunk, k, batch), bmm with grad_yᵀ rows."""
    fan_in, batch = indices.shape[1], x_t.shape[1]
    result = x_t.new_empty(indices.shape)
    for start, stop in chunk_bounds(indices.shape[0], chunk):
        gathered = x_t.index_select(0, indices[start:stop].flatten()).view(stop - start, fan_in, batch)
        result[start:stop] = torch.bmm(gathered, grad_y_t[start:stop].unsqueeze(2)).squeeze(2)
    return result


def print_alternatives(case: Case, repeats: int, clock: str, chunk: int) -> None:
    """Best time in ms of each formulation condensed_ops chose between, on this case's operands."""
    structure, csr_structure = case.structure, case.csr_structure
    values, flat_values = case.values.detach(), case.values.detach().flatten()
    x, grad_y = case.x.detach(), case.grad_y
    x_t, grad_y_t = x.t().contiguous(), grad_y.t().contiguous()
    indices, flat_indices = structure.indices, structure.indices.flatten()
    width, batch = structure.shape[1], x.shape[0]
    padded = F.pad(x_t, (0, 1)), F.pad(grad_y_t, (0, 1))
    long_indices, long_flat_indices = indices.long(), flat_indices.long()
    bag_rows = torch.arange(structure.shape[0], device=x.device).repeat_interleave(structure.fan_in)
    eighth = -batch % SDDMM_BATCH_BLOCK

    def transposed_bag(dtype: torch.dtype) -> torch.Tensor:
        """The input gradient as bag sums over the transposed index held in ``dtype`` (one-column tables padded)."""
        return F.embedding_bag(
            structure.t_rows.to(dtype),
            grad_y_t if batch > 1 else padded[1],
            structure.t_offsets.to(dtype),
            mode="sum",
            per_sample_weights=flat_values.index_select(0, structure.t_permutation),
        )

    variants: dict[str, Callable[[], object]] = {
        "fwd condensed_ops (chosen)": lambda: KERNELS.forward(x_t, values, None, structure),
        "fwd bag over xT": lambda: F.embedding_bag(indices, x_t, mode="sum", per_sample_weights=values),
        "fwd bag over zero-padded xT": lambda: F.embedding_bag(
            indices, padded[0], mode="sum", per_sample_weights=values
        ),
        "fwd bag over xT, int64 indices": lambda: F.embedding_bag(
            long_indices, x_t, mode="sum", per_sample_weights=values
        ),
        "fwd CSR W @ xT": lambda: torch.mm(csr_structure.sparse_weight(flat_values), x_t),
        "fwd gather xT rows + bmm": lambda: gather_bmm_forward(x_t, values, indices, chunk),
        "fwd gather x[:, idx] + einsum": lambda: gather_einsum_forward(x, values, indices, chunk),
        "fwd dense F.linear": lambda: F.linear(x, case.weight.detach()),
        "gx condensed_ops (chosen)": lambda: KERNELS.input_gradient_t(values, grad_y_t, structure),
        "gx bag over transposed index": lambda: transposed_bag(structure.t_rows.dtype),
        "gx bag over transposed index, int64": lambda: transposed_bag(torch.int64),
        "gx index_add_ of values * gyT": lambda: scatter_input_gradient(grad_y_t, values, indices, width, chunk),
        "gx CSR(WT) @ gyT": lambda: torch.mm(csr_structure.sparse_weight_t(flat_values), grad_y_t),
        "gx dense gy @ W": lambda: grad_y @ case.weight.detach(),
        "gW condensed_ops (chosen)": lambda: KERNELS.value_gradient(x_t, grad_y_t, structure),
        "gW SDDMM": lambda: _sddmm(structure.crow_indices, flat_indices, structure.shape, grad_y_t, x_t),
        "gW SDDMM, int64 indices": lambda: _sddmm(
            structure.crow_indices.long(), long_flat_indices, structure.shape, grad_y_t, x_t
        ),
        "gW SDDMM, batch padded to 8k": lambda: _sddmm(
            structure.crow_indices,
            flat_indices,
            structure.shape,
            F.pad(grad_y_t, (0, eighth)),
            F.pad(x_t, (0, eighth)),
        ),
        "gW bag per-sample-weight backward": lambda: torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad_y_t, x_t, long_flat_indices, structure.crow_indices[:-1].long(), bag_rows, 0, -1
        ),
        "gW gather xT rows + bmm": lambda: gather_bmm_value_gradient(x_t, grad_y_t, indices, chunk),
        "gW dense gyT @ x": lambda: grad_y.t() @ x,
    }
    times = interleaved_times({name: synchronised(work, x.device) for name, work in variants.items()}, repeats, clock)
    for name, samples in times.items():
        print(f"    {name:36s} {min(samples):9.2f} ms")


def print_row(width: int, density: float, fan_in: int, batch: int, times: dict[str, list[float]]) -> None:
    """One table row: best times of each implementation and the speedups of condensed, per mode."""
    best = {name: min(samples) for name, samples in times.items()}
    median = {name: statistics.median(samples) for name, samples in times.items()}

    def speedup(mode: str, other: str) -> str:
        fast, slow = f"{mode} condensed", f"{mode} {other}"
        return f"{best[slow] / best[fast]:.2f} ({median[slow] / median[fast]:.2f})"

    cells = []
    for mode in ("train", "infer"):
        cells.append(
            " ".join(f"{best[f'{mode} {name}']:>9.2f}" for name in IMPLEMENTATIONS)
            + f" {speedup(mode, 'dense'):>12} {speedup(mode, 'csr'):>12}"
        )
    print(f"{width:>6} {density:>7} {fan_in:>5} {batch:>5} | " + " | ".join(cells), flush=True)


def main() -> None:
    """Parse options, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--densities", default="0.2,0.1,0.05,0.01")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--alternatives", action="store_true")
    parser.add_argument("--chunk", type=int, default=256)
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    if device.type == "cuda":
        args.clock = "wall"

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, repeats {args.repeats}, "
        f"clock {args.clock}, load average {os.getloadavg()[0]:.1f}"
    )
    print("best times in ms; speedups of condensed = other's time / condensed time, best (median)")
    timings = " ".join(f"{name:>9}" for name in IMPLEMENTATIONS) + f" {'vs dense':>12} {'vs csr':>12}"
    case_columns = f"{'width':>6} {'density':>7} {'k':>5} {'batch':>5}"
    groups = f"{'train (fwd + bwd)':^{len(timings)}} | {'infer (fwd, no grad)':^{len(timings)}}"
    print(f"{'':{len(case_columns)}} | {groups}")
    print(f"{case_columns} | {timings} | {timings}")
    print("-" * (len(case_columns) + 2 * len(timings) + 6))
    for width in parse_list(args.widths, int):
        for density in parse_list(args.densities, float):
            for batch in parse_list(args.batches, int):
                case = Case(width, density, batch, device)
                times = interleaved_times(case.steps(), args.repeats, args.clock)
                print_row(width, density, case.fan_in, batch, times)
                if args.alternatives:
                    print_alternatives(case, max(2, args.repeats // 2), args.clock, args.chunk)
                del case
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
