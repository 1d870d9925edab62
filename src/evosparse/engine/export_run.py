"""``evosparse export RUN_DIR``: a trained run's sparse model as one safetensors file for inference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from evosparse.backends.export import export_model
from evosparse.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from evosparse.engine.config import CONFIG_FIELDS, LOCATION_KEYS, build_config
from evosparse.engine.loop import Trainer
from evosparse.files import check_writable

EXPORT_NAME = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """Where the model went and how its size compares with the dense float32 parameters."""

    path: Path
    file_bytes: int
    dense_bytes: int
    sparse_layers: int


def export_run(run_dir: Path, path: Path | None = None) -> ExportReport:
    """Rebuild the run from its checkpoint (masks included) and write its sparse model to ``path``
    (default ``RUN_DIR/model.safetensors``); a path that cannot be written is refused before any work."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    target = path or run_dir / EXPORT_NAME
    if path is None:
        check_writable(target, "export to", file=True, hint="pass --out FILE to write it elsewhere")
    else:
        check_writable(target, "--out", file=True)
    saved = {key: value for key, value in state.get("config", {}).items() if key in CONFIG_FIELDS}
    config = build_config(None, {**saved, "out": str(run_dir)}, [])
    trainer = Trainer(config, progress=False)
    trainer.restore(resume=True, ignore=LOCATION_KEYS)  # the folder may have moved since training
    sparsifier = trainer.sparsifier
    model, positions = sparsifier.method.export_model()
    data = trainer.data
    export_model(
        model,
        target,
        positions,
        model_name=config.model,
        spec=trainer.spec,
        standardisation=data.standardisation,
        class_names=data.class_names,
    )
    sparse_names = {layer.parameter_name for layer in sparsifier.topology.layers}
    other = sum(p.numel() for name, p in model.named_parameters() if not _is_sparse(name, sparse_names))
    dense_bytes = 4 * (sparsifier.topology.total + other)
    return ExportReport(target, target.stat().st_size, dense_bytes, len(sparse_names))


def _is_sparse(parameter: str, sparse_names: set[str]) -> bool:
    """Whether ``parameter`` holds a sparse layer's weights (``x.weight``, or ``x.values`` on csr)."""
    owner = parameter.rsplit(".", 1)[0]
    return parameter in sparse_names or f"{owner}.weight" in sparse_names
