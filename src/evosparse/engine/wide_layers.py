"""Learning rates and readout scale for linear layers wider than a base fan-in, so any width trains like the base.

One SGD step changes a unit's pre-activation by about η · k · E[h²] · g for a unit with k active inputs
(its non-negative ReLU inputs are correlated, so the k weight updates add up), so in the standard
parametrisation the largest stable rate falls as 1/fan-in (Yang & Hu 2021, "Feature learning in
infinite-width neural networks", section 3: the standard parametrisation is stable only for rates
O(1/width)). With ε-Erdős–Rényi layers the hidden fan-ins stay near 2ε at any width, but the output
layer (ε(n + c) connections, capped at its n · c entries) turns dense with fan-in n: at n = 30 000 the
default lr 0.05 with momentum 0.9 drove the loss of the first steps to 480 (784-30000³-10 on MNIST,
batch 40), against 12 at n = 1000.

The rule, anchored at :data:`BASE_FAN_IN` where it changes nothing (LeNet, SET's 1000-wide MLPs, the
GPT and the VAE are below it):

- every sparse linear layer of a sparse method whose mean active fan-in k exceeds the base trains at
  the run's rate times base / k (its own optimizer parameter group; biases keep the run's rate, their
  step does not grow with k, and k is the layer's budget for a method that prunes from a sparse start). Dense
  training (``dense``, ``gmp``, ``granet`` and ``prune`` started dense, and linear layers left out of the
  sparse ones) keeps plain SGD semantics: a user's wide dense baseline
  trains as in any PyTorch loop;
- the model's readout (the layer named by its ``readout`` attribute: the MLP's output layer) follows
  µP's readout rule (Yang et al. 2022, "Tensor Programs V", Table 3, SGD: initial variance ∝ 1/fan_in²,
  rate ∝ 1/fan_in): besides the rate, its initial weights are scaled by √(base / k), so the logits
  start near zero and the first loss near ln(classes) at any width.

Measured (784-30000³-10, ε 20, MNIST, batch 40, lr 0.05, momentum 0.9): loss after 5 steps 480 → 20,
mean over the first 200 steps 16.0 → 1.7 (the 1000-wide MLP, which the rule leaves alone: 12 and 0.75).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from evosparse.sparsifier import Sparsifier

#: Fan-in up to which a linear layer keeps the run's learning rate and initialisation.
BASE_FAN_IN = 1024


@dataclass(frozen=True)
class WideLayer:
    """A linear layer above :data:`BASE_FAN_IN`: its name, mean active fan-in and the factor on its rate."""

    name: str
    fan_in: float
    rate_factor: float


def wide_linear_layers(sparsifier: Sparsifier) -> list[tuple[WideLayer, list[nn.Parameter]]]:
    """Every sparse linear layer of a run that starts sparse whose mean fan-in at its budget exceeds
    :data:`BASE_FAN_IN`, with its trained weight parameters (all its module's own parameters but the bias).

    The budget, not the initial count: a method that prunes from a sparse start (GraNet) trains most of
    the run, and ends, at its budget."""
    if not sparsifier.method.sparse or type(sparsifier.method).starts_dense_with(sparsifier.hparams):
        return []
    found = [
        _wide(layer.name.rpartition(".")[0], layer.module, budget / layer.fan_out_axis_size)
        for layer, budget in zip(sparsifier.topology.layers, sparsifier.plan.budgets)
        if layer.is_linear
    ]
    return [(wide, params) for wide, params in found if wide.rate_factor < 1.0 and params]


def _wide(name: str, module: nn.Module, fan_in: float) -> tuple[WideLayer, list[nn.Parameter]]:
    bias = getattr(module, "bias", None)
    params = [p for p in module.parameters(recurse=False) if p is not bias]
    return WideLayer(name, fan_in, min(1.0, BASE_FAN_IN / max(fan_in, 1.0))), params


@torch.no_grad()
def apply_wide_layer_rules(
    model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier: Sparsifier
) -> list[WideLayer]:
    """Give each wide linear layer its scaled rate (a parameter group copying the settings of the group it
    leaves) and scale the readout's initial weights; return the layers changed. Call once, after the
    Sparsifier is built and before the first step and any learning-rate scheduler."""
    readout = getattr(model, "readout", None)
    changed, moved = [], set()
    for wide, params in wide_linear_layers(sparsifier):
        for param in params:
            if id(param) in moved:  # a parameter packing several layers (attention projections) moves once
                continue
            moved.add(id(param))
            group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
            group["params"] = [p for p in group["params"] if p is not param]
            settings = {key: value for key, value in group.items() if key != "params"}
            optimizer.add_param_group({**settings, "params": [param], "lr": group["lr"] * wide.rate_factor})
            if wide.name == readout:
                param.mul_(math.sqrt(wide.rate_factor))
        changed.append(wide)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return changed
