"""Files that are never torn, and paths refused before any work: what every module that writes relies on.

**Atomic writes.** The bytes go to a temporary file ``.NAME.<random>.tmp`` beside the target (one
file system, so the rename is atomic), are flushed to disk, then renamed over the target: a reader
sees the old or the new content, never a mix. The temporary file is removed on every failure the
process lives through (an exception, Ctrl-C); one killed outright leaves it behind, and the next
process that locks the folder sweeps it (:func:`sweep_temporaries`, called by
:mod:`evosparse.engine.run_folder`). Files get mode 0666 less the user's umask, as ``open()`` gives.

:func:`check_writable` refuses in one line a path that cannot become a folder (or file) this process
writes: a file where a folder is wanted or the reverse, a path through a file, a folder without write
permission.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from evosparse.errors import UsageError

#: Temporary files of atomic writes: ``.NAME.<12 hex digits>.tmp`` (mkstemp's ``.NAME.<8 chars>.tmp``
#: before that), in the target's folder.
TEMPORARY = re.compile(r"\..+\.\w{8,12}\.tmp")


def temporary_name(path: Path) -> Path:
    """A fresh name for a temporary file beside ``path`` (one that :data:`TEMPORARY` matches)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _create_beside(path: Path) -> tuple[int, Path]:
    """Open a new temporary file next to ``path`` for writing (mode 0666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = temporary_name(path)
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write_bytes(path: Path, *parts: bytes | memoryview) -> None:
    """Write ``parts`` one after the other to ``path`` so that readers see the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_beside(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            for part in parts:
                stream.write(part)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that killed writes left in ``folder``; return what was removed.

    Only safe while no other process writes in ``folder``: call it with the folder locked.
    """
    if not folder.is_dir():
        return []
    swept = [path for path in folder.iterdir() if TEMPORARY.fullmatch(path.name) and path.is_file()]
    for path in swept:
        path.unlink(missing_ok=True)
    return swept


def check_writable(path: Path, option: str, *, file: bool = False, hint: str = "") -> None:
    """Refuse (one-line UsageError) a ``path`` that cannot become a folder we write in (or, with
    ``file``, a file we write); ``option`` names where the path came from, ``hint`` what to do instead."""
    suffix = f"; {hint}" if hint else ""
    if file and path.is_dir():
        raise UsageError(f"{option} {path} names a folder, not a file{suffix}")
    folder = path.parent if file else path
    existing = folder
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise UsageError(f"{option} {path} names a file, not a folder{suffix}")
        raise UsageError(f"{option} {path}: {existing} is not a folder{suffix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {existing} is not writable{suffix}")
