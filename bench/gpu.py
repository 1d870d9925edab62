"""Dense, masked and csr on a GPU (or the CPU): step time, peak memory, SET update time and an MNIST epoch, in one run.

Usage: python bench/gpu.py [--device auto|cpu|cuda] [--widths 1024,4096,16384,32768]
                           [--densities 0.2,0.05,0.01,0.001] [--batches 128,1024] [--steps 20] [--warmup 3]
                           [--epoch-steps N] [--data auto|mnist|synthetic] [--quick]

Step cases (issue 15's table): an MLP 784-W-W-10 (ReLU), SGD with momentum 0.9, cross-entropy on one random
batch kept on the device. ``dense`` is the plain model; ``masked`` is the same model under
``evosparse.sparsify(..., "set", distribution="uniform")`` (every weight sparse at the density; a step is
zero_grad, forward, backward, ``optimizer.step()`` and ``sparsifier.step()``, as the engine's); ``csr`` is
the model built on the meta device and sparsified with ``backend="csr"`` (drawn sparse directly, no dense
tensor at any point), then moved to the device. A step time is the mean over ``--steps`` steps timed as one
block after ``--warmup`` untimed steps, with the device synchronised before and after the block (so a GPU
is timed by what it does, not by how fast Python queues kernels). "SET update" is one
``sparsifier.method.update()`` at ζ = 0.3, synchronised.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the case was
built (the build, the warm-up and the timed steps count); on the CPU, the peak resident set size above the
resident size before the case, in the same process after freed memory was handed back (indicative only:
the allocator may keep pages of earlier cases).

MNIST epoch: LeNet-300-100 (784-300-100-10) at density 0.1 (Erdős–Rényi for masked and csr), batch 100,
SGD momentum 0.9, the training images on the device shuffled per epoch, then the SET update that ends the
epoch; the whole epoch synchronised once at its end. ``--data auto`` uses MNIST where ``load_dataset("mnist")``
finds it (the ``mnist`` package or the cache; it may try a download) and random data of MNIST's shape
otherwise; ``--epoch-steps N`` times the first N steps and scales to the full epoch (said in the output).

``--quick``: widths 256,1024, densities 0.1,0.01, batches 32,128, 5 steps, 100 MNIST steps, synthetic data
(seconds on a CPU; well under a minute on a GPU). Ratios are of figures measured in this one run.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from memory import release_free_memory, reset_peak, status_kib
from torch import nn
from torch.nn import functional as F

import evosparse
from evosparse.data import load_dataset
from evosparse.engine.config import DEVICES, device_type
from evosparse.errors import EvosparseError

BACKENDS = ("dense", "masked", "csr")
IN_FEATURES, CLASSES = 784, 10
LENET = (300, 100)
MNIST_BATCH, MNIST_DENSITY = 100, 0.1
QUICK = {"widths": "256,1024", "densities": "0.1,0.01", "batches": "32,128", "steps": 5, "epoch_steps": 100}


@dataclass
class Case:
    """What one built model costs: ms per training step, peak memory (MiB) and one SET update (ms)."""

    step_ms: float
    peak_mib: float
    update_ms: float | None


class Meter:
    """Synchronised wall times and peak memory on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, work: Callable[[], object]) -> float:
        """Wall time of ``work()``, the device synchronised before and after."""
        self.sync()
        started = time.perf_counter()
        work()
        self.sync()
        return time.perf_counter() - started

    def start_peak(self) -> float:
        """Forget earlier allocations and peaks; returns the baseline the peak is counted above (bytes)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return float(torch.cuda.memory_allocated(self.device))
        release_free_memory()
        reset_peak()
        return status_kib("VmRSS") * 1024.0

    def peak_mib(self, baseline: float) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - baseline) / 2**20
        return (status_kib("VmHWM") * 1024.0 - baseline) / 2**20


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """A ReLU MLP 784 → widths… → 10."""
    sizes = (IN_FEATURES, *widths, CLASSES)
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if index < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def build(
    backend: str, widths: tuple[int, ...], density: float, distribution: str, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], None], Callable[[], object] | None]:
    """(model, optimizer, what follows each optimizer step, the SET update or None) of ``backend`` on ``device``."""
    if backend == "dense":
        model = mlp(widths).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return model, optimizer, lambda: None, None
    if backend == "csr":
        with torch.device("meta"):
            model = mlp(widths)
    else:
        model = mlp(widths).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "set", density=density, distribution=distribution, zeta=0.3, backend=backend
    )
    model.to(device)  # a csr model is drawn on the CPU; the optimizer keeps its parameters as they move
    return model, optimizer, sparsifier.step, sparsifier.method.update


def measure_steps(backend: str, width: int, density: float, batch: int, args: argparse.Namespace, meter: Meter) -> Case:
    """One step case: build, warm up, time ``args.steps`` steps as a block, then one SET update."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, IN_FEATURES, generator=generator).to(meter.device)
    y = torch.randint(0, CLASSES, (batch,), generator=generator).to(meter.device)
    torch.manual_seed(0)
    baseline = meter.start_peak()
    model, optimizer, after_step, update = build(backend, (width, width), density, "uniform", meter.device)

    def steps(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            after_step()

    meter.seconds(lambda: steps(args.warmup))
    step_ms = meter.seconds(lambda: steps(args.steps)) * 1e3 / args.steps
    peak = meter.peak_mib(baseline)
    update_ms = meter.seconds(update) * 1e3 if update is not None else None
    return Case(step_ms, peak, update_ms)


def mnist_data(source: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """MNIST's training split on ``device`` (flattened), or random data of its shape: (x, y, what it is)."""
    if source != "synthetic":
        try:
            data = load_dataset("mnist")
            return data.x_train.flatten(1).to(device), data.y_train.to(device), "MNIST"
        except EvosparseError as error:
            if source == "mnist":
                raise SystemExit(f"bench/gpu.py: --data mnist: {error}") from None
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, IN_FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (50_000,), generator=generator)
    return x.to(device), y.to(device), "random data of MNIST's shape"


def mnist_epoch(backend: str, x: torch.Tensor, y: torch.Tensor, limit: int | None, meter: Meter) -> float:
    """Seconds of one LeNet-300-100 epoch (batch 100) and its SET update; scaled from ``limit`` steps if given."""
    torch.manual_seed(0)
    model, optimizer, after_step, update = build(backend, LENET, MNIST_DENSITY, "erdos_renyi", meter.device)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1)).to(meter.device)
    batches = order.split(MNIST_BATCH)
    timed = batches[:limit] if limit else batches

    def epoch(chosen: tuple[torch.Tensor, ...]) -> None:
        for batch in chosen:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            after_step()

    meter.seconds(lambda: epoch(batches[:3]))  # warm-up: kernels loaded, gradients and momentum allocated
    seconds = meter.seconds(lambda: epoch(timed)) * len(batches) / len(timed)
    return seconds + (meter.seconds(update) if update is not None else 0.0)


def ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "–"
    return f"{numerator / denominator:.2f}×"


def header(device: torch.device) -> str:
    """The hardware and versions the figures were measured on."""
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({os.cpu_count()} cores, torch threads: {torch.get_num_threads()})"
    return f"{where}, torch {torch.__version__}, evosparse {evosparse.__version__}, load {os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--widths", default="1024,4096,16384,32768")
    parser.add_argument("--densities", default="0.2,0.05,0.01,0.001")
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--epoch-steps", type=int, default=None, help="time only this many MNIST steps, scaled")
    parser.add_argument("--data", choices=("auto", "mnist", "synthetic"), default="auto")
    parser.add_argument("--quick", action="store_true", help="a small grid in seconds (see above)")
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
        args.data = "synthetic" if args.data == "auto" else args.data
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: --device cuda was requested but no CUDA device is available")
    device = torch.device(device_type(args.device))
    meter = Meter(device)
    print(f"bench/gpu.py on {header(device)}", flush=True)
    print(f"\nMLP 784-W-W-10, SGD momentum, one step: mean of {args.steps} after {args.warmup} warm-up")
    print(
        "| W | density | batch | dense ms | masked ms | csr ms | masked / dense | dense / csr (speed-up) | "
        "dense MiB | masked MiB | csr MiB | csr / dense memory | SET update masked ms | csr ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for backend in BACKENDS:  # untimed: kernels loaded and allocator pools made before the first figure
        measure_steps(backend, 64, 0.5, 8, args, meter)
    for width in [int(w) for w in args.widths.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            dense = measure_steps("dense", width, 1.0, batch, args, meter)
            for density in [float(d) for d in args.densities.split(",")]:
                masked = measure_steps("masked", width, density, batch, args, meter)
                csr = measure_steps("csr", width, density, batch, args, meter)
                print(
                    f"| {width} | {density} | {batch} | {dense.step_ms:.3f} | {masked.step_ms:.3f} | "
                    f"{csr.step_ms:.3f} | {ratio(masked.step_ms, dense.step_ms)} | "
                    f"**{ratio(dense.step_ms, csr.step_ms)}** | {dense.peak_mib:.1f} | {masked.peak_mib:.1f} | "
                    f"{csr.peak_mib:.1f} | {ratio(csr.peak_mib, dense.peak_mib)} | {masked.update_ms:.2f} | "
                    f"{csr.update_ms:.2f} |",
                    flush=True,
                )
    x, y, what = mnist_data(args.data, device)
    limit = args.epoch_steps
    scaled = f", scaled from its first {limit} steps" if limit else ""
    print(
        f"\nLeNet-300-100 epoch on {what} ({x.shape[0]} samples, batch {MNIST_BATCH}, density {MNIST_DENSITY}"
        f"{scaled}), SET update included"
    )
    epochs = {backend: mnist_epoch(backend, x, y, limit, meter) for backend in BACKENDS}
    print("| backend | epoch s | vs dense |")
    print("|---|---|---|")
    for backend, seconds in epochs.items():
        print(f"| {backend} | {seconds:.3f} | {ratio(seconds, epochs['dense'])} |", flush=True)


if __name__ == "__main__":
    main()
