"""Output folders: checked before any work, written by one process at a time.

Commands first refuse a path that cannot be written with :func:`evosparse.files.check_writable`, before
they load data or build a model, so bad paths cost nothing. :func:`locked_folder` then creates the
folder and holds an exclusive advisory lock on it
(``fcntl.flock`` on ``.evosparse.lock``, which records the holder's process id) for the whole run: a
second evosparse process writing the same folder is refused at once, instead of mixing its files
with the first one's. The kernel drops the lock when its holder dies, even by SIGKILL, so the lock of
a dead process never blocks anyone; the next holder reuses its file. Holding the lock, it sweeps the
temporary files killed writes left behind. Without ``fcntl`` (Windows) folders are not locked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

from evosparse.errors import UsageError
from evosparse.files import check_writable, sweep_temporaries

LOCK_NAME = ".evosparse.lock"


def _holder(handle: int) -> str:
    """`` (process N)`` from a lock file's content, or nothing when it names no process yet."""
    try:
        pid = os.pread(handle, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def _lock(path: Path, option: str) -> int:
    """Open and exclusively lock ``path`` (making its folder); refuse in one line when another process
    holds it."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # a process refused here removed the folder it had made: make it again
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            os.close(handle)
            raise UsageError(
                f"{option} {path.parent} is in use by another evosparse run{holder}; "
                "wait for it to finish or choose another folder"
            ) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(handle)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            os.ftruncate(handle, 0)
            os.pwrite(handle, f"{os.getpid()}\n".encode("ascii"), 0)
            return handle
        os.close(handle)  # its holder removed this file as we opened it: lock the one there now


@contextmanager
def locked_folder(folder: Path, option: str = "--out", *, sweep: tuple[str, ...] = ()) -> Iterator[None]:
    """Create ``folder`` and hold it for this process alone; sweep the temporary files of killed
    writes from it and from its subfolders ``sweep``. When the block ends the lock file is removed,
    and so are the folders made here if nothing was written in them (a run refused or failed early)."""
    check_writable(folder, option)
    made = [folder, *folder.parents]
    made = made[: next(i for i, path in enumerate(made) if path.exists())]
    try:
        if fcntl is None:  # pragma: no cover
            folder.mkdir(parents=True, exist_ok=True)
            yield
            return
        lock_path = folder / LOCK_NAME
        handle = _lock(lock_path, option)
        try:
            for place in (folder, *(folder / name for name in sweep)):
                sweep_temporaries(place)
            yield
        finally:
            with suppress(OSError):
                lock_path.unlink()  # still holding the lock: no one else can have it yet
            os.close(handle)
    finally:
        for path in made:
            with suppress(OSError):  # not empty: something was written
                path.rmdir()
