"""Two gloo processes on the CPU: after every topology update both ranks hold identical masks, weights
and optimizer state, although each trains on its own data (so local decisions would differ)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

import evosparse
from evosparse.distributed import shutdown
from evosparse.engine.compilation import compile_problem

STEPS = 8


def free_port() -> str:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def worker(rank: int, world_size: int, folder: str, method: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = {"update_unit": "step", "update_interval": 2}
    if method == "rigl":
        schedule["update_until"] = 1.0
    s = evosparse.sparsify(model, optimizer, method, density=0.3, total_steps=5 * STEPS, **schedule)
    ddp = DistributedDataParallel(model)
    data = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    for step in range(1, STEPS + 1):
        x, y = torch.randn(8, 12, generator=data), torch.randint(0, 4, (8,), generator=data)
        optimizer.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        s.step()
        if step % 2 == 0:
            state = {
                f"{layer.name}.{kind}": tensor.clone()
                for layer in s.topology.layers
                for kind, tensor in (
                    ("mask", layer.mask),
                    ("weight", layer.weight.detach()),
                    ("momentum", optimizer.state[layer.weight]["momentum_buffer"]),
                )
            }
            torch.save(
                {**state, "changed": torch.tensor(s.take_stats().connections_changed)},
                Path(folder) / f"rank{rank}_step{step}.pt",
            )
    del ddp  # its reducer holds the process group
    shutdown()
    (Path(folder) / f"rank{rank}_threads_left.txt").write_text("\n".join(gloo_threads()))


def gloo_threads() -> list[str]:
    """This process's gloo threads (Linux names them): any left once the group is shut down can still be
    releasing tensors when the interpreter exits, which aborts the process now and then."""
    if not Path("/proc/self/task").exists():  # Linux names threads there; elsewhere nothing to check
        return []
    names = (Path("/proc/self/task") / task / "comm" for task in os.listdir("/proc/self/task"))
    return [name for name in (path.read_text().strip() for path in names) if "gloo" in name]


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_both_ranks_hold_identical_topologies_after_every_update(tmp_path, method):
    mp.spawn(worker, args=(2, str(tmp_path), method), nprocs=2, join=True)
    for step in range(2, STEPS + 1, 2):
        first = torch.load(tmp_path / f"rank0_step{step}.pt", weights_only=True)
        second = torch.load(tmp_path / f"rank1_step{step}.pt", weights_only=True)
        assert first["changed"] > 0 and first["changed"] == second["changed"]
        for key in first:
            assert torch.equal(first[key], second[key]), f"{key} differs between ranks after step {step}"
    for rank in range(2):
        assert (tmp_path / f"rank{rank}_threads_left.txt").read_text() == "", "the process group outlived shutdown"


def test_torchrun_trains_through_the_cli_and_rank_zero_alone_writes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        "-m",
        "evosparse",
        "train",
        "--epochs",
        "2",
        "--hidden",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("set on digits") == 1  # only rank 0 reports
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["final_test_acc"] > 0.6
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compiled"])
def test_a_distributed_training_run_frees_its_process_group_at_shutdown(tmp_path, compile_model):
    if compile_model and (problem := compile_problem("cpu")) is not None:
        pytest.skip(f"torch.compile fails here: {problem}")
    mp.spawn(_training_worker, args=(str(tmp_path), free_port(), compile_model), nprocs=2, join=True)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["world_size"] == 2 and sum(epoch["connections_changed"] for epoch in result["epochs"]) > 0
    for rank in range(2):
        assert (tmp_path / f"rank{rank}_threads_left.txt").read_text() == "", "the process group outlived shutdown"


def test_a_run_refused_after_joining_the_group_still_leaves_it(tmp_path):
    mp.spawn(_training_worker, args=(str(tmp_path), free_port(), False, "liset"), nprocs=2, join=True)
    for rank in range(2):
        assert "DDP does not synchronise" in (tmp_path / f"rank{rank}_error.txt").read_text()
        assert (tmp_path / f"rank{rank}_threads_left.txt").read_text() == "", "the process group outlived the error"


def _training_worker(rank: int, folder: str, port: str, compile_model: bool, method: str = "set") -> None:
    """One rank of what torchrun starts, through the engine's own entry point; lists the gloo threads left
    straight after the engine's shutdown (the trainer, and with it DDP, is still alive then)."""
    from evosparse.engine import loop
    from evosparse.engine.config import build_config

    def shutdown_and_list_threads(wait_for_peers: bool = True) -> None:
        shutdown(wait_for_peers)
        (Path(folder) / f"rank{rank}_threads_left.txt").write_text("\n".join(gloo_threads()))

    loop.shutdown = shutdown_and_list_threads
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    )
    options = {"epochs": 2, "hidden": "16", "compile": compile_model, "method": method, "out": f"{folder}/run"}
    try:
        loop.train(build_config(None, options), progress=False)
    except evosparse.errors.UsageError as error:  # refused after the group was joined
        (Path(folder) / f"rank{rank}_error.txt").write_text(str(error))


def test_methods_with_modules_of_their_own_are_refused_under_ddp(tmp_path):
    mp.spawn(_refusal_worker, args=(str(tmp_path),), nprocs=2, join=True)
    assert all((tmp_path / f"refused{rank}").exists() for rank in range(2))


def _refusal_worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    model = nn.Sequential(nn.Linear(6, 3))
    try:
        evosparse.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "liset", density=0.5)
    except evosparse.errors.UsageError as error:
        if "DDP does not synchronise" in str(error):
            (Path(folder) / f"refused{rank}").touch()
    dist.barrier()  # no rank tears the group down while the other still uses it
    dist.destroy_process_group()
