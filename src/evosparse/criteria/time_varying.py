"""The time-varying rule for the evolution parameters λ, ζ, δ of Path-Weight and Sensitivity.

Naji, Abtahi and Marvasti, "Efficient Sparse Artificial Neural Networks", eq. 7-9: after each topology
update compare the mean importance of all nodes (primary criterion, eq. 7) with the mean importance of
what was just removed (secondary criterion, eq. 8). Multiply every parameter by K1 when the removed part
was much weaker than average (C_sec < K3 C_prim: the update can afford to be bolder), by K2 when it was
not much weaker (C_sec > K4 C_prim: the structure is maturing), else keep it (eq. 9). The paper's
constants are K1 = 2, K2 = 0.5, K3 = 0.1, K4 = 0.5.

How we read the points the paper leaves open (also in docs/design.md):

* **Which nodes eq. 7 averages over.** Every node that can be the source of a connection: the input
  units (channels) of every sparse layer, i.e. the input layer and the hidden layers. Output units have
  no outgoing connection (eq. 11 gives them nothing) and never receive growth.
* **What eq. 8 sums.** It sums *node* importances over the set of eliminated *connections*; we take for
  each removed connection the importance of its source node, so C_sec is the mean source importance of
  the removed connections (a node that lost three connections counts three times). C_sec and C_prim then
  have the same unit, which a ratio test needs.
* **Nothing removed.** C_sec = 0: nothing weak enough was found, so the parameters grow (K1).
* **Starting from large values.** The parameters start at the values the user gives (the methods'
  ``lam``, ``zeta``, ``delta``: the start is the largest, most exploratory setting) and the rule never
  lets a parameter exceed its starting value. λ and ζ are fractions and cannot pass 1 anyway; without
  the ceiling δ would double at every update that removes nothing (C_sec = 0) and densify the network.
* **What it does in practice** (LeNet-300-100, MNIST, density 0.05): C_sec / C_prim stayed between
  0.65 and 1.8 whenever something was removed, so every update halves λ, ζ and δ until removals stop
  (about 4-6 epochs); then the parameters oscillate at the floor (nothing removed: ×2, a few removed:
  ×0.5). Because δ < 1 grows fewer connections than it removes, the time-varying versions lose
  connections: density 0.05 became 0.0498 (path_weight) and 0.041 (sensitivity) after 10 epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from evosparse.errors import UsageError


@dataclass(frozen=True)
class TimeVaryingRule:
    """The constants of eq. 9: grow by ``k1`` when C_sec < k3·C_prim, shrink by ``k2`` when C_sec > k4·C_prim."""

    k1: float = 2.0
    k2: float = 0.5
    k3: float = 0.1
    k4: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.k2 < 1 < self.k1 and 0 <= self.k3 < self.k4 < 1):
            raise UsageError(
                f"time-varying constants need 0 < K2 < 1 < K1 and 0 <= K3 < K4 < 1, "
                f"got K1={self.k1}, K2={self.k2}, K3={self.k3}, K4={self.k4}"
            )

    def factor(self, c_prim: float, c_sec: float) -> float:
        """The multiplier of eq. 9 for criteria (C_prim, C_sec)."""
        if c_sec < self.k3 * c_prim:
            return self.k1
        if c_sec > self.k4 * c_prim:
            return self.k2
        return 1.0

    def next_values(
        self, values: Mapping[str, float], ceilings: Mapping[str, float], c_prim: float, c_sec: float
    ) -> dict[str, float]:
        """ρ^(t+1) for every parameter ρ in ``values`` (eq. 9), each capped at its ceiling."""
        factor = self.factor(c_prim, c_sec)
        return {name: min(value * factor, ceilings[name]) for name, value in values.items()}


def primary_criterion(node_importance: Sequence[Tensor]) -> float:
    """C_prim (eq. 7): the mean importance over all source nodes (one tensor of importances per layer)."""
    if not node_importance:
        raise UsageError("the primary criterion needs at least one layer of node importances")
    total = sum(float(layer.double().sum()) for layer in node_importance)
    count = sum(layer.numel() for layer in node_importance)
    return total / count if count else 0.0


def secondary_criterion(removed_source_importance: Tensor) -> float:
    """C_sec (eq. 8): the mean source-node importance of the removed connections; 0 when none was removed."""
    if removed_source_importance.numel() == 0:
        return 0.0
    return float(removed_source_importance.double().mean())


def source_of(shape: tuple[int, ...], flat_positions: Tensor) -> Tensor:
    """Source unit (the second axis: input unit or input channel) of flat positions of a weight ``shape``."""
    per_source = 1
    for size in shape[2:]:
        per_source *= int(size)
    return (flat_positions // per_source) % int(shape[1])
