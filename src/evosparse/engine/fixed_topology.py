"""Training from scratch on the final topology of an earlier run: the role of adaptivity (AWS Section 5.1).

AWS takes the sparsity pattern an adaptive run ends with and trains a new network from scratch with
that pattern held fixed, to separate what the learned topology is worth from what the adaptive
process itself does. ``--fixed-topology-from RUN_DIR`` does this with method ``static``: the run
reads RUN_DIR's checkpoint (the masks of its final epoch), replaces its own random masks with them,
re-draws its weights from its own seed over those masks, and never changes them. The source must
be a finished run of a sparse method on the masked backend, with the same model, widths, sparsified
layers and budget (the data set may differ, if its samples have the same shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evosparse.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from evosparse.engine.config import CONFIG_FIELDS, TrainConfig
from evosparse.engine.records import RESULT_NAME
from evosparse.errors import UsageError
from evosparse.methods import get_method
from evosparse.models import DEFAULT_HIDDEN
from evosparse.sparsifier import Sparsifier


def structure(config: TrainConfig) -> dict[str, Any]:
    """The settings that decide which masks a run has: model, widths, sparsified layers and budget."""
    return {
        "model": config.model,
        "hidden": list(config.hidden or DEFAULT_HIDDEN.get(config.model, ())),
        "sparsify": config.sparsify,
        "density": config.effective_density,
        "epsilon": config.epsilon,
        "distribution": config.effective_distribution,
        "backend": config.backend,
    }


def source_config(saved: Mapping[str, Any], folder: Path) -> TrainConfig:
    """The configuration a source run was made with (settings it predates take their defaults)."""
    config = TrainConfig(**{key: value for key, value in saved.items() if key in CONFIG_FIELDS})
    if not get_method(config.method).sparse:
        raise UsageError(f"{folder} is a run of method {config.method}, which has no sparse topology to reuse")
    return config


def check_same_structure(source: TrainConfig, config: TrainConfig, folder: Path) -> None:
    """Refuse, naming the first differing setting, a source whose masks this run could not hold."""
    before, now = structure(source), structure(config)
    for key, value in now.items():
        if before[key] != value:
            raise UsageError(
                f"{folder} was trained with {key}={before[key]!r}, this run has {value!r}; "
                "a fixed topology needs the same model, widths, sparsified layers and budget"
            )


def check_topology_fits(topology: Mapping[str, Any], sparsifier: Sparsifier, folder: Path) -> None:
    """Refuse a saved topology whose layers or shapes differ from this model's sparse layers, naming the first."""
    layers = {layer.name: tuple(layer.shape) for layer in sparsifier.topology.layers}
    saved = {name: tuple(entry.get("shape", ())) for name, entry in topology.items()}
    for name in sorted(set(layers) | set(saved)):
        if layers.get(name) != saved.get(name):
            raise UsageError(
                f"the topology of {folder} does not fit this model: {name} is {saved.get(name)} there, "
                f"{layers.get(name)} here"
            )


def hold_fixed_topology(sparsifier: Sparsifier, config: TrainConfig) -> None:
    """Give ``sparsifier`` (method ``static``) the final masks of ``config.fixed_topology_from`` and
    re-draw the model's weights over them with ``config.init`` from the sparsifier's seeded generator."""
    folder = Path(str(config.fixed_topology_from))
    if not (folder / RESULT_NAME).exists():
        raise UsageError(f"{folder} holds no finished run (no {RESULT_NAME}); its final topology is not known yet")
    state = load_checkpoint(folder / CHECKPOINT_NAME)
    check_same_structure(source_config(state.get("config", {}), folder), config, folder)
    topology = state.get("sparsifier", {}).get("topology")
    if not isinstance(topology, Mapping):
        raise UsageError(f"the checkpoint in {folder} holds no topology this release can read; train the source again")
    check_topology_fits(topology, sparsifier, folder)
    sparsifier.adopt_topology(topology, config.init)
