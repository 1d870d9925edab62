"""What the switcher method costs next to the task network (LeNet-300-100, 784-300-100-10), in one run.

Usage: python bench/switcher_cost.py [--batch 100] [--repeats 30] [--threads 1]
                                     [--channels 4] [--depth 3]

Times, per training step with SGD (momentum 0.9) on random MNIST-shaped batches:

* ``dense``: the plain model, no sparsifier (the reference, 1.00);
* ``direct W⊙Z``: a model whose linear layers compute ``F.linear(x, W⊙Z, b)`` themselves — what the
  connection-mode gating would cost without the forward hook's discarded product;
* ``masks only``: method ``static`` at density 1, the masked backend's own cost (gradient masking and
  ``apply_masks``), which every sparse method pays;
* ``task epoch``: a step of the switcher method in a task epoch (gates fixed), both modes;
* ``switcher epoch``: a step in a switcher epoch (task forward/backward, then the switchers' forward,
  backward and step), both modes;
* the switcher forward+backward alone for each matrix (784×300, 300×100, 100×10) and for all three.

All variants are interleaved repeat by repeat, in a shuffled order (fixed seed) so that none always
follows the heavy switcher passes; cells are the best time in ms and (in brackets) the median, ratios
are to the dense step's best time. An epoch of either phase has the same number of steps as a dense
epoch, so the per-step ratios are also the per-epoch ratios; over a run that alternates phases the cost
is the mean of the two. With ``switcher_interval=k`` a switcher epoch step costs about a task epoch
step plus 1/k of the switchers' forward+backward. The load average is printed before and after: on a
shared machine, trust a run whose load stayed near the thread count.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

import evosparse
from evosparse.methods.switcher_net import SwitcherNet

SIZES = (784, 300, 100, 10)


def lenet() -> nn.Sequential:
    """LeNet-300-100 as a plain MLP."""
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if index < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DirectlyGated(nn.Module):
    """LeNet whose layers multiply their weights by fixed gates inside their own forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net = lenet()
        self.linears = [m for m in self.net if isinstance(m, nn.Linear)]
        self.gates = [torch.rand_like(m.weight) + 0.5 for m in self.linears]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, (layer, gates) in enumerate(zip(self.linears, self.gates)):
            x = F.linear(x, layer.weight * gates, layer.bias)
            if index < len(self.linears) - 1:
                x = F.relu(x)
        return x


def step_function(model: nn.Module, batch: int, sparsifier=None) -> Callable[[], None]:
    """One SGD training step on a fixed random batch (plus ``sparsifier.step()`` when given)."""
    optimizer = sparsifier.optimizer if sparsifier else torch.optim.SGD(model.parameters(), 0.01, 0.9)
    x, y = torch.randn(batch, SIZES[0]), torch.randint(0, SIZES[-1], (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.step()

    return step


def masked_step(batch: int) -> Callable[[], None]:
    """A training step under method ``static`` at density 1: masks that never change."""
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return step_function(model, batch, evosparse.sparsify(model, optimizer, "static", density=1.0))


def method_step(mode: str, phase: str, batch: int, channels: int, depth: int) -> Callable[[], None]:
    """A training step of the switcher method in the given phase ("task" or "switcher")."""
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(
        model, optimizer, "switcher", density=1.0, mode=mode, channels=channels, depth=depth
    )
    if phase == "task":
        sparsifier.end_epoch()  # epoch 0 trains the switchers, epoch 1 the task network
    return step_function(model, batch, sparsifier)


def switcher_pass(shapes: list[tuple[int, int]], mode: str, channels: int, depth: int) -> Callable[[], None]:
    """Forward and backward of the switchers of the given (out, in) matrices."""
    nets = [SwitcherNet(out, n_in, mode, channels=channels, depth=depth) for out, n_in in shapes]
    weights = [torch.randn(out, n_in) * (2 / n_in) ** 0.5 for out, n_in in shapes]

    def run() -> None:
        sum(net(weight).sum() for net, weight in zip(nets, weights)).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [(n_out, n_in) for n_in, n_out in zip(SIZES[:-1], SIZES[1:])]
    size = {"channels": args.channels, "depth": args.depth}
    cases: dict[str, Callable[[], None]] = {
        "dense": step_function(lenet(), args.batch),
        "direct W⊙Z (no hook)": step_function(DirectlyGated(), args.batch),
        "masks only (static, density 1)": masked_step(args.batch),
    }
    for mode in ("connection", "neuron"):
        cases[f"{mode}: task epoch step"] = method_step(mode, "task", args.batch, **size)
        cases[f"{mode}: switcher epoch step"] = method_step(mode, "switcher", args.batch, **size)
        for out, n_in in shapes:
            cases[f"{mode}: switcher fwd+bwd {n_in}x{out}"] = switcher_pass([(out, n_in)], mode, **size)
        cases[f"{mode}: switcher fwd+bwd, all three"] = switcher_pass(shapes, mode, **size)

    print(f"load average before: {os.getloadavg()[0]:.2f}   threads: {args.threads}   batch: {args.batch}")
    for run in cases.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = random.Random(0)
    for _ in range(args.repeats):
        names = list(cases)
        order.shuffle(names)
        for name in names:
            started = time.perf_counter()
            cases[name]()
            times[name].append((time.perf_counter() - started) * 1e3)
    reference = min(times["dense"])
    width = max(len(name) for name in cases)
    print(f"{'case':<{width}}  {'best ms':>8}  {'(median)':>9}  {'÷ dense step':>12}")
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        print(f"{name:<{width}}  {best:8.2f}  ({median:7.2f})  {best / reference:12.2f}")
    extras = sum(
        p.numel()
        for out, n_in in shapes
        for p in SwitcherNet(out, n_in, channels=args.channels, depth=args.depth).parameters()
    )
    print(f"switcher parameters (connection mode, all three): {extras}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
