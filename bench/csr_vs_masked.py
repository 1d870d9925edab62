"""Training step time, peak memory and SET update time: masked backend vs CsrLinear, in one run.

Usage: python bench/csr_vs_masked.py [--widths 1000,4000,16000] [--densities 0.1,0.02,0.01]
                                     [--batch 128] [--steps 5] [--min-case-seconds 2]
                                     [--case-seconds 40] [--threads 1] [--clock cpu|wall]

Model: an MLP in -> W -> W -> 10 (in = 784, ReLU), every weight sparse at the given density
(uniform distribution), SGD with momentum 0.9, cross-entropy on random data of one batch.

- masked: ``nn.Linear`` layers under ``evosparse.sparsify(..., method="set")`` — one step is
  zero_grad, forward, backward (the gradient hook masks dL/dW), ``optimizer.step()`` and
  ``sparsifier.step()`` (re-masks the weights): what the engine does per batch;
- csr: the same MLP built on the meta device and sparsified with ``backend="csr"``: its
  :class:`CsrLinear` layers are drawn sparse directly (no dense tensor at any point) — one step is
  zero_grad, forward, backward, ``optimizer.step()`` and ``sparsifier.step()`` (nothing to re-mask).

SET update: one update of all three layers at ζ = 0.3 (``sparsifier.method.update()``, the same code
on both backends), without the invariant check the engine adds.

Each (backend, width, density) runs in its own process, so that memory figures do not mix. Peak
memory is the process's peak resident set size (VmHWM of /proc/self/status) during the training
steps, minus the resident size before the model was built: it counts every allocation, including
torch's and MKL's native ones, which tracemalloc (Python allocations only) does not see. Once the
model and optimizer are built, freed memory is handed back to the system (glibc ``malloc_trim``)
and the peak is reset (/proc/self/clear_refs), so transient set-up costs (the masked backend's
dense random permutations) are not counted; the model, gradients and optimizer state are, as they
stay resident. A tiny model of the same backend runs first, so that the kernels' code pages are
resident before the baseline is taken. "update extra" is the SET update's peak above the resident
size before it, measured the same way.

Times are per step, best and median of the timed steps (after one warm-up step; at least
``--steps`` steps and ``--min-case-seconds``, at most ``--case-seconds`` once 3 are timed), by CPU time of
the process (``--clock cpu``, robust on a shared machine with one thread) or wall time. "epoch"
extrapolates an MNIST epoch: 469 median steps of 128 plus one SET update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from memory import release_free_memory, reset_peak, status_kib

MNIST_STEPS = 469  # 60,000 samples in batches of 128
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(step: Callable[[], None], clock: str) -> float:
    """Duration of one call in ms."""
    start = CLOCKS[clock]()
    step()
    return (CLOCKS[clock]() - start) * 1e3


def build_masked(width: int, density: float, in_features: int):
    """Masked MLP, its optimizer and sparsifier; returns (train_step, set_update)."""
    import torch
    from torch import nn

    import evosparse

    model = nn.Sequential(
        nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=density, distribution="uniform", zeta=0.3)

    def after_step() -> None:
        sparsifier.step()

    return model, optimizer, after_step, sparsifier.method.update


def build_csr(width: int, density: float, in_features: int):
    """Csr MLP drawn sparse directly (built on the meta device: no dense tensor at any point), its optimizer
    and sparsifier; returns (train_step, set_update)."""
    import torch
    from torch import nn

    import evosparse

    with torch.device("meta"):
        model = nn.Sequential(
            nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "set", density=density, distribution="uniform", zeta=0.3, backend="csr"
    )

    def after_step() -> None:
        sparsifier.step()

    return model, optimizer, after_step, sparsifier.method.update


def worker(args: argparse.Namespace) -> dict:
    """Measure one (backend, width, density) case in this process; return the figures."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.in_features)
    y = torch.randint(0, 10, (args.batch,))
    build = build_masked if args.backend == "masked" else build_csr

    def make_step(width: int, density: float) -> tuple[Callable[[], None], Callable[[], int]]:
        model, optimizer, after_step, update = build(width, density, args.in_features)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            after_step()

        return step, update

    # Run a tiny model first, so that the code pages of the kernels (counted in the resident size)
    # are loaded before the baseline is taken.
    tiny_step, tiny_update = make_step(16, 0.5)
    tiny_step(), tiny_step(), tiny_update()
    del tiny_step, tiny_update
    release_free_memory()
    baseline = status_kib("VmRSS")
    step, update = make_step(args.width, args.density)
    release_free_memory()
    reset_peak()
    timed(step, args.clock)  # warm-up: allocates gradients and momentum
    times: list[float] = []
    started = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - started
        enough = len(times) >= args.steps and elapsed >= args.min_case_seconds
        if enough or (len(times) >= 3 and elapsed >= args.case_seconds):
            break
        times.append(timed(step, args.clock))
    train_peak_kib = status_kib("VmHWM") - baseline
    release_free_memory()
    reset_peak()
    before_update = status_kib("VmRSS")
    update_ms = timed(update, args.clock)
    update_peak_kib = status_kib("VmHWM") - before_update
    return {
        "best_ms": min(times),
        "median_ms": statistics.median(times),
        "steps": len(times),
        "train_peak_mib": train_peak_kib / 1024,
        "update_ms": update_ms,
        "update_extra_mib": update_peak_kib / 1024,
    }


def run_case(args: argparse.Namespace, backend: str, width: int, density: float) -> dict:
    """Run one case in a fresh Python process and parse its JSON line."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        backend,
        "--width",
        str(width),
        "--density",
        str(density),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--case-seconds",
        str(args.case_seconds),
        "--min-case-seconds",
        str(args.min_case_seconds),
        "--threads",
        str(args.threads),
        "--clock",
        args.clock,
        "--in-features",
        str(args.in_features),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} width {width} density {density} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def epoch_seconds(figures: dict) -> float:
    """Extrapolated MNIST epoch: 469 median steps plus one SET update, in seconds."""
    return (MNIST_STEPS * figures["median_ms"] + figures["update_ms"]) / 1e3


def print_row(width: int, density: float, masked: dict, csr: dict) -> None:
    """One table row with masked/csr ratios."""
    print(
        f"| {width} | {density} | {masked['best_ms']:.1f} ({masked['median_ms']:.1f}) | "
        f"{csr['best_ms']:.2f} ({csr['median_ms']:.2f}) | **{masked['median_ms'] / csr['median_ms']:.1f}** | "
        f"{epoch_seconds(masked):.1f} / {epoch_seconds(csr):.2f} = {epoch_seconds(masked) / epoch_seconds(csr):.1f} | "
        f"{masked['train_peak_mib']:.0f} | {csr['train_peak_mib']:.1f} | "
        f"{masked['train_peak_mib'] / max(csr['train_peak_mib'], 0.1):.1f} | "
        f"{masked['update_ms']:.1f} | {csr['update_ms']:.1f} | {masked['update_ms'] / csr['update_ms']:.1f} | "
        f"{masked['update_extra_mib']:.0f} / {csr['update_extra_mib']:.0f} |",
        flush=True,
    )


def load_average() -> str:
    """The 1-minute load average, for judging how shared the machine was."""
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="1000,4000,16000")
    parser.add_argument("--densities", default="0.1,0.02,0.01")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--in-features", type=int, default=784)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case at least (after one warm-up)")
    parser.add_argument(
        "--min-case-seconds", type=float, default=2.0, help="keep timing fast cases for at least this long"
    )
    parser.add_argument(
        "--case-seconds", type=float, default=40.0, help="stop timing a case after this long, once 3 steps are timed"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--worker", choices=("masked", "csr"), help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--density", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.backend = args.worker
        print(json.dumps(worker(args)))
        return

    print(
        f"threads {args.threads}, clock {args.clock}, batch {args.batch}, MLP {args.in_features}-W-W-10; "
        f"load average {load_average()} at start",
        flush=True,
    )
    print(
        "| width | density | masked step ms best (median) | csr step ms best (median) | masked/csr step | "
        "epoch s masked / csr = ratio | masked peak MiB | csr peak MiB | memory ratio | "
        "masked SET update ms | csr SET update ms | update ratio | update extra MiB masked / csr |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for width in [int(w) for w in args.widths.split(",")]:
        for density in [float(d) for d in args.densities.split(",")]:
            masked = run_case(args, "masked", width, density)
            csr = run_case(args, "csr", width, density)
            print_row(width, density, masked, csr)
    print(f"load average {load_average()} at the end", flush=True)


if __name__ == "__main__":
    main()
