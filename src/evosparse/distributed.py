"""Distributed data-parallel training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

Topology updates follow one rule, chosen for being exact and method-agnostic: **rank 0 decides**. Only
rank 0 runs the method's update; it then broadcasts every sparse layer's mask and weight, and every other
rank adopts them and resets its optimizer state exactly where its mask flipped — the same positions rank
0 reset. Masks, weights and optimizer state therefore stay identical on all ranks after every update.
The price is that statistics gathered by a method between updates (accumulated gradients, feature norms)
come from rank 0's shard of the data only.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

if dist.is_available():
    import torch.distributed.nn  # noqa: F401  before any process group exists: see initialise

from evosparse.errors import UsageError
from evosparse.topology.layer import SparseLayer
from evosparse.topology.masks import MaskedLayer


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job (``world_size == 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def context_from_environment() -> DistributedContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    return DistributedContext(rank, world_size, local_rank)


def group_exists() -> bool:
    """Whether this process is in a process group already (its own, or one :func:`initialise` made)."""
    return dist.is_available() and dist.is_initialized()


def current_context() -> DistributedContext:
    """The context of an already initialised process group (a user's own DDP loop), else single-process."""
    if group_exists():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistributedContext()


def initialise(context: DistributedContext, device: torch.device) -> None:
    """Join the process group: gloo for CPU, nccl for CUDA (no-op for a single process or an existing group).

    This module imports ``torch.distributed.nn`` before any group exists, because its functions take
    ``group.WORLD`` as a default argument: imported later (the first optimizer built imports it, through
    torch._dynamo), they hold the group for the life of the process, so :func:`shutdown` cannot free it,
    and its gloo threads, still releasing the last collectives' tensors, race the interpreter's exit and
    abort it ("terminate called without an active exception"). A user who calls ``init_process_group``
    directly gets the same protection by importing ``evosparse.distributed`` first. (torch's
    ``ZeroRedundancyOptimizer`` and FSDP's ``ShardedGradScaler`` take the same default: import them
    before the group too.)
    """
    if not context.active or group_exists():
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown(wait_for_peers: bool = True) -> None:
    """Leave the process group and free it, so that its backend's threads are joined here, while the
    interpreter is whole, not at its exit (see :func:`initialise`); no-op without a group.

    Delete every DistributedDataParallel wrapper first: its reducer holds the group too (garbage is
    collected here, for a wrapper in a reference cycle, as ``torch.compile`` makes). ``wait_for_peers``:
    a barrier first, since tearing the group down while a peer still talks to it aborts gloo; pass False
    when this rank failed, as its peers will not reach the barrier (torchrun stops them).
    """
    if not group_exists():
        return
    gc.collect()
    if wait_for_peers:
        dist.barrier()
    dist.destroy_process_group()


def shard(batch: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """This rank's share of a global batch of indices (every ``world_size``-th, from ``rank``)."""
    return batch[context.rank :: context.world_size]


def all_sum(values: list[float], context: DistributedContext) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not context.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


class TopologySync:
    """Makes every rank adopt rank 0's topology after an update (see the module docstring)."""

    def __init__(self, context: DistributedContext) -> None:
        self.context = context

    @property
    def decides(self) -> bool:
        """Whether this rank runs the method's update itself."""
        return self.context.is_leader

    def run_update(self, layers: Sequence[SparseLayer], update: Callable[[], int]) -> int:
        """Run ``update`` on rank 0, then make every rank adopt its topology; return rank 0's number changed.

        Distributed runs use the masked backend only (the Sparsifier refuses csr), whose masks and dense
        weights are broadcast as they are.
        """
        masked = [layer for layer in layers if isinstance(layer, MaskedLayer)]
        if len(masked) != len(layers):
            raise UsageError("distributed training needs --backend masked")
        before = [layer.mask.clone() for layer in masked]
        changed = update() if self.decides else 0
        return self._adopt_leader_topology(masked, before, changed)

    @torch.no_grad()
    def _adopt_leader_topology(self, layers: list[MaskedLayer], before: list[torch.Tensor], changed: int) -> int:
        """Broadcast rank 0's masks and sparse weights; return rank 0's number of changed connections."""
        for layer, old_mask in zip(layers, before):
            mask = layer.mask.to(torch.uint8)
            weight = layer.weight.data
            _broadcast(mask)
            _broadcast(weight)
            if not self.decides:
                new_mask = mask.bool()
                flipped = (old_mask ^ new_mask).view(-1).nonzero().squeeze(1)
                layer.mask.copy_(new_mask)
                layer.budget = int(new_mask.sum().item())
                layer.reset_optimizer_state(flipped)
        count = torch.tensor([changed], dtype=torch.long, device=layers[0].mask.device)
        _broadcast(count)
        return int(count.item())


def _broadcast(tensor: torch.Tensor) -> None:
    """Broadcast from rank 0 in place (gloo needs contiguous CPU or CUDA tensors; masks/weights are)."""
    dist.broadcast(tensor, src=0)
