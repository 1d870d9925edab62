"""GraNet: gradual pruning with zero-cost neuroregeneration (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

from dataclasses import replace

from evosparse.methods.base import Param, register
from evosparse.methods.gmp import INITIAL_DENSITY, PRUNE_BEGIN, GradualPruning
from evosparse.methods.rigl import ALPHA, CANDIDATES, SWAP_RULE, SWAP_SCHEDULE, RigL


@register
class GraNet(GradualPruning, RigL):
    """Every ΔT steps until T_end: prune each layer by |w| to GMP's cubic schedule, then swap a cosine-decayed
    fraction of what remains as RigL does (drop the smallest |w|, grow the largest dense |gradient|, at zero).

    Liu et al. 2021 ("Sparse Training via Boosting Pruning Plasticity with Neuroregeneration", Algorithm 1):
    the gradual pruning of Zhu & Gupta (eq. 1 there) plus *neuroregeneration*, which regrows as many
    connections as it removes beyond the schedule, where the gradient is largest. Started sparse
    (``initial_density`` < 1, the paper's sparse-to-sparse setting with s_i = 0.5 by default) the network is
    never dense; with ``initial_density`` 1 it is the paper's dense-to-sparse GraNet. The regrowth fraction
    decays on RigL's cosine from ``alpha`` (the authors' code's "prune rate", 0.5); regrowth and pruning share
    ΔT and stop at the last update before T_end, where every layer holds exactly its budget. Each layer is
    pruned to its own budget (the authors' ``GraNet`` uses one global threshold); their regrowth interval
    and its end differ too (docs/design.md, "GraNet").
    """

    name = "granet"
    summary = "gradual magnitude pruning from a sparse start with gradient regrowth (Liu et al. 2021)"
    params = (
        Param(
            INITIAL_DENSITY.name,
            0.5,
            "global density the run starts at, above the target (the paper's s_i; 1: dense-to-sparse)",
            minimum=0.0,
            maximum=1.0,
        ),
        PRUNE_BEGIN,
        Param(
            ALPHA.name,
            0.5,
            "fraction of the remaining connections regrown at step 0, cosine-decayed",
            minimum=0.0,
            maximum=1.0,
        ),
        replace(SWAP_RULE, legacy=None),  # no granet run predates the parameter
        CANDIDATES,
        *SWAP_SCHEDULE,
    )

    def swap_layers(self, fraction: float) -> int:
        """Prune to the schedule, then RigL's swap of ``fraction`` of every layer's remaining connections."""
        return self.prune_to_schedule() + super().swap_layers(fraction)
