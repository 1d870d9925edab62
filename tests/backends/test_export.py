"""Export to safetensors: round trips with identical outputs, file contents, and refusal of damaged files."""

from __future__ import annotations

import json
import os

import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

import evosparse
from backend_pairs import twin_mlp
from evosparse.backends.csr_layer import CsrLinear
from evosparse.backends.export import METADATA_KEY, export_model, load_exported, tensors_digest
from evosparse.errors import UsageError
from evosparse.models import ModelSpec, build_model

LENET_SPEC = ModelSpec(input_shape=(1, 28, 28), num_classes=10, hidden=(300, 100))


def flat_positions(mask: torch.Tensor) -> torch.Tensor:
    """The active flat positions (int64) of a boolean mask."""
    return mask.reshape(-1).nonzero().squeeze(1)


def sparse_registry_model(
    name: str, spec: ModelSpec, density: float, seed: int
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A registry model whose ≥2-D weights are masked at ``density``; returns (model, active positions by name)."""
    torch.manual_seed(seed)
    model = build_model(name, spec)
    generator = torch.Generator().manual_seed(seed)
    masks = {
        name: torch.rand(param.shape, generator=generator) < density
        for name, param in model.named_parameters()
        if param.dim() >= 2
    }
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    return model.eval(), {name: flat_positions(mask) for name, mask in masks.items()}


@pytest.fixture(scope="module")
def lenet_export(tmp_path_factory):
    """LeNet-300-100 sparsified by SET at 5% density (sparse Kaiming init), exported with its registry entry."""
    torch.manual_seed(1)
    model = build_model("mlp", LENET_SPEC)
    sparsifier = evosparse.sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1), "set", density=0.05, seed=1)
    exported, positions = sparsifier.method.export_model()
    assert exported is model
    assert positions.keys() == sparsifier.topology.state_dict().keys()
    path = tmp_path_factory.mktemp("export") / "lenet.safetensors"
    export_model(model, path, positions, model_name="mlp", spec=LENET_SPEC)
    return model.eval(), positions, path


def test_masked_lenet_round_trip_gives_the_same_outputs(lenet_export):
    model, positions, path = lenet_export
    loaded = load_exported(path)
    assert not loaded.training
    layers = [m for m in loaded.modules() if isinstance(m, CsrLinear)]
    assert [layer.nnz for layer in layers] == [active.numel() for active in positions.values()]
    assert not any(isinstance(m, nn.Linear) for m in loaded.modules())
    x = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # float32 sums in another order
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_file_holds_csr_arrays_metadata_and_no_pickle(lenet_export):
    model, positions, path = lenet_export
    with safetensors.safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        metadata = json.loads(handle.metadata()[METADATA_KEY])
        crow = handle.get_tensor("layers.0.weight:crow_indices")
        cols = handle.get_tensor("layers.0.weight:col_indices")
    assert crow.dtype == cols.dtype == torch.int32
    assert crow.numel() == 301 and cols.numel() == positions["layers.0.weight"].numel()
    assert names == {f"{n}:{part}" for n in positions for part in ("crow_indices", "col_indices", "values")} | {
        f"layers.{i}.bias" for i in (0, 2, 4)
    }
    assert metadata["evosparse_version"] == evosparse.__version__ and metadata["model"] == "mlp"
    assert metadata["architecture"] == [784, 300, 100, 10]
    assert [(e["name"], e["shape"], e["linear"]) for e in metadata["sparse"]] == [
        ("layers.0.weight", [300, 784], True),
        ("layers.2.weight", [100, 300], True),
        ("layers.4.weight", [10, 100], True),
    ]
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert json.loads(path.read_bytes()[8 : 8 + header_length])  # a JSON header, then raw tensor bytes
    dense_size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert os.path.getsize(path) < 0.15 * dense_size


def test_csr_model_round_trip_into_a_skeleton_is_exact(tmp_path):
    _, _, csr_model = twin_mlp((20, 16, 8, 3), density=0.3, seed=2)
    csr_model = csr_model.float().eval()
    path = tmp_path / "csr.safetensors"
    export_model(csr_model, path)
    _, _, skeleton = twin_mlp((20, 16, 8, 3), density=0.9, seed=3)  # same shapes, another topology
    loaded = load_exported(path, skeleton.float())
    x = torch.randn(10, 20)
    with torch.no_grad():
        assert torch.equal(loaded(x), csr_model(x))


def test_conv_weights_are_stored_sparse_and_restored_dense(tmp_path):
    spec = ModelSpec(input_shape=(1, 8, 8), num_classes=4, hidden=(12,))
    model, positions = sparse_registry_model("cnn", spec, 0.3, seed=4)
    path = tmp_path / "cnn.safetensors"
    export_model(model, path, positions, model_name="cnn", spec=spec)
    loaded = load_exported(path)
    assert isinstance(loaded.features[0], nn.Conv2d)
    assert torch.equal(loaded.features[0].weight, model.features[0].weight)
    assert sum(isinstance(m, CsrLinear) for m in loaded.modules()) == 2
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() <= 1e-6


def test_inactive_entries_are_not_stored_whatever_their_value(tmp_path):
    linear = nn.Linear(6, 4)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(5)) < 0.5
    model = nn.Sequential(linear)
    path = tmp_path / "one.safetensors"
    export_model(model, path, {"0.weight": flat_positions(mask)})  # weights outside the mask are not zero here
    loaded = load_exported(path, nn.Sequential(nn.Linear(6, 4)))
    assert torch.equal(loaded[0].to_dense_weight(), linear.weight.detach() * mask)


def corrupt_copies(path, tmp_path):
    """Damaged variants of an exported file: truncated, a flipped data byte, garbage, foreign safetensors."""
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    variants = {
        "truncated": data[: len(data) // 2],
        "flipped": bytes(flipped),
        "garbage": b"\x00\x01not a model" * 50,
        "empty": b"",
        "foreign": safetensors.torch.save({"w": torch.zeros(3)}),
    }
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
    return [tmp_path / name for name in variants]


def test_damaged_or_foreign_files_are_refused_in_one_line(lenet_export, tmp_path):
    _, _, path = lenet_export
    for damaged in [*corrupt_copies(path, tmp_path), tmp_path / "missing.safetensors"]:
        with pytest.raises(UsageError) as caught:
            load_exported(damaged)
        message = str(caught.value)
        assert "\n" not in message and str(damaged) in message, message


def test_a_file_with_a_forged_checksum_but_broken_csr_is_refused(lenet_export, tmp_path):
    _, _, path = lenet_export
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["layers.2.weight:col_indices"][0] = 300  # out of range
    metadata["sha256"] = tensors_digest(tensors)
    broken = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(tensors, str(broken), metadata={METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(UsageError, match="layers.2.weight: cols must lie"):
        load_exported(broken)


def test_loading_into_a_different_architecture_is_refused(lenet_export):
    _, _, path = lenet_export
    wrong = build_model("mlp", ModelSpec(input_shape=(1, 28, 28), num_classes=10, hidden=(200, 100)))
    with pytest.raises(UsageError, match="not a linear layer of shape"):
        load_exported(path, wrong)


def test_export_usage_errors(tmp_path):
    model = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(UsageError, match="names no parameter"):
        export_model(model, tmp_path / "x", {"1.weight": torch.arange(3)})
    for wrong in (
        torch.ones(3, 5, dtype=torch.bool),  # a boolean mask, as before format version 2
        torch.tensor([0, 15]),  # outside the 15 entries
        torch.tensor([-1]),
        torch.tensor([2, 2]),
        torch.tensor([0.0, 1.0]),
        [0, 1],
    ):
        with pytest.raises(UsageError, match="must be distinct integer indices into its 15 entries"):
            export_model(model, tmp_path / "x", {"0.weight": wrong})
    assert not (tmp_path / "x").exists()
    export_model(model, tmp_path / "plain.safetensors")
    with pytest.raises(UsageError, match="records no registry model"):
        load_exported(tmp_path / "plain.safetensors")
