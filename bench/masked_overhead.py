"""What the masked backend adds to a training step: a masked MLP against the same dense MLP, in one run.

Usage: python bench/masked_overhead.py [--hidden 300,100] [--density 0.05] [--batch 100] [--steps 50]
                                       [--repeats 7] [--threads 1] [--clock cpu|wall]

Both models are the same ``784-hidden-10`` MLP trained by SGD with momentum 0.9 on one random batch; the
masked one is under ``evosparse.sparsify(..., "set")``, so each of its steps also masks the weight
gradients (a hook) and re-masks the weights after ``optimizer.step()`` (``sparsifier.step()``): the cost
the masked backend adds to a dense step, which issue 20 asks to keep within 1.1×. Blocks of ``--steps``
steps of each model run in turn ``--repeats`` times (interleaved, so that the machine's load changes
touch both alike); the script prints the best and median block time per step and their ratio.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from csr_ops import interleaved_times
from torch import nn

import evosparse


def mlp(hidden: list[int]) -> nn.Sequential:
    sizes = [784, *hidden, 10]
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="300,100")
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden = [int(width) for width in args.hidden.split(",")]
    x, y = torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,))

    def block(sparse: bool):
        torch.manual_seed(0)
        model = mlp(hidden)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sparsifier = evosparse.sparsify(model, optimizer, "set", density=args.density) if sparse else None

        def steps() -> None:
            for _ in range(args.steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                if sparsifier is not None:
                    sparsifier.step()

        return steps

    times = interleaved_times({"dense": block(False), "masked": block(True)}, args.repeats, args.clock)
    per_step = {name: [t / args.steps for t in values] for name, values in times.items()}
    print(
        f"784-{args.hidden}-10, density {args.density}, batch {args.batch}, "
        f"{args.threads} thread(s), {args.clock} clock"
    )
    for name, values in per_step.items():
        print(f"{name:>7}: best {min(values):.3f} ms, median {statistics.median(values):.3f} ms per step")
    best = min(per_step["masked"]) / min(per_step["dense"])
    median = statistics.median(per_step["masked"]) / statistics.median(per_step["dense"])
    print(f"masked / dense: {best:.2f}× (best), {median:.2f}× (median)")


if __name__ == "__main__":
    main()
