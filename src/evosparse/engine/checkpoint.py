"""Checkpoints that prove they are intact, written atomically (:mod:`evosparse.files`).

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
import shutil
from pathlib import Path
from typing import Any

import torch

from evosparse.errors import UsageError
from evosparse.files import atomic_write_bytes, temporary_name

CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint before the latest one (one epoch earlier), kept for when the latest is damaged.
PREVIOUS_NAME = "checkpoint.prev.pt"
FORMAT_VERSION = 2
#: The format of checkpoints written before the header and checksum existed.
LEGACY_FORMAT = 1
MAGIC = b"evosparse-checkpoint "


def _keep_previous(path: Path) -> None:
    """Make the checkpoint at ``path`` (if any) the previous one, atomically, without copying its bytes."""
    previous = path.with_name(PREVIOUS_NAME)
    # Nothing to keep, or kept already by a write killed after this step (renaming a link onto the
    # file it links to does nothing, and would leave the temporary link behind).
    if not path.exists() or (previous.exists() and os.path.samefile(path, previous)):
        return
    temporary = temporary_name(previous)
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
