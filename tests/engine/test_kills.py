"""Processes killed outright (SIGKILL) at random moments, inside checkpoint writes too, and several
processes on one output folder: every resume is exact, nothing temporary is left, nothing is mixed.

Each training runs in a child process forked from a server that has already imported torch and
evosparse (``forkserver`` with preloading), so a child starts in milliseconds rather than seconds.
``EVOSPARSE_KILLS=20`` runs 20 kill trials instead of CI's 5.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import pytest

from evosparse.cli import main
from evosparse.engine import checkpoint, loop
from evosparse.engine.config import build_config
from evosparse.engine.run_folder import LOCK_NAME
from evosparse.errors import UsageError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

KILLS = int(os.environ.get("EVOSPARSE_KILLS", "5"))
REPRODUCIBLE = ["epoch", "train_loss", "test_loss", "test_acc", "density", "connections_changed"]
#: Where a child stops inside a checkpoint's writes, to be killed there: (the file being renamed into
#: place, before or after the rename).
STOPS = {
    "previous kept, not renamed": (checkpoint.PREVIOUS_NAME, "before"),
    "written and synced, not renamed": (checkpoint.CHECKPOINT_NAME, "before"),
    "renamed, folder not synced": (checkpoint.CHECKPOINT_NAME, "after"),
}
EPOCHS = 5


def settings(out: Path) -> dict:
    """SET with dropout and momentum: masks, optimizer state and the RNG must all come back exactly."""
    return {"epochs": EPOCHS, "hidden": "24,12", "dropout": 0.2, "density": 0.3, "batch_size": 64,
            "train_fraction": 0.5, "out": str(out)}  # fmt: skip


def train_resuming(out: Path) -> dict:
    return loop.train(build_config(None, settings(out), []), resume_if_present=True, progress=False)


def stop_inside_checkpoint_write(name: str, when: str, count: int, stopped) -> None:
    """Make the ``count``-th rename of ``name`` into place signal ``stopped`` and hang there."""
    real_replace = os.replace
    seen = [0]

    def replace(source, target):
        hit = Path(target).name == name
        seen[0] += hit
        if hit and seen[0] == count and when == "before":
            stopped.set()
            time.sleep(600)
        real_replace(source, target)
        if hit and seen[0] == count and when == "after":
            stopped.set()
            time.sleep(600)

    os.replace = replace  # this child process only


def child_training(out: str, stop: tuple[str, str, int] | None = None, stopped=None, running=None) -> None:
    """Train in a child process; set ``running`` once the folder is locked and training begins."""
    if stop is not None:
        stop_inside_checkpoint_write(*stop, stopped)
    if running is not None:
        real_run = loop.Trainer.run

        def run(self, *args, **kwargs):
            running.set()
            return real_run(self, *args, **kwargs)

        loop.Trainer.run = run  # this child process only
    train_resuming(Path(out))


def child_cli(args: list[str], stderr_path: str) -> None:
    sys.stderr = open(stderr_path, "w")  # noqa: SIM115 - closed by the process's end
    raise SystemExit(main(args))


@pytest.fixture(scope="module")
def processes():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch._dynamo", "evosparse.engine.loop", "evosparse.cli", __name__])
    return context


@pytest.fixture(scope="module")
def reference(processes, tmp_path_factory):
    """The uninterrupted run's numbers, and how long its training takes in a child (from the lock on)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    running = processes.Event()
    child = processes.Process(target=child_training, args=(str(out), None, None, running))
    child.start()
    assert running.wait(60)
    started = time.perf_counter()
    child.join()
    assert child.exitcode == 0
    return numbers(json.loads((out / "result.json").read_text())), time.perf_counter() - started


def numbers(result: dict) -> list[list]:
    return [[record[key] for key in REPRODUCIBLE] for record in result["epochs"]]


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_NAME)


def kill_trials(count: int, seed: int = 17) -> list[tuple[str, object]]:
    """``count`` kills: every stop inside a checkpoint write, then random moments of training (a
    fraction of its length after the folder is locked; above 1, after the run has ended)."""
    rng = random.Random(seed)
    trials: list[tuple[str, object]] = [("stop", name) for name in STOPS][:count]
    trials += [("delay", rng.uniform(0.0, 1.1)) for _ in range(count - len(trials))]
    return trials[:count]


@pytest.mark.parametrize("trial, how", list(enumerate(kill_trials(KILLS))))
def test_a_run_killed_at_any_moment_resumes_exactly_and_leaves_nothing_temporary(
    trial, how, processes, reference, tmp_path
):
    expected, seconds = reference
    out = tmp_path / "run"
    stopped, running = processes.Event(), processes.Event()
    kind, what = how
    stop = (*STOPS[what], 3) if kind == "stop" else None  # inside the third checkpoint's write
    child = processes.Process(target=child_training, args=(str(out), stop, stopped, running))
    child.start()
    if kind == "stop":
        assert stopped.wait(60), f"the child never reached {what}"
    else:
        assert running.wait(60)
        time.sleep(what * seconds)
    child.kill()
    child.join()
    checkpoints = [checkpoint.load_checkpoint(p)["epoch"] for p in out.glob("checkpoint*.pt")]
    assert numbers(train_resuming(out)) == expected, f"killed ({kind} {what}) with checkpoints of epochs {checkpoints}"
    assert leftovers(out) == []
    assert checkpoint.load_checkpoint(out / checkpoint.PREVIOUS_NAME)["epoch"] == EPOCHS - 1


def test_a_second_writer_is_refused_while_the_first_runs_and_a_dead_ones_lock_is_recovered(
    processes, reference, tmp_path
):
    out = tmp_path / "run"
    stopped = processes.Event()
    stop = (checkpoint.CHECKPOINT_NAME, "before", 1)  # inside the first checkpoint's write
    first = processes.Process(target=child_training, args=(str(out), stop, stopped))
    first.start()
    assert stopped.wait(60)
    with pytest.raises(UsageError, match=rf"^--out {out} is in use by another evosparse run \(process {first.pid}\)"):
        train_resuming(out)
    first.kill()
    first.join()
    assert numbers(train_resuming(out)) == reference[0]  # the dead process's lock does not block
    assert leftovers(out) == []


def test_two_runs_started_together_on_one_folder_never_mix(processes, tmp_path):
    """The issue's reproduction, shortened: SET (2 epochs, small batches) and static (4 epochs) on one --out."""
    out = tmp_path / "shared"
    common = ["--hidden", "32,32", "--density", "0.1", "--train-fraction", "0.5", "--no-progress", "--out", str(out)]
    commands = {
        "set": ["train", "--method", "set", "--epochs", "2", "--batch-size", "16", *common],
        "static": ["train", "--method", "static", "--epochs", "4", "--batch-size", "128", *common],
    }
    children = {
        method: processes.Process(target=child_cli, args=(args, str(tmp_path / f"{method}.err")))
        for method, args in commands.items()
    }
    for child in children.values():
        child.start()
    for child in children.values():
        child.join()
    codes = {method: child.exitcode for method, child in children.items()}
    assert sorted(codes.values()) == [0, 2], codes
    [winner] = [method for method, code in codes.items() if code == 0]
    [loser] = [method for method, code in codes.items() if code == 2]
    refusal = (tmp_path / f"{loser}.err").read_text()
    assert refusal.count("\n") == 1 and ("is in use by another evosparse run" in refusal or "already holds" in refusal)
    result = json.loads((out / "result.json").read_text())
    epochs = {"set": 2, "static": 4}[winner]
    assert result["method"] == winner and len(result["epochs"]) == epochs
    assert len(list((out / "topology").glob("*.safetensors"))) == epochs
    assert checkpoint.load_checkpoint(out / checkpoint.CHECKPOINT_NAME)["config"]["method"] == winner
