"""Per-update cost of the node-importance, LiSET and AWS methods on the csr vs the masked backend, in one run.

Usage: python bench/csr_methods.py [--width 4000] [--density 0.01] [--batch 128] [--repeats 3]
                                   [--threads 1] [--clock cpu|wall] [--methods set,path_weight,...]

Model: an MLP 784 -> W -> W -> 10 (ReLU), every weight sparse at ``--density`` (uniform
distribution), SGD with momentum 0.9, cross-entropy on random data. For each method and backend the
same seed builds the same model (the csr backend converts the masked one, so both start from the
same topology); each repeat runs one training step with the method's hooks (|F_k| gathering, gradient
sums, skip layers, gradient taps), untimed apart from the step column, then times one topology update
(``sparsifier.method.update()``, without the Sparsifier's invariant check). The median over the
repeats is printed, with the ratio masked / csr (above 1: csr is faster). ``set`` is the reference
of a cheap update. Times are CPU time of the process (``--clock cpu``, robust on a shared machine
with one thread) or wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import evosparse

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

#: label -> (registered method, parameters)
METHODS = {
    "set": ("set", {}),
    "path_weight": ("path_weight", {}),
    "sensitivity": ("sensitivity", {}),
    "liset": ("liset", {}),
    "adaptive": ("adaptive", {}),
    "adaptive stochastic b0=0.01": ("adaptive", {"mode": "stochastic", "beta0": 0.01}),
}


@dataclass
class Timing:
    """Median milliseconds of one training step and of one topology update."""

    step_ms: float
    update_ms: float


def measure(method: str, params: dict, backend: str, args: argparse.Namespace) -> Timing:
    """Build the model on ``backend``, then ``repeats`` times: one timed training step, one timed update."""
    clock = CLOCKS[args.clock]
    torch.manual_seed(0)
    width = args.width
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, method, density=args.density, distribution="uniform", backend=backend, **params
    )
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 784, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    steps, updates = [], []
    for repeat in range(args.repeats + 1):  # the first repeat warms up and is not counted
        started = clock()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
        stepped = clock()
        sparsifier.method.update()
        updated = clock()
        if repeat:
            steps.append((stepped - started) * 1e3)
            updates.append((updated - stepped) * 1e3)
    sparsifier.remove()
    return Timing(statistics.median(steps), statistics.median(updates))


def main() -> None:
    """Parse options, time every method on both backends, print one table of times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated labels of METHODS")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = [label.strip() for label in args.methods.split(",")]
    print(
        f"MLP 784-{args.width}-{args.width}-10, density {args.density} (uniform), batch {args.batch}, "
        f"median of {args.repeats} updates, {args.clock} time, torch threads {torch.get_num_threads()}"
    )
    print(f"{'method':28} {'masked upd ms':>13} {'csr upd ms':>11} {'masked/csr':>10} {'step ms m / c':>15}")
    for label in labels:
        method, params = METHODS[label]
        masked = measure(method, params, "masked", args)
        csr = measure(method, params, "csr", args)
        print(
            f"{label:28} {masked.update_ms:13.1f} {csr.update_ms:11.1f} {masked.update_ms / csr.update_ms:9.2f}x "
            f"{masked.step_ms:7.1f} / {csr.step_ms:<6.1f}"
        )


if __name__ == "__main__":
    main()
