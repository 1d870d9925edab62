"""One MNIST-shaped training epoch, end to end: dense vs the masked, csr and condensed backends, in one run.

Usage: python bench/condensed_epoch.py [--widths 1024,2048,4096] [--densities 0.1,0.05] [--methods srigl,static]
                                       [--batch 256] [--steps 235] [--rounds 5] [--threads 1]
                                       [--clock cpu|wall] [--quick]

Model: an MLP 784 -> W -> W -> 10 (ReLU), SGD with momentum 0.9, cross-entropy on random data (a pool
of 4 batches of ``--batch`` samples). "dense" trains it as it is; each other column trains it under
``evosparse.sparsify`` with the method and backend named (uniform density, so every layer has it): one
step is zero_grad, forward, backward, ``optimizer.step()`` and ``sparsifier.step()``, which runs the
topology updates when due (srigl: ΔT = 100 steps, its default, over ``--steps`` planned steps; the
gradients before an update are recorded, as in the engine). ``--steps`` defaults to an MNIST epoch at
batch 256 (60,000 / 256 ≈ 235 steps), so an epoch's updates are included.

The backends of a case run interleaved: the epoch is cut into ``--rounds`` slices and every round runs
one slice of each model in turn, so machine load changes reach all columns alike. Cells are seconds
per epoch (the sum of the slices' times, CPU time of the process by default: robust with one thread on
a shared machine); ratios are dense time / backend time (>1: faster than dense). ``--quick``: width
1024, density 0.1, 30 steps in 3 rounds with ΔT = 10 (seconds in all).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import evosparse

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
QUICK = {"widths": "1024", "densities": "0.1", "steps": 30, "rounds": 3, "update_interval": 10}
IN_FEATURES, CLASSES, POOL = 784, 10, 4


def build(
    width: int, density: float, backend: str, method: str, steps: int, interval: int, batch: int
) -> Callable[[], None]:
    """A model of the case on ``backend`` (``dense``: no sparsifier) and its training step on ``batch`` samples."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(IN_FEATURES, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, CLASSES)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = None
    if backend != "dense":
        params = {"update_interval": interval} if method == "srigl" else {}
        sparsifier = evosparse.sparsify(
            model,
            optimizer,
            method,
            density=density,
            distribution="uniform",
            total_steps=steps,
            backend=backend,
            **params,
        )
    generator = torch.Generator().manual_seed(1)
    xs = torch.randn(POOL, batch, IN_FEATURES, generator=generator)
    ys = torch.randint(0, CLASSES, (POOL, batch), generator=generator)
    count = 0

    def step() -> None:
        nonlocal count
        optimizer.zero_grad()
        F.cross_entropy(model(xs[count % POOL]), ys[count % POOL]).backward()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.step()
        count += 1

    return step


def epoch_seconds(steps_of: dict[str, Callable[[], None]], steps: int, rounds: int, clock: str) -> dict[str, float]:
    """Seconds each model takes for ``steps`` steps, run in ``rounds`` interleaved slices."""
    totals = dict.fromkeys(steps_of, 0.0)
    bounds = [steps * r // rounds for r in range(rounds + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        for name, step in steps_of.items():
            began = CLOCKS[clock]()
            for _ in range(stop - start):
                step()
            totals[name] += CLOCKS[clock]() - began
    return totals


def main() -> None:
    """Parse options, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="1024,2048,4096")
    parser.add_argument("--densities", default="0.1,0.05")
    parser.add_argument("--methods", default="srigl,static")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=235)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--update-interval", dest="update_interval", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    backends = ("masked", "csr", "condensed")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {args.batch}, {args.steps} steps "
        f"per epoch in {args.rounds} rounds, srigl ΔT {args.update_interval}, clock {args.clock}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("seconds per epoch; in brackets dense / backend (>1: faster than dense)")
    columns = [f"{method}/{backend}" for method in methods for backend in backends]
    print(f"{'width':>6} {'density':>7} {'dense':>8} " + " ".join(f"{name:>22}" for name in columns))
    for width in (int(w) for w in args.widths.split(",")):
        for density in (float(d) for d in args.densities.split(",")):
            case = (args.steps, args.update_interval, args.batch)
            steps_of = {"dense": build(width, density, "dense", "", *case)}
            for method in methods:
                for backend in backends:
                    steps_of[f"{method}/{backend}"] = build(width, density, backend, method, *case)
            for step in steps_of.values():  # untimed: kernels loaded, allocator pools made
                step()
            seconds = epoch_seconds(steps_of, args.steps - 1, args.rounds, args.clock)
            dense = seconds["dense"]
            cells = " ".join(f"{seconds[name]:>11.2f} ({dense / seconds[name]:>5.2f}x)   " for name in columns)
            print(f"{width:>6} {density:>7} {dense:>8.2f} {cells}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
