"""Files that are never torn, and checkpoints that prove they are intact.

**Atomic writes.** The bytes go to a temporary file ``.NAME.<random>.tmp`` beside the target (one
file system, so the rename is atomic), are flushed to disk, then renamed over the target: a reader
sees the old or the new content, never a mix. The temporary file is removed on every failure the
process lives through (an exception, Ctrl-C); one killed outright leaves it behind, and the next
process that locks the folder sweeps it (:func:`sweep_temporaries`, called by
:mod:`evosparse.engine.run_folder`). Files get mode 0666 less the user's umask, as ``open()`` gives.

**Checkpoints** (format 2): one header line, ``evosparse-checkpoint {"format": 2, "bytes": N,
"sha256": "…"}``, then the ``torch.save`` payload it describes. Loading checks the payload's length
and SHA-256 before unpickling it with ``torch.load(weights_only=True)`` (tensors, numbers, strings,
lists and dicts only), so a damaged file is refused in one line instead of resumed from garbage.
Before a checkpoint is replaced, the one it replaces becomes ``checkpoint.prev.pt`` (a hard link, no
copy), so a damaged checkpoint costs one epoch, and the refusal says how to go back to it. Format-1
files (a bare ``torch.save`` holding ``"format": 1``, written before checksums) still load, unverified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from evosparse.errors import UsageError

CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint before the latest one (one epoch earlier), kept for when the latest is damaged.
PREVIOUS_NAME = "checkpoint.prev.pt"
FORMAT_VERSION = 2
#: The format of checkpoints written before the header and checksum existed.
LEGACY_FORMAT = 1
MAGIC = b"evosparse-checkpoint "
#: Temporary files of atomic writes: ``.NAME.<12 hex digits>.tmp`` (mkstemp's ``.NAME.<8 chars>.tmp``
#: before that), in the target's folder.
TEMPORARY = re.compile(r"\..+\.\w{8,12}\.tmp")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _create_beside(path: Path) -> tuple[int, Path]:
    """Open a new temporary file next to ``path`` for writing (mode 0666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = _temporary_name(path)
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


def _keep_previous(path: Path) -> None:
    """Make the checkpoint at ``path`` (if any) the previous one, atomically, without copying its bytes."""
    previous = path.with_name(PREVIOUS_NAME)
    # Nothing to keep, or kept already by a write killed after this step (renaming a link onto the
    # file it links to does nothing, and would leave the temporary link behind).
    if not path.exists() or (previous.exists() and os.path.samefile(path, previous)):
        return
    temporary = _temporary_name(previous)
    try:
        try:
            os.link(path, temporary)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, temporary)
        os.replace(temporary, previous)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors and plain Python values only) with its checksum; keep the one it replaces."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = {"format": FORMAT_VERSION, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    _keep_previous(path)
    atomic_write_bytes(path, MAGIC + json.dumps(header).encode("ascii") + b"\n", payload)


class DamagedCheckpoint(Exception):
    """Why a checkpoint's bytes cannot be trusted (turned into a one-line UsageError by ``load_checkpoint``)."""


def _verified_payload(data: bytes) -> bytes:
    """The payload of a format-2 checkpoint, after its length and SHA-256 matched its header."""
    end = data.find(b"\n")
    try:
        header = json.loads(data[len(MAGIC) : end])
        expected_format, size, digest = header["format"], header["bytes"], header["sha256"]
    except (ValueError, KeyError, TypeError):
        raise DamagedCheckpoint("its header is damaged") from None
    if expected_format != FORMAT_VERSION:
        raise DamagedCheckpoint(f"it has format {expected_format!r}; this evosparse reads {FORMAT_VERSION}")
    payload = data[end + 1 :]
    if len(payload) != size:
        raise DamagedCheckpoint(f"it holds {len(payload)} bytes of the {size} it was written with")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise DamagedCheckpoint("its SHA-256 does not match its content")
    return payload


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"no checkpoint at {path}") from None
    except OSError as error:
        raise UsageError(f"cannot read checkpoint {path}: {error.strerror or error}") from None


def _state_of(data: bytes) -> dict[str, Any]:
    """The state held by checkpoint bytes (format 2, or format 1 unverified), or DamagedCheckpoint."""
    legacy = not data.startswith(MAGIC)
    payload = data if legacy else _verified_payload(data)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DamagedCheckpoint(f"it is unreadable or corrupt ({reason[:120]})") from None
    if not isinstance(state, dict) or (legacy and state.get("format") != LEGACY_FORMAT):
        raise DamagedCheckpoint(f"it is not an evosparse checkpoint of format {FORMAT_VERSION} or {LEGACY_FORMAT}")
    return state


def _way_back(path: Path) -> str:
    """How to go back one epoch when the checkpoint at ``path`` is damaged (or why one cannot)."""
    previous = path.with_name(PREVIOUS_NAME)
    if not previous.is_file():
        return f"no earlier checkpoint is kept in {path.parent}"
    try:
        _state_of(_read(previous))
    except (UsageError, DamagedCheckpoint):
        return f"{previous} is damaged too"
    return f"to go back one epoch: mv {previous} {path}, then resume"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely; a damaged, truncated or foreign file is refused with one line."""
    try:
        return _state_of(_read(path))
    except DamagedCheckpoint as damage:
        raise UsageError(f"checkpoint {path} cannot be used: {damage}; {_way_back(path)}") from None
