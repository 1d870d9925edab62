"""Export a trained sparse model to safetensors (CSR arrays + metadata) and load it back for inference.

File layout (no pickle anywhere):

- per sparse weight ``NAME`` (e.g. ``layers.0.weight``): ``NAME:crow_indices`` and
  ``NAME:col_indices`` (int32 when they fit, else int64) and ``NAME:values``, the CSR form of the
  weight seen as a (shape[0], prod(shape[1:])) matrix;
- every other parameter and buffer of the model, dense, under its ``state_dict`` name;
- the safetensors metadata entry ``evosparse``: JSON with the format version, the evosparse
  version, the sparse weights (name, owning module, shape, nnz, whether the module is linear), the
  registry model name and its :class:`~evosparse.models.ModelSpec` when known, the architecture,
  the class names when the data named its classes, and a SHA-256 over all tensors (so a corrupted
  file is refused, not silently mis-loaded);
- since format 2, when the run standardised its inputs: ``evosparse:input_mean`` and
  ``evosparse:input_std``, so that the loaded model takes raw inputs, as they were before the run's
  preprocessing (:class:`RawInputModel`).

Sparse weights come from :class:`~evosparse.backends.csr_layer.SparseLinear` modules (stored sparse in the
model: csr or condensed, both written as CSR) or, for weights stored dense, from ``positions``
(parameter name -> flat active positions, as every sparse layer lists them). On loading, each sparse
linear layer becomes a :class:`CsrLinear`; other sparse weights (convolutions, LSTM matrices) are
restored dense.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

import evosparse
from evosparse.backends.csr_layer import CsrLinear, SparseLinear, structure_from_csr_arrays
from evosparse.backends.csr_model import replace_submodule
from evosparse.backends.csr_ops import CsrStructure
from evosparse.data.base import Standardisation
from evosparse.errors import UsageError
from evosparse.files import atomic_write_bytes
from evosparse.models import ModelSpec, architecture_of, build_model
from evosparse.topology.masks import weight_read_by_parent

FORMAT_NAME = "evosparse-sparse-model"
FORMAT_VERSION = 2
#: Format 1 files (before preprocessing was stored) load as they always did.
READABLE_VERSIONS = (1, 2)
#: Names of the standardisation tensors (``:`` keeps them apart from ``state_dict`` names).
INPUT_MEAN, INPUT_STD = "evosparse:input_mean", "evosparse:input_std"
METADATA_KEY = "evosparse"
_INT32_LIMIT = 2**31 - 1


class RawInputModel(nn.Module):
    """An exported model that takes raw inputs: standardises them as the run did, then runs the model.

    ``class_names[i]`` names the class of output ``i`` when the data named its classes (a CSV table's
    label values), else None; ``model`` is the network itself. The statistics are buffers, so they
    follow the model to another device.
    """

    input_mean: Tensor | None
    input_std: Tensor | None

    def __init__(
        self, model: nn.Module, standardisation: Standardisation | None, class_names: list[str] | None
    ) -> None:
        super().__init__()
        self.model = model
        self.class_names = class_names
        self.register_buffer("input_mean", None if standardisation is None else standardisation.mean)
        self.register_buffer("input_std", None if standardisation is None else standardisation.std)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_mean is not None and self.input_std is not None:
            x = Standardisation(self.input_mean, self.input_std)(x)
        return self.model(x)


@dataclasses.dataclass(frozen=True)
class SparseEntry:
    """One sparse weight of an exported model, as recorded in the metadata."""

    name: str
    module: str
    shape: tuple[int, ...]
    nnz: int
    linear: bool

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The (rows, columns) the CSR arrays index: (shape[0], product of the other dimensions)."""
        return (self.shape[0], math.prod(self.shape[1:]))


def export_model(
    model: nn.Module,
    path: str | Path,
    positions: Mapping[str, Tensor] | None = None,
    *,
    model_name: str | None = None,
    spec: ModelSpec | None = None,
    standardisation: Standardisation | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Write ``model`` to ``path`` as safetensors with every sparse weight in CSR form.

    ``positions`` names the sparse weights and their active flat positions (inactive entries are not
    stored, whatever their value); a name whose weight the model already stores sparse (a
    :class:`~evosparse.backends.csr_layer.SparseLinear`: csr or condensed) is written from that layer's own
    structure, in CSR form. ``model_name`` and ``spec`` (the
    registry entry that built the model) let :func:`load_exported` rebuild it without being given a
    skeleton; ``standardisation`` and ``class_names`` (the data's) let it take raw inputs and name
    its outputs.
    """
    tensors: dict[str, Tensor] = {}
    entries: list[SparseEntry] = []
    skip: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            prefix = f"{module_name}." if module_name else ""
            entry = SparseEntry(f"{prefix}weight", module_name, module.shape, module.nnz, True)
            _put_csr(tensors, entry, *module.csr_form())
            entries.append(entry)
            skip |= {f"{prefix}values", f"{prefix}_extra_state"}
    stored_sparse = {entry.name for entry in entries}
    for name, active in (positions or {}).items():
        if name in stored_sparse:
            continue
        module_name, module, weight = _dense_parameter(model, name, active)
        linear = isinstance(module, nn.Linear) and weight.dim() == 2 and not weight_read_by_parent(model, module_name)
        entry = SparseEntry(name, module_name, tuple(weight.shape), int(active.numel()), linear)
        active = active.to(weight.device, torch.int64)
        columns = entry.matrix_shape[1]
        rows = torch.div(active, columns, rounding_mode="floor")
        structure, order = CsrStructure.from_indices(rows, active - rows * columns, entry.matrix_shape)
        values = weight.detach().reshape(-1)[active][order.to(weight.device)]
        _put_csr(tensors, entry, structure, values)
        entries.append(entry)
        skip.add(name)
    for name, tensor in model.state_dict().items():
        if name in skip:
            continue
        if not isinstance(tensor, Tensor):
            raise UsageError(f"cannot export {name}: only tensors can be stored, got {type(tensor).__name__}")
        tensors[name] = tensor.detach().cpu().contiguous().clone()
    if standardisation is not None:
        tensors[INPUT_MEAN] = standardisation.mean.detach().cpu().to(torch.float32).contiguous()
        tensors[INPUT_STD] = standardisation.std.detach().cpu().to(torch.float32).contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "evosparse_version": evosparse.__version__,
        "model": model_name,
        "spec": dataclasses.asdict(spec) if spec is not None else None,
        "architecture": architecture_of(model),
        "sparse": [dataclasses.asdict(entry) for entry in entries],
        "class_names": None if class_names is None else list(class_names),
        "sha256": tensors_digest(tensors),
    }
    data = safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(metadata)})
    atomic_write_bytes(Path(path), data)


def load_exported(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild an exported model for inference (eval mode), sparse linear layers as :class:`CsrLinear`.

    ``model`` is a skeleton of the same architecture to fill (its sparse ``nn.Linear`` modules are
    replaced); without one the model is rebuilt from the registry entry in the file. A file that
    records the run's preprocessing or class names comes back as a :class:`RawInputModel` around the
    model, which takes raw inputs. A damaged, truncated or foreign file raises a one-line
    :class:`UsageError`.
    """
    tensors, metadata = read_exported(path)
    standardisation = None
    if INPUT_MEAN in tensors and INPUT_STD in tensors:
        standardisation = Standardisation(tensors.pop(INPUT_MEAN), tensors.pop(INPUT_STD))
    if model is None:
        model = _build_from_metadata(metadata, path)
    allowed_missing: set[str] = set()
    for entry in _entries(metadata, path):
        structure, values = _take_csr(tensors, entry, path)
        module = _submodule(model, entry.module, path)
        prefix = f"{entry.module}." if entry.module else ""
        if entry.linear:
            if not isinstance(module, nn.Linear | CsrLinear) or _linear_shape(module) != entry.matrix_shape:
                raise UsageError(f"{path}: module {entry.module!r} is not a linear layer of shape {entry.matrix_shape}")
            bias = tensors.get(f"{prefix}bias")
            csr = CsrLinear(structure, values, bias)
            if entry.module:
                replace_submodule(model, entry.module, csr)
            else:  # the model is the layer itself
                model = csr
            allowed_missing |= {f"{prefix}values", f"{prefix}_extra_state"}
        else:
            dense = values.new_zeros(entry.matrix_shape)
            dense[structure.row_indices, structure.col_indices] = values
            tensors[entry.name] = dense.reshape(entry.shape)
    try:
        outcome = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise UsageError(
            f"{path} does not fit the model ({str(error).strip().splitlines()[-1].strip()[:160]})"
        ) from None
    missing = sorted(set(outcome.missing_keys) - allowed_missing)
    if missing or outcome.unexpected_keys:
        first = (missing or outcome.unexpected_keys)[0]
        raise UsageError(f"{path} does not fit the model: {'missing' if missing else 'unexpected'} tensor {first!r}")
    class_names = metadata.get("class_names")
    if standardisation is not None or class_names is not None:
        model = RawInputModel(model, standardisation, class_names)
    return model.eval()


def read_exported(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the evosparse metadata of an exported file, after checking format and checksum."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata_text = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        raise UsageError(f"no exported model at {path}") from None
    except Exception as error:  # safetensors raises its own error type for damaged files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{path} is not a readable safetensors file ({reason[:120]})") from None
    try:
        metadata = json.loads(metadata_text) if metadata_text else None
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise UsageError(f"{path} is not an evosparse sparse-model export")
    if metadata.get("format_version") not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise UsageError(
            f"{path} has export format {metadata.get('format_version')!r}; this evosparse reads {readable}"
        )
    if metadata.get("sha256") != tensors_digest(tensors):
        raise UsageError(f"{path} is corrupt: its tensors do not match the checksum in its metadata")
    return tensors, metadata


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _put_csr(tensors: dict[str, Tensor], entry: SparseEntry, structure: CsrStructure, values: Tensor) -> None:
    """Store a weight's CSR arrays under ``NAME:crow_indices``, ``NAME:col_indices``, ``NAME:values``."""
    crow_dtype = torch.int32 if entry.nnz <= _INT32_LIMIT else torch.int64
    col_dtype = torch.int32 if entry.matrix_shape[1] <= _INT32_LIMIT else torch.int64
    tensors[f"{entry.name}:crow_indices"] = structure.crow_indices.to("cpu", crow_dtype).contiguous()
    tensors[f"{entry.name}:col_indices"] = structure.col_indices.to("cpu", col_dtype).contiguous()
    tensors[f"{entry.name}:values"] = values.detach().to("cpu").contiguous()


def _take_csr(tensors: dict[str, Tensor], entry: SparseEntry, path: str | Path) -> tuple[CsrStructure, Tensor]:
    """Remove a weight's CSR arrays from ``tensors`` and return its validated structure and values."""
    try:
        crow, cols, values = (tensors.pop(f"{entry.name}:{part}") for part in ("crow_indices", "col_indices", "values"))
    except KeyError as missing:
        raise UsageError(f"{path}: the CSR array {missing.args[0]!r} is missing") from None
    try:
        structure = structure_from_csr_arrays(crow, cols, entry.matrix_shape)
    except UsageError as error:
        raise UsageError(f"{path}: {entry.name}: {error}") from None
    if values.shape != (structure.nnz,) or not values.is_floating_point():
        raise UsageError(f"{path}: {entry.name} has {tuple(values.shape)} values for {structure.nnz} connections")
    return structure, values


def _dense_parameter(model: nn.Module, name: str, positions: Tensor) -> tuple[str, nn.Module, Tensor]:
    """Module name, owning module and parameter of a sparse weight stored dense, its positions checked."""
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        raise UsageError(f"sparse weight {name!r} names no parameter of the model") from None
    weight = getattr(module, attr, None)
    if not isinstance(weight, nn.Parameter):
        raise UsageError(f"sparse weight {name!r} names no parameter of the model")
    if (
        not isinstance(positions, Tensor)
        or positions.dim() != 1
        or positions.is_floating_point()
        or (positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= weight.numel()))
        or positions.unique().numel() != positions.numel()
    ):
        raise UsageError(f"positions of {name!r} must be distinct integer indices into its {weight.numel()} entries")
    return module_name, module, weight


def _entries(metadata: Mapping[str, Any], path: str | Path) -> list[SparseEntry]:
    """The sparse-weight records of the metadata, validated."""
    try:
        return [
            SparseEntry(
                str(e["name"]), str(e["module"]), tuple(int(s) for s in e["shape"]), int(e["nnz"]), bool(e["linear"])
            )
            for e in metadata["sparse"]
        ]
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{path}: the list of sparse weights in its metadata is malformed") from None


def _build_from_metadata(metadata: Mapping[str, Any], path: str | Path) -> nn.Module:
    """Instantiate the registry model recorded in the metadata."""
    name, spec = metadata.get("model"), metadata.get("spec")
    if not name or not isinstance(spec, dict):
        raise UsageError(f"{path} records no registry model; pass a model of the same architecture to fill")
    try:
        model_spec = ModelSpec(
            input_shape=tuple(spec["input_shape"]),
            num_classes=int(spec["num_classes"]),
            sequence=bool(spec["sequence"]),
            hidden=tuple(spec["hidden"]) if spec["hidden"] is not None else None,
            dropout=float(spec["dropout"]),
        )
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{path}: the model description in its metadata is malformed") from None
    return build_model(name, model_spec)


def _submodule(model: nn.Module, name: str, path: str | Path) -> nn.Module:
    """``model.get_submodule(name)`` with a one-line error."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise UsageError(f"{path}: the model has no module {name!r}") from None


def _linear_shape(module: nn.Linear | CsrLinear) -> tuple[int, int]:
    """(out_features, in_features) of an ``nn.Linear`` or :class:`CsrLinear`."""
    return (module.out_features, module.in_features)
