"""Compact per-epoch topology snapshots: the active flat indices of every mask, in safetensors.

A snapshot costs 4 bytes per active connection (int32 indices; int64 for weights above 2³¹ entries),
not a dense mask, on every backend (each layer lists its active positions).
``evosparse analyze`` reads them back to follow the topology over training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from evosparse.errors import UsageError
from evosparse.files import atomic_write_bytes
from evosparse.topology.layer import Topology

SNAPSHOT_DIR = "topology"
_NAME = re.compile(r"epoch_(\d+)\.safetensors$")


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / SNAPSHOT_DIR / f"epoch_{epoch:04d}.safetensors"


def save_snapshot(run_dir: Path, epoch: int, topology: Topology) -> None:
    """Atomically write the active positions of every sparse layer after ``epoch`` (any backend)."""
    tensors, shapes = {}, {}
    for layer in topology.layers:
        flat = layer.active_positions().cpu()
        dtype = torch.int32 if layer.numel < 2**31 else torch.int64
        tensors[layer.name] = flat.to(dtype)
        shapes[layer.name] = list(layer.shape)
    atomic_write_bytes(snapshot_path(run_dir, epoch), save(tensors, metadata={"shapes": json.dumps(shapes)}))


def load_snapshot(path: Path) -> dict[str, torch.Tensor]:
    """Rebuild the boolean masks (name → mask) stored in one snapshot file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = json.loads((handle.metadata() or {})["shapes"])
            masks = {}
            for name, shape in shapes.items():
                mask = torch.zeros(torch.Size(shape).numel(), dtype=torch.bool)
                mask[handle.get_tensor(name).long()] = True
                masks[name] = mask.view(shape)
    except (OSError, SafetensorError, KeyError, IndexError, json.JSONDecodeError) as error:
        raise UsageError(f"topology snapshot {path} is unreadable ({type(error).__name__})") from None
    return masks


def list_snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every snapshot of a run, in epoch order."""
    folder = run_dir / SNAPSHOT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("epoch_*.safetensors") if (m := _NAME.search(p.name))]
    return sorted(found)
