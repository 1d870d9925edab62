"""The time-varying rule for the evolution parameters λ, ζ, δ of Path-Weight and Sensitivity.

Naji, Abtahi and Marvasti, "Efficient Sparse Artificial Neural Networks", eq. 7-9: after each topology
update compare the mean of all importance measures (primary criterion, eq. 7) with the mean importance of
what was just removed (secondary criterion, eq. 8). Multiply every parameter by K1 when the removed part
was much weaker than average (C_sec < K3 C_prim: the update can afford to be bolder), by K2 when it was
not much weaker (C_sec > K4 C_prim: the structure is maturing), else keep it (eq. 9). The paper's
constants are K1 = 2, K2 = 0.5, K3 = 0.1, K4 = 0.5.

What eq. 7-8 average is open: eq. 7 sums importances "∀ i, k" with node subscripts n_i^(k), eq. 8 the
same symbols over U^(t), "the set of eliminated connections", and the text calls them "the average of
all importance measures and the average of the eliminated ones". Two readings (``criteria``):

* **connection**: both average the importance of *connections* — C_prim over every active
  connection, C_sec over the removed ones; a connection's importance is its Path-Weight normalised
  weight |w|/|F_k| (eq. 3) or its sensitivity S (eq. 10). The removed connections are the weakest, so
  C_sec < C_prim and the ratio says how much weaker they are: far weaker (< K3) and the update can be
  bolder (×K1), close to average (> K4) and it is cutting into useful structure (×K2). The parameters
  can grow as well as shrink, as eq. 9's three cases intend; in practice (digits, 64-300-100-10) the
  ratio stayed between 0.014 and 0.37, mostly below K3, so the ceiling held every parameter at its start
  and the runs were identical to the static version's.
* **node**: C_prim is the mean importance of every node that can be a source (the input units or
  channels of every sparse layer; output units have no outgoing connection and never receive growth)
  and C_sec, for each removed connection, the importance of its *source node* (a node that lost three
  connections counts three times), so both have a node's unit. A removed connection's source is an
  ordinary node, so the ratio stays near 1 (0.65-1.8 on LeNet-300-100, MNIST, density 0.05): every
  update halves λ, ζ and δ until removals stop (4-6 epochs), the topology freezes, and with δ < 1 the
  network loses connections (density 0.05 → 0.041 for sensitivity after 10 epochs). The default: it
  does what the paper says the rule is for, reaching "a finalized structure" in fewer epochs.

Both readings: nothing removed gives C_sec = 0 (×K1). "We initialize these parameters with the large
values": the rule starts from the values the user gives (``lam``, ``zeta``, ``delta``; pass large
ones) and never lets a parameter exceed its start, so the start is the boldest setting. λ and ζ are
fractions and cannot pass 1 anyway; without the ceiling δ would double at every update that removes
nothing and densify the network. docs/results.md ("Time-varying Path-Weight and Sensitivity: two
readings of eq. 7–8") compares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from evosparse.errors import UsageError

#: What the criteria of eq. 7-8 average (see the module docstring).
CRITERIA = ("connection", "node")


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


def primary_criterion(importance: Sequence[Tensor]) -> float:
    """C_prim (eq. 7): the mean of all importances (one tensor per layer: of its source nodes or of its
    active connections, by the reading)."""
    if not importance:
        raise UsageError("the primary criterion needs at least one layer of importances")
    total = sum(float(layer.double().sum()) for layer in importance)
    count = sum(layer.numel() for layer in importance)
    return total / count if count else 0.0


def secondary_criterion(removed_importance: Tensor) -> float:
    """C_sec (eq. 8): the mean importance of the removed connections (their own, or their source nodes',
    by the reading), one entry per removed connection; 0 when none was removed."""
    if removed_importance.numel() == 0:
        return 0.0
    return float(removed_importance.double().mean())


def source_of(shape: tuple[int, ...], flat_positions: Tensor) -> Tensor:
    """Source unit (the second axis: input unit or input channel) of flat positions of a weight ``shape``."""
    per_source = 1
    for size in shape[2:]:
        per_source *= int(size)
    return (flat_positions // per_source) % int(shape[1])
