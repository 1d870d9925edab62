"""Time one topology update of each method as a fraction of one MNIST epoch (target: at most 3%).

Usage: python bench/topology_update.py [--repeats 5] [--threads N] [--synthetic]

For each method (set, path_weight, sensitivity in both forms) a LeNet-300-100 (784-300-100-10) at
density 0.05 (Erdős–Rényi) trains one epoch of 500 steps of batch 100 on MNIST with the method's hooks
active (|F_k| gathering for path_weight, gradient accumulation for sensitivity), then the update that
would end the epoch is timed ``repeats`` times from the same saved state (median reported). The
reference is the epoch time of SET, plain masked training, measured in the same run; each method's
own epoch time shows the cost of its per-step hooks. ``--synthetic`` uses random data of MNIST's shape
instead of the real images (timings barely depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

import evosparse
from evosparse.data import load_dataset
from evosparse.models.mlp import MLP

STEPS, BATCH, DENSITY = 500, 100, 0.05
#: label -> (registered method, parameters)
METHODS = {
    "set": ("set", {}),
    "path_weight": ("path_weight", {}),
    "sensitivity (relative)": ("sensitivity", {"form": "relative"}),
    "sensitivity (paper)": ("sensitivity", {"form": "paper"}),
}


@dataclass
class Timing:
    """Seconds for one training epoch with the method's hooks, and for its topology updates."""

    epoch_s: float
    update_s: list[float]


def training_data(synthetic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """STEPS * BATCH flattened training images and labels (real MNIST unless ``synthetic``)."""
    count = STEPS * BATCH
    if synthetic:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, 784, generator=generator), torch.randint(0, 10, (count,), generator=generator)
    data = load_dataset("mnist")
    return data.x_train[:count].flatten(1), data.y_train[:count]


def time_method(method: str, params: dict, x: torch.Tensor, y: torch.Tensor, repeats: int) -> Timing:
    """Train one epoch with the method, then time its end-of-epoch update from the same state."""
    torch.manual_seed(0)
    model = MLP(784, [300, 100], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, method, density=DENSITY, **params)
    model.train()
    started = time.perf_counter()
    for batch in torch.arange(x.shape[0]).split(BATCH):
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsifier.step()
    epoch_s = time.perf_counter() - started
    weights, state = {k: v.clone() for k, v in model.state_dict().items()}, sparsifier.state_dict()
    update_s = []
    for _ in range(repeats):
        model.load_state_dict(weights)
        sparsifier.load_state_dict(state)
        started = time.perf_counter()
        sparsifier.method.update()
        update_s.append(time.perf_counter() - started)
    sparsifier.remove()
    return Timing(epoch_s, update_s)


def main() -> None:
    """Parse options, time every method, print a table of ratios to the reference epoch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--synthetic", action="store_true", help="random data of MNIST's shape")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = training_data(args.synthetic)
    timings = {label: time_method(*spec, x, y, args.repeats) for label, spec in METHODS.items()}
    reference = timings["set"].epoch_s
    print(
        f"LeNet-300-100, density {DENSITY}, epoch = {STEPS} steps of batch {BATCH}, "
        f"torch threads {torch.get_num_threads()}, {'synthetic' if args.synthetic else 'MNIST'} data"
    )
    print(f"reference epoch (set, no hooks): {reference:.3f} s")
    print(f"{'method':24} {'epoch s':>8} {'vs set':>7} {'update ms':>10} {'update/epoch':>13}")
    for name, timing in timings.items():
        update = statistics.median(timing.update_s)
        print(
            f"{name:24} {timing.epoch_s:8.3f} {timing.epoch_s / reference:6.2f}x "
            f"{update * 1000:10.1f} {update / reference:12.2%}"
        )
    print("target: update/epoch <= 3%")


if __name__ == "__main__":
    main()
