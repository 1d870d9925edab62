"""Time one training epoch of the CIFAR ResNet-18 on random CIFAR-shaped data, extrapolated from a few batches.

Usage: python bench/resnet18_epoch.py [--batches 5] [--warmup 1] [--batch-size 128] [--epoch-size 50000]
                                      [--threads N] [--device cpu|cuda] [--augment]

Each step is what an epoch repeats: (optionally) random crop + flip of the batch, forward, cross-entropy,
backward and an SGD-with-momentum update. After ``--warmup`` untimed steps, ``--batches`` steps are
timed one by one (on CUDA with a synchronisation before each clock read); the epoch estimate is the
median step time × ceil(epoch size / batch size), CIFAR's 50,000 training images by default. The data
are random, so the figure is the compute cost of an epoch, without data loading. The load average is
printed before and after: on a shared machine, trust a run whose load stayed near the thread count.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time

import torch
from torch.nn import functional as F

from evosparse.data.augment import random_crop_flip
from evosparse.models.resnet import resnet18_cifar


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epoch-size", type=int, default=50_000, help="training images per epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--augment", action="store_true", help="random crop + flip each batch, as in training")
    return parser.parse_args()


def step_times(args: argparse.Namespace) -> list[float]:
    """Seconds of each timed training step."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet18_cifar(10).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for index in range(args.warmup + args.batches):
        synchronise()
        start = time.perf_counter()
        batch = random_crop_flip(images, generator) if args.augment else images
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch), labels).backward()
        optimizer.step()
        synchronise()
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    on_cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(0) if on_cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {device_name}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    times = step_times(args)
    median, best = statistics.median(times), min(times)
    batches_per_epoch = math.ceil(args.epoch_size / args.batch_size)
    print(
        f"per batch of {args.batch_size}: median {median * 1e3:.0f} ms, best {best * 1e3:.0f} ms "
        f"over {len(times)} batches ({', '.join(f'{t * 1e3:.0f}' for t in times)} ms)"
    )
    epoch = median * batches_per_epoch
    print(
        f"epoch of {args.epoch_size} images = {batches_per_epoch} batches: {epoch:.1f} s ({epoch / 60:.1f} min) "
        f"from the median, {best * batches_per_epoch:.1f} s from the best"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
