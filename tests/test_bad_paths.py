"""Every path that cannot be used is refused before any work: one line on stderr, exit status 2, nothing
written. Read-only folders are read-only for the test too: run as root, the refusals are checked as
``nobody`` (real and effective ids switched, root kept as the saved id to switch back)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import evosparse.analysis.report  # noqa: F401 - imported before the ids change: nobody cannot read the install
import evosparse.data.fashion_mnist  # noqa: F401
import evosparse.data.table  # noqa: F401
import evosparse.engine.compare  # noqa: F401
import evosparse.engine.export_run  # noqa: F401
import evosparse.engine.update_schedule  # noqa: F401
from evosparse.cli import main
from support import no_network  # noqa: F401 - fixture

NOBODY = 65534


@contextmanager
def unprivileged() -> Iterator[None]:
    """The block runs without the power to write into read-only folders (as ``nobody`` under root)."""
    if os.geteuid() != 0:
        yield
        return
    os.setresuid(NOBODY, NOBODY, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)


@pytest.fixture(scope="module")
def place():
    """A folder anyone may enter, holding a finished run, a file, and read-only copies of both kinds of
    folder (pytest's own temporary folders are closed to other users)."""
    root = Path(tempfile.mkdtemp(prefix="evosparse-paths-"))
    root.chmod(0o777)
    run = root / "run"
    assert main(["train", "--epochs", "1", "--hidden", "8", "--out", str(run), "--no-progress"]) == 0
    shutil.copytree(run, root / "finished")
    (root / "file").write_text("not a folder\n")
    (root / "read-only").mkdir()
    for folder in (root / "read-only", root / "finished"):
        for path in [folder, *folder.rglob("*")]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    yield root
    for path in root.rglob("*"):
        path.chmod(0o755)
    shutil.rmtree(root)


def listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


TRAIN = ["train", "--method", "static", "--epochs", "1", "--hidden", "8", "--no-progress"]
CASES = {
    "--out names a file": ([*TRAIN, "--out", "{file}"], "--out {file} names a file, not a folder"),
    "--out inside a file": ([*TRAIN, "--out", "{file}/sub"], "--out {file}/sub: {file} is not a folder"),
    "--out read-only": ([*TRAIN, "--out", "{read-only}"], "--out {read-only}: {read-only} is not writable"),
    "--out under a read-only folder": (
        [*TRAIN, "--out", "{read-only}/new/run"],
        "--out {read-only}/new/run: {read-only} is not writable",
    ),
    "--resume in a read-only finished run": (
        [*TRAIN, "--out", "{finished}", "--resume"],
        "--out {finished}: {finished} is not writable",
    ),
    "--resume without a checkpoint": (
        [*TRAIN, "--out", "{root}/typo", "--resume"],
        "--resume: {root}/typo holds no checkpoint to continue (is --out right?); "
        "--resume-if-present starts the run when there is none",
    ),
    "--config names a folder": ([*TRAIN, "--config", "{read-only}"], "cannot read config file {read-only}"),
    "--data-dir names a file": (
        [*TRAIN, "--dataset", "fashion-mnist", "--data-dir", "{file}", "--out", "{root}/o"],
        "cannot create the data folder {file}/fashion-mnist",
    ),
    "--data-dir read-only": (
        [*TRAIN, "--dataset", "fashion-mnist", "--data-dir", "{read-only}", "--out", "{root}/o"],
        "the data folder {read-only}",
    ),
    "csv: names a folder": ([*TRAIN, "--dataset", "csv:{read-only}", "--out", "{root}/o"], "cannot read {read-only}"),
    "export --out names a folder": (
        ["export", "{run}", "--out", "{read-only}"],
        "--out {read-only} names a folder, not a file",
    ),
    "export --out inside a file": (["export", "{run}", "--out", "{file}/m.safetensors"], "{file} is not a folder"),
    "export --out read-only": (
        ["export", "{run}", "--out", "{read-only}/m.safetensors"],
        "--out {read-only}/m.safetensors: {read-only} is not writable",
    ),
    "export into a read-only run": (
        ["export", "{finished}"],
        "export to {finished}/model.safetensors: {finished} is not writable; pass --out FILE to write it elsewhere",
    ),
    "export from a file": (["export", "{file}"], "no checkpoint at {file}/checkpoint.pt"),
    "analyze a read-only run": (["analyze", "{finished}"], "analyze writes to {finished}/analysis: {finished} is not"),
    "compare --out names a file": (
        ["compare", "--methods", "static", "--epochs", "1", "--out", "{file}"],
        "--out {file} names a file, not a folder",
    ),
    "compare --out read-only": (
        ["compare", "--methods", "static", "--epochs", "1", "--out", "{read-only}/cmp"],
        "--out {read-only}/cmp: {read-only} is not writable",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_path_is_refused_in_one_line_before_any_work(case, place, capsys, no_network):  # noqa: F811
    args, message = CASES[case]
    names = {"root": place, **{name: place / name for name in ("file", "read-only", "finished", "run")}}
    before = listing(place)
    with unprivileged():
        code = main([arg.format(**names) for arg in args])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.startswith("evosparse: error: ") and stderr.count("\n") == 1
    assert message.format(**names) in stderr
    assert listing(place) == before
