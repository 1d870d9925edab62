"""Time one sparse layer (width x width) with csr_linear against a dense masked F.linear, in one run.

Usage: python bench/csr_ops.py [--widths 1000,4000] [--densities 0.1,0.02,0.01] [--batch 128]
                               [--repeats 7] [--threads N] [--clock wall|cpu] [--profile] [--alternatives]
                               [--keep-freed-memory]

For each width and density: forward+backward of y = x Wᵀ + b (input gradient included, as for a
hidden layer) with the dense masked weight (weight * mask), with the plain dense weight (no mask: a
floor for any masked implementation) and with csr_linear; then masked and csr again followed by an
SGD-with-momentum step (masked: the full weight, then the mask re-applied; csr: the nnz values).
All runs are interleaved; cells are the best time in ms, ratios are X/csr (>1: csr is faster) for
the best and (in brackets) the median times, since the machine may be shared.
--profile prints, per case, where the csr step spends its time (self CPU time per operator) and
the page faults per step of both variants. --alternatives times the kernel variants that csr_ops
chose between, on the same operands. --keep-freed-memory tells glibc malloc to serve large blocks
from its heap and keep freed memory, so that fresh buffers do not page-fault at every step (shows how
much of a step is first-touch cost on this machine). The load average is printed before and after:
on a shared machine, trust the best times of a run whose load stayed near the thread count.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from evosparse.backends.csr_ops import CsrStructure, _sampled_products, _sddmm, csr_linear


def parse_list(text: str, kind: type) -> list:
    """Comma-separated numbers."""
    return [kind(item) for item in text.split(",") if item]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""wall: elapsed time. cpu: CPU time of the process (all threads, kernel time included); with
--threads 1 it is barely affected by other processes competing for the cores."""


def interleaved_times(
    steps: dict[str, Callable[[], None]], repeats: int, clock: str = "wall"
) -> dict[str, list[float]]:
    """Times in ms of each step by ``clock``, run in turn ``repeats`` times after one warm-up call each."""
    now = CLOCKS[clock]
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = now()
            step()
            times[name].append((now() - start) * 1e3)
    return times


class Case:
    """A width x width layer at one density: dense masked and csr parameters, input and output grad."""

    def __init__(self, width: int, density: float, batch: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        mask = torch.rand(width, width, generator=generator) < density
        self.structure = CsrStructure.from_dense_mask(mask)
        scale = (2.0 / max(1.0, density * width)) ** 0.5
        self.values = (torch.randn(self.structure.nnz, generator=generator) * scale).requires_grad_()
        self.weight = (
            torch.zeros(width, width)
            .index_put((self.structure.row_indices, self.structure.col_indices), self.values.detach())
            .requires_grad_()
        )
        self.mask = mask.float()
        del mask
        self.dense_bias = torch.zeros(width, requires_grad=True)
        self.csr_bias = torch.zeros(width, requires_grad=True)
        self.x = torch.randn(batch, width, generator=generator, requires_grad=True)
        self.grad_y = torch.randn(batch, width, generator=generator)
        self.dense_optimizer = torch.optim.SGD([self.weight, self.dense_bias], lr=1e-6, momentum=0.9)
        self.csr_optimizer = torch.optim.SGD([self.values, self.csr_bias], lr=1e-6, momentum=0.9)

    def dense_backward(self) -> None:
        """Forward and backward of the dense masked layer."""
        self.x.grad = self.weight.grad = self.dense_bias.grad = None
        F.linear(self.x, self.weight * self.mask, self.dense_bias).backward(self.grad_y)

    def unmasked_backward(self) -> None:
        """Forward and backward of plain dense F.linear: the floor of any masked implementation."""
        self.x.grad = self.weight.grad = self.dense_bias.grad = None
        F.linear(self.x, self.weight, self.dense_bias).backward(self.grad_y)

    def csr_backward(self) -> None:
        """Forward and backward of the csr layer."""
        self.x.grad = self.values.grad = self.csr_bias.grad = None
        csr_linear(self.x, self.values, self.structure, self.csr_bias).backward(self.grad_y)

    def dense_train_step(self) -> None:
        """Dense forward, backward, SGD step and re-masking (what a masked backend does per step)."""
        self.dense_backward()
        self.dense_optimizer.step()
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def csr_train_step(self) -> None:
        """Csr forward, backward and SGD step on the values."""
        self.csr_backward()
        self.csr_optimizer.step()


def keep_freed_memory() -> None:
    """Ask glibc malloc never to mmap large blocks nor to return freed memory to the system."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 40)


def faults_per_call(step: Callable[[], None], repeats: int) -> float:
    """Minor page faults per call of ``step``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / repeats


def print_profile(case: Case, repeats: int) -> None:
    """Self CPU time per operator over ``repeats`` csr forward+backward calls, largest first."""
    print(
        f"    page faults per fwd+bwd: dense {faults_per_call(case.dense_backward, repeats):.0f}, "
        f"csr {faults_per_call(case.csr_backward, repeats):.0f}"
    )
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            case.csr_backward()
    rows = [(e.self_cpu_time_total, e.key) for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(t for t, _ in rows)
    shown = ", ".join(f"{name} {100 * t / total:.0f}%" for t, name in sorted(rows, reverse=True)[:5])
    print(f"    csr profile: {shown}")


def chunked_gather_products(
    structure: CsrStructure, grad_y_t: torch.Tensor, x_t: torch.Tensor, chunk: int = 8192
) -> torch.Tensor:
    """The SDDMM alternative: gather rows of grad_yᵀ and xᵀ per connection and sum their products."""
    result = grad_y_t.new_empty(structure.nnz)
    for start in range(0, structure.nnz, chunk):
        rows = structure.row_indices[start : start + chunk]
        cols = structure.col_indices[start : start + chunk]
        result[start : start + chunk] = (grad_y_t[rows] * x_t[cols]).sum(1)
    return result


def print_alternatives(case: Case, repeats: int, clock: str) -> None:
    """Best time in ms of each kernel variant csr_ops chose between, on this case's operands."""
    structure = case.structure
    values = case.values.detach()
    x, grad_y = case.x.detach(), case.grad_y
    x_t, grad_y_t = x.t().contiguous(), grad_y.t().contiguous()
    weight = structure.sparse_weight(values)
    weight_t = structure.sparse_weight_t(values)
    weight_coo = weight.to_sparse_coo()
    crow64, col64 = structure.crow_indices.long(), structure.col_indices.long()
    weight64 = torch.sparse_csr_tensor(crow64, col64, values, structure.shape, check_invariants=False)
    variants = {
        "fwd CSR W @ xT (chosen)": lambda: torch.mm(weight, x_t),
        "fwd CSR W @ xT, int64 indices": lambda: torch.mm(weight64, x_t),
        "fwd COO W @ xT": lambda: torch.sparse.mm(weight_coo, x_t),
        "fwd x @ CSR(WT)": lambda: x @ weight_t,
        "gx CSR(WT) @ gyT (chosen)": lambda: torch.mm(structure.sparse_weight_t(values), grad_y_t),
        "gx gy @ CSR(W)": lambda: grad_y @ weight,
        "gx CSR(W).t() @ gyT": lambda: torch.mm(weight.t(), grad_y_t),
        "gW sampled_addmm gyT, (xT).t (chosen)": lambda: _sampled_products(
            structure.crow_indices, structure.col_indices, structure.shape, grad_y_t, x_t
        ),
        "gW the same, batch not padded to 8k": lambda: _sddmm(
            structure.crow_indices, structure.col_indices, structure.shape, grad_y_t, x_t
        ),
        "gW the same, int64 indices": lambda: _sampled_products(crow64, col64, structure.shape, grad_y_t, x_t),
        "gW sampled_addmm gyT, x": lambda: torch.sparse.sampled_addmm(weight, grad_y_t, x, beta=0.0),
        "gW chunked gather": lambda: chunked_gather_products(structure, grad_y_t, x_t),
    }
    times = interleaved_times(variants, repeats, clock)
    for name, samples in times.items():
        print(f"    {name:40s} {min(samples):9.2f} ms")


def print_row(width: int, density: float, nnz: int, times: dict[str, list[float]]) -> None:
    """One table row: best times and the X/csr ratios of best (and median) times."""
    best = {name: min(samples) for name, samples in times.items()}
    median = {name: statistics.median(samples) for name, samples in times.items()}

    def ratio(dense: str, csr: str) -> str:
        return f"{best[dense] / best[csr]:.1f} ({median[dense] / median[csr]:.1f})"

    print(
        f"{width:>6} {density:>7} {nnz:>9} | {'':8} {best['masked']:>8.1f} {best['unmasked']:>8.1f} "
        f"{best['csr']:>7.1f} {ratio('masked', 'csr'):>12} {ratio('unmasked', 'csr'):>12} | {'':10} "
        f"{best['masked_step']:>8.1f} {best['csr_step']:>7.1f} {ratio('masked_step', 'csr_step'):>12}",
        flush=True,
    )


def main() -> None:
    """Parse options, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="1000,4000")
    parser.add_argument("--densities", default="0.1,0.02,0.01")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--alternatives", action="store_true")
    parser.add_argument("--keep-freed-memory", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"repeats {args.repeats}, clock {args.clock}, keep freed memory {args.keep_freed_memory}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"best {args.clock} times in ms; ratios X/csr from best times (from median times)")
    header = (
        f"{'width':>6} {'density':>7} {'nnz':>9} | fwd+bwd: {'masked':>8} {'unmasked':>8} {'csr':>7} "
        f"{'masked/csr':>12} {'unmasked/csr':>12} | +SGD step: {'masked':>8} {'csr':>7} {'masked/csr':>12}"
    )
    print(header)
    print("-" * len(header))
    for width in parse_list(args.widths, int):
        for density in parse_list(args.densities, float):
            case = Case(width, density, args.batch)
            times = interleaved_times(
                {
                    "masked": case.dense_backward,
                    "unmasked": case.unmasked_backward,
                    "csr": case.csr_backward,
                    "masked_step": case.dense_train_step,
                    "csr_step": case.csr_train_step,
                },
                args.repeats,
                args.clock,
            )
            print_row(width, density, case.structure.nnz, times)
            if args.profile:
                print_profile(case, args.repeats)
            if args.alternatives:
                print_alternatives(case, max(2, args.repeats // 2), args.clock)
            del case
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
