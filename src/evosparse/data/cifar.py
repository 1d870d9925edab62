"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from their *binary* tarballs, parsed in memory.

The binary version avoids unpickling entirely: each record is the label byte(s) followed by
3,072 pixel bytes (1,024 red, then green, then blue, each 32×32 row-major), which is exactly a
``(3, 32, 32)`` channel-first image. CIFAR-100 records carry two label bytes, coarse then fine; we
use the 100 fine classes. Images are standardised by one global mean and standard deviation.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evosparse.data.arrays import dataset_from_arrays
from evosparse.data.base import Dataset
from evosparse.data.download import discard_if_invalid, fetch
from evosparse.errors import DataError

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarRelease:
    """Where one CIFAR tarball lives and how its records are laid out."""

    name: str
    url: str
    filename: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_bytes: int
    num_classes: int


CIFAR10 = CifarRelease(
    name="cifar10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    filename="cifar-10-binary.tar.gz",
    train_members=tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    test_members=("cifar-10-batches-bin/test_batch.bin",),
    label_bytes=1,
    num_classes=10,
)

CIFAR100 = CifarRelease(
    name="cifar100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    filename="cifar-100-binary.tar.gz",
    train_members=("cifar-100-binary/train.bin",),
    test_members=("cifar-100-binary/test.bin",),
    label_bytes=2,
    num_classes=100,
)

#: SHA-256 of the tarballs, pinned identically by several independent public loaders (the CIFAR
#: page itself publishes MD5 sums only).
SHA256 = {
    "cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    "cifar-100-binary.tar.gz": "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
}


def load_cifar10(data_dir: Path | None = None) -> Dataset:
    """CIFAR-10: 50,000 training and 10,000 test images ``(3, 32, 32)`` in 10 classes."""
    return load_cifar(CIFAR10, data_dir)


def load_cifar100(data_dir: Path | None = None) -> Dataset:
    """CIFAR-100: 50,000 training and 10,000 test images ``(3, 32, 32)`` in 100 fine classes."""
    return load_cifar(CIFAR100, data_dir)


def load_cifar(release: CifarRelease, data_dir: Path | None = None) -> Dataset:
    """Fetch and verify ``release``'s tarball, then parse its train and test records."""
    path = fetch(release.url, f"{release.name}/{release.filename}", SHA256[release.filename], data_dir)
    with discard_if_invalid(path):
        train, test = read_cifar_tarball(path, release)
    return dataset_from_arrays(release.name, release.num_classes, train, test, per_feature=False)


def read_cifar_tarball(
    path: Path, release: CifarRelease
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train_images, train_labels), (test_images, test_labels))`` read from the tarball."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            train = _records(archive, release.train_members, release, path.name)
            test = _records(archive, release.test_members, release, path.name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path.name} is a corrupt or truncated tar.gz archive ({err})") from None
    return train, test


def _records(
    archive: tarfile.TarFile, members: tuple[str, ...], release: CifarRelease, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the records of ``members`` into images ``(n, 3, 32, 32)`` and labels ``(n,)``."""
    record = release.label_bytes + _PIXELS
    chunks = []
    for member in members:
        try:
            stream = archive.extractfile(member)
        except KeyError:
            stream = None
        if stream is None:
            raise DataError(f"{source} has no file {member}; is it the CIFAR binary version?")
        data = stream.read()
        if not data or len(data) % record:
            raise DataError(f"{source}: {member} is not a whole number of {record}-byte records")
        chunks.append(np.frombuffer(data, dtype=np.uint8).reshape(-1, record))
    rows = np.concatenate(chunks)
    labels = rows[:, release.label_bytes - 1].astype(np.int64)  # the fine label is the last label byte
    if labels.max() >= release.num_classes:
        raise DataError(f"{source}: label {labels.max()} found, expected 0..{release.num_classes - 1}")
    return rows[:, release.label_bytes :].reshape(-1, 3, 32, 32), labels
