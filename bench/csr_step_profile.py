"""Where a csr SET training step spends its time: per operation at 1 and 2 threads, and the sparse kernels' share.

Usage: python bench/csr_step_profile.py [--width 4000] [--batch 40] [--rounds 2]

Builds the 784-W-W-W-10 csr MLP of ``csr_memory.py``'s ``mnist4000`` workload (SET, ε 20, SGD lr 0.05 momentum
0.9) and trains it on one fixed random batch. Each round, at 1 then 2 threads: 200 timed steps and a profile
of 50 (each operation's wall time per step, so parallel operations show their speed-up). Then, at one thread,
the sparse kernels alone — each layer's forward SpMM with bias, transposed value gather + input-gradient SpMM
(not for the first layer, whose input needs no gradient) and SDDMM weight gradient, replayed on the step's own
operands — against whole steps: their FLOP rates and the share end to end reaches (issue 20's "70% of its
own kernels' rate").
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
from csr_memory import build_set_mlp
from timing import best_time
from torch.profiler import ProfilerActivity, profile

from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.csr_ops import _sampled_products
from evosparse.engine.objectives import Classification

warnings.filterwarnings("ignore", category=UserWarning)


def best_seconds(work: Callable[[], None], calls: int = 200, rounds: int = 5) -> float:
    """Best mean seconds per call over ``rounds`` blocks of ``calls`` (after 20 warm-up calls)."""
    for _ in range(20):
        work()
    return best_time(rounds, lambda: [work() for _ in range(calls)])[0] / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model, optimizer, sparsifier = build_set_mlp(784, (args.width,) * 3, 10, 20.0, total_steps=10**9)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(args.batch, 784, generator=generator), torch.randint(0, 10, (args.batch,), generator=generator)
    objective = Classification()

    def step() -> None:
        loss = objective.loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sparsifier.step()

    per_op: dict[int, dict[str, float]] = {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seconds = best_seconds(step)
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                for _ in range(50):
                    step()
            per_op[threads] = {e.key: e.self_cpu_time_total / 50 / 1e3 for e in profiled.key_averages()}
            print(f"{threads} thread(s): {seconds * 1e3:.2f} ms a step", flush=True)
    print(f"{'operation (last round)':<40} {'1 thread ms':>12} {'2 threads ms':>12} {'speed-up':>9}")
    for name in sorted(per_op[1], key=lambda key: -per_op[1][key])[:14]:
        one, two = per_op[1][name], per_op[2].get(name, float("nan"))
        print(f"{name[:40]:<40} {one:>12.3f} {two:>12.3f} {one / two:>9.2f}")

    torch.set_num_threads(1)
    layers = [module for module in model.modules() if isinstance(module, CsrLinear)]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach()))) for layer in layers]
    step()
    for hook in hooks:
        hook.remove()
    operands = [
        (layer, x_in.t().contiguous(), torch.randn_like(y_out).t().contiguous())
        for layer, (x_in, y_out) in zip(layers, seen, strict=True)
    ]
    flops = sum(2 * layer.nnz * args.batch * (2 if layer is layers[0] else 3) for layer in layers)

    def kernels() -> None:
        for layer, x_t, grad_y_t in operands:
            structure, values = layer.structure, layer.values.detach()
            torch.addmm(layer.bias.detach().unsqueeze(1), structure.sparse_weight(values), x_t)
            if layer is not layers[0]:
                torch.mm(structure.sparse_weight_t(values), grad_y_t)
            _sampled_products(structure.crow_indices, structure.col_indices, structure.shape, grad_y_t, x_t)

    for _ in range(args.rounds):
        kernel_s, step_s = best_seconds(kernels), best_seconds(step)
        print(
            f"one thread: kernels alone {kernel_s * 1e3:.2f} ms ({flops / kernel_s / 1e9:.1f} GFLOP/s), whole step "
            f"{step_s * 1e3:.2f} ms ({flops / step_s / 1e9:.1f} GFLOP/s): {kernel_s / step_s:.0%} of the kernels' "
            f"rate ({flops / 1e6:.1f} MFLOP a step)",
            flush=True,
        )


if __name__ == "__main__":
    main()
