"""Time SET training steps of LeNet-300-100 (batch 100) with one thread and with PyTorch's default, in one run.

On a busy 2-core machine the default two OpenMP threads spin-wait for each other; this shows how much
that costs here. Usage: ``python bench/threads.py [--steps 50]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

import evosparse
from evosparse.models.mlp import MLP


def step_time(threads: int, steps: int) -> float:
    """Median seconds per SET training step with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MLP(784, [300, 100], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.05)
    x, y = torch.randn(100, 784), torch.randint(0, 10, (100,))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsifier.step()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    default = torch.get_num_threads()
    one = step_time(1, args.steps)
    many = step_time(default, args.steps)
    print(f"1 thread: {one * 1e3:.2f} ms/step; {default} threads: {many * 1e3:.2f} ms/step; ratio {many / one:.2f}")


if __name__ == "__main__":
    main()
