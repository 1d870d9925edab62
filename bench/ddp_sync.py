"""Cost of keeping topologies identical across 2 gloo ranks: the rank-0 broadcast of masks and weights
against one SET update, LeNet-300-100 at density 0.05, in one run. Usage: ``python bench/ddp_sync.py``."""

from __future__ import annotations

import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import evosparse
from evosparse.models.mlp import MLP

REPEATS = 20


def median_seconds(action, together: bool) -> float:
    """Median time of ``action()``; ``together`` lines the ranks up before each call."""
    times = []
    for _ in range(REPEATS):
        if together:
            dist.barrier()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return sorted(times)[REPEATS // 2]


def worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    model = MLP(784, [300, 100], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = evosparse.sparsify(model, optimizer, "set", density=0.05)
    layers, sync = sparsifier.topology.layers, sparsifier.sync
    assert sync is not None, "the sparsifier did not see the process group"
    # A synchronised update that changes nothing: what is left is the broadcast of masks and weights.
    broadcast = median_seconds(lambda: sync.run_update(layers, lambda: 0), together=True)
    if rank == 0:
        update = median_seconds(sparsifier.method.update, together=False)
        print(
            f"LeNet-300-100 at density 0.05, 2 gloo ranks: one SET update {update * 1e3:.2f} ms; "
            f"the rank-0 broadcast of masks and weights {broadcast * 1e3:.2f} ms "
            f"({broadcast / update:.2f}× the update)"
        )
    dist.barrier()  # tearing the group down while rank 0 still times its update aborts gloo
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(folder,), nprocs=2, join=True)
