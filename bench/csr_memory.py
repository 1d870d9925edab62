"""Peak memory of csr SET training at the limit: process peak RSS and bytes per connection, one workload per process.

Usage: python bench/csr_memory.py [--workload mnist4000|wide30000|huge] [--quick] [--steps N | --epoch]
                                  [--batch N] [--threads N] [--mnist] [--progress N]

Workloads (issue 20), each trained with SET (ε 20 unless said), SGD lr 0.05 (``--lr``) momentum 0.9, the engine's
build (a csr model drawn sparse directly when large) and wide-layer rules, then an evaluation of the test
set (in passes of bounded activation memory) and one topology update:

- ``mnist4000``: 784-4000³-10, MNIST-shaped data (50 000 training and 10 000 test samples, random values:
  memory does not depend on them), batch 40, one epoch;
- ``wide30000``: 3312-30000³-5, 200 samples (and 200 test), batch 2, one epoch;
- ``huge``: 784-2500000⁴-10 at ε 1 (10 M hidden neurons, 20 M connections), MNIST-shaped data, batch 32,
  ``--steps`` steps (default 20; ``--epoch``: all 1563, and the whole test set), an evaluation of 1000
  test samples, then the update.

``--mnist`` trains the MNIST-shaped workloads on MNIST itself (then the accuracy means something).
``--epoch`` trains a whole epoch and evaluates the whole test set whatever the workload's defaults;
``--batch`` changes the batch size, ``--width`` the width of every hidden layer (the largest network that
fits: ``--workload huge --width W --steps 3 --test 64``), ``--test`` the number of test samples evaluated;
``--progress N`` prints the elapsed time and mean loss every N steps.
``--quick`` shrinks every width 100-fold and the data to 1000 samples (a smoke test). Printed: the peak RSS
of the whole process (VmHWM: torch, MKL and the data included, comparable to another program's), the RSS
after each phase, the bytes per connection (index tensors of the CSR structures; values, gradient and
momentum: 12 more), seconds per step and the test accuracy. Memory is not distorted by machine load;
times are. Run each workload in its own process (the peak is per process).

Like the ``evosparse`` command, the bench backs tensors of 2 MiB and more with transparent huge pages
(torch's ``THP_MEM_ALLOC_ENABLE``) unless that variable is set: ``THP_MEM_ALLOC_ENABLE=0`` measures without.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, fields, replace

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch allocates anything; see the docstring

import torch  # noqa: E402
from memory import status_kib  # noqa: E402

from evosparse import sparsify  # noqa: E402
from evosparse.backends.csr_build import build_for_backend, direct_draw_applies  # noqa: E402
from evosparse.data import load_dataset  # noqa: E402
from evosparse.engine.objectives import Classification  # noqa: E402
from evosparse.engine.wide_layers import apply_wide_layer_rules  # noqa: E402
from evosparse.models.mlp import MLP  # noqa: E402
from evosparse.sparsifier import Sparsifier  # noqa: E402


@dataclass(frozen=True)
class Workload:
    """A csr MLP to train: widths, ε, batch, samples, steps (None: one epoch)."""

    inputs: int
    hidden: tuple[int, ...]
    classes: int
    epsilon: float
    batch: int
    train: int
    test: int
    steps: int | None = None

    def quick(self) -> Workload:
        """100-fold narrower, at most 1000 samples, at most 20 steps."""
        return Workload(
            self.inputs,
            tuple(max(10, w // 100) for w in self.hidden),
            self.classes,
            self.epsilon,
            self.batch,
            min(self.train, 1000),
            min(self.test, 1000),
            min(self.steps or 20, 20),
        )


WORKLOADS = {
    "mnist4000": Workload(784, (4000,) * 3, 10, 20.0, 40, 50_000, 10_000),
    "wide30000": Workload(3312, (30_000,) * 3, 5, 20.0, 2, 200, 200),
    "huge": Workload(784, (2_500_000,) * 4, 10, 1.0, 32, 50_000, 1000, steps=20),
}


def rss_mib() -> tuple[float, float]:
    """(resident MiB now, peak resident MiB so far)."""
    return status_kib("VmRSS") / 1024, status_kib("VmHWM") / 1024


def index_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of every csr structure's index tensors, connections) over the model's csr layers."""
    total = connections = 0
    for module in model.modules():
        structure = getattr(module, "structure", None)
        if structure is None:
            continue
        total += sum(getattr(structure, f.name).nbytes for f in fields(structure) if f.name != "shape")
        connections += structure.col_indices.numel()
    return total, connections


def build_set_mlp(
    inputs: int, hidden: tuple[int, ...], classes: int, epsilon: float, total_steps: int, lr: float = 0.05
) -> tuple[MLP, torch.optim.Optimizer, Sparsifier]:
    """The workloads' model: a csr MLP trained by SET at ``epsilon`` with SGD (momentum 0.9), built as the engine
    builds it (drawn sparse directly when large) with its wide-layer rules."""
    model = build_for_backend(
        "csr",
        lambda: MLP(inputs, list(hidden), classes),
        torch.device("cpu"),
        direct=lambda skeleton: direct_draw_applies(skeleton, "sparse_kaiming"),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sparsifier = sparsify(model, optimizer, "set", epsilon=epsilon, backend="csr", seed=0, total_steps=total_steps)
    apply_wide_layer_rules(model, optimizer, sparsifier)
    return model, optimizer, sparsifier


def run(name: str, work: Workload, mnist: bool, progress: int, lr: float) -> None:
    """Build, train, evaluate, update; print memory after each phase."""
    phases = [("start (torch imported)", rss_mib())]
    generator = torch.Generator().manual_seed(0)
    if mnist:
        data = load_dataset("mnist")
        x_train, y_train = data.x_train.flatten(1)[: work.train], data.y_train[: work.train]
        x_test, y_test = data.x_test.flatten(1)[: work.test], data.y_test[: work.test]
        del data
    else:
        x_train = torch.randn(work.train, work.inputs, generator=generator)
        y_train = torch.randint(0, work.classes, (work.train,), generator=generator)
        x_test = torch.randn(work.test, work.inputs, generator=generator)
        y_test = torch.randint(0, work.classes, (work.test,), generator=generator)
    phases.append(("data", rss_mib()))

    steps_per_epoch = -(-work.train // work.batch)
    # Planned as two epochs: SET skips the update after the final epoch, and the one measured must run it.
    model, optimizer, sparsifier = build_set_mlp(
        work.inputs, work.hidden, work.classes, work.epsilon, 2 * steps_per_epoch, lr
    )
    phases.append(("model built", rss_mib()))
    objective = Classification()
    order = torch.randperm(work.train, generator=generator)
    steps = work.steps or steps_per_epoch
    started = time.perf_counter()
    loss_sum = 0.0
    for step in range(steps):
        batch = order[(step * work.batch) % work.train :][: work.batch]
        loss = objective.loss(model, x_train[batch], y_train[batch])
        optimizer.zero_grad(set_to_none=True)  # as the engine's loop does
        loss.backward()
        optimizer.step()
        sparsifier.step()
        loss_sum += loss.item()
        if progress and (step + 1) % progress == 0:
            elapsed = time.perf_counter() - started
            mean_loss = loss_sum / (step + 1)
            print(f"  step {step + 1}/{steps}: {elapsed:.0f} s, mean train loss {mean_loss:.3f}", flush=True)
    seconds = time.perf_counter() - started
    phases.append((f"{steps} steps", rss_mib()))
    model.eval()
    evaluation_started = time.perf_counter()
    with torch.no_grad():
        test_loss, test_acc = objective.evaluate(model, x_test, y_test)
    evaluation_seconds = time.perf_counter() - evaluation_started
    phases.append(("evaluation", rss_mib()))
    update_started = time.perf_counter()
    sparsifier.end_epoch()
    update_seconds = time.perf_counter() - update_started
    phases.append(("topology update", rss_mib()))

    indices, connections = index_bytes(model)
    print(
        f"{name}: {work.inputs}-{'-'.join(map(str, work.hidden))}-{work.classes}, ε {work.epsilon}, batch "
        f"{work.batch}, {work.train} samples; {connections:,} connections, {sum(work.hidden):,} hidden neurons"
    )
    print(
        f"  bytes per connection: indices {indices / connections:.2f} + values, gradient, momentum 12 = "
        f"{indices / connections + 12:.2f}"
    )
    print(
        "  RSS after each phase, in brackets the peak so far (MiB): "
        + ", ".join(f"{phase} {now:.0f} ({peak:.0f})" for phase, (now, peak) in phases)
    )
    print(f"  peak RSS {status_kib('VmHWM') / 1024:.0f} MiB")
    print(
        f"  {seconds / steps * 1e3:.1f} ms/step over {steps} steps ({seconds:.1f} s); mean train loss "
        f"{loss_sum / steps:.3f}; test loss {test_loss:.3f}, accuracy {test_acc:.4f} on {len(y_test)} samples"
        + ("" if mnist else " (random labels: chance)")
        + f"; evaluation {evaluation_seconds:.1f} s, topology update {update_seconds:.2f} s"
    )
    print(
        f"RESULT workload={name} train_s={seconds:.3f} steps={steps} evolution_s={update_seconds:.3f} "
        f"eval_s={evaluation_seconds:.3f} peak_rss_mib={status_kib('VmHWM') / 1024:.1f} connections={connections}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="mnist4000")
    parser.add_argument("--quick", action="store_true")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None)
    length.add_argument("--epoch", action="store_true", help="one whole epoch, then the whole test set")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--width", type=int, default=None, help="every hidden layer this wide (the same depth)")
    parser.add_argument("--test", type=int, default=None, help="test samples evaluated")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--progress", type=int, default=0, help="print progress every N steps (0: never)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mnist", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = WORKLOADS[args.workload]
    if args.steps is not None:
        work = replace(work, steps=args.steps)
    if args.epoch:
        work = replace(work, steps=None, test=10_000 if work.inputs == 784 else work.test)
    if args.batch is not None:
        work = replace(work, batch=args.batch)
    if args.width is not None:
        work = replace(work, hidden=(args.width,) * len(work.hidden))
    if args.test is not None:
        work = replace(work, test=args.test)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ['THP_MEM_ALLOC_ENABLE']}"
    )
    if args.mnist and work.inputs != 784:
        parser.error(f"--mnist needs a workload with 784 inputs; {args.workload} has {work.inputs}")
    run(args.workload, work.quick() if args.quick else work, args.mnist, args.progress, args.lr)


if __name__ == "__main__":
    main()
