"""The IDX format of MNIST-style data sets, and the loader shared by MNIST and Fashion-MNIST.

An IDX file is ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the values in
C order, big-endian (LeCun et al., http://yann.lecun.com/exdb/mnist/). Files are parsed in-process
from their bytes, gzip-compressed or raw.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping, Sequence
from math import prod
from pathlib import Path

import numpy as np

from evosparse.data.arrays import dataset_from_arrays
from evosparse.data.base import Dataset
from evosparse.data.download import discard_if_invalid, fetch
from evosparse.errors import DataError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: The four files of an MNIST-style release, in the order train images, train labels, test images,
#: test labels.
MNIST_STYLE_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """Parse the IDX file at ``path`` (gzip-compressed or not) into a native-endian array."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path.name} is a corrupt or truncated gzip file ({err})") from None
    return parse_idx(data, path.name)


def parse_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes, checking magic number, type code, sizes and payload length."""
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{source} is not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise DataError(f"{source} has unknown IDX type code {type_code:#04x}")
    if ndim == 0:
        raise DataError(f"{source} declares no dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source} is truncated inside its header")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{source} is truncated or corrupt: its header promises {expected} data bytes, "
            f"it holds {len(data) - header}"
        )
    values = np.frombuffer(data, dtype=dtype, count=prod(shape), offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def load_idx_image_set(
    name: str,
    mirrors: Sequence[str],
    sha256: Mapping[str, str],
    data_dir: Path | None,
    validation_size: int,
    num_classes: int = 10,
) -> Dataset:
    """Fetch and parse the four files of an MNIST-style release into a standardised Dataset.

    ``mirrors`` are base URLs (ending in ``/``) tried in order; files are cached under
    ``<cache>/<name>/``. The last ``validation_size`` training images become the validation split;
    images get shape ``(1, rows, cols)``.
    """
    arrays = []
    for filename in MNIST_STYLE_FILES:
        path = fetch([base + filename for base in mirrors], f"{name}/{filename}", sha256[filename], data_dir)
        with discard_if_invalid(path):
            arrays.append(_checked(read_idx(path), filename, num_classes))
    train_x, train_y, test_x, test_y = arrays
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if len(images) != len(labels):
            raise DataError(f"{name}: {len(images)} {split} images but {len(labels)} {split} labels")
    if not 0 <= validation_size < len(train_x):
        raise DataError(f"{name}: cannot hold out {validation_size} of {len(train_x)} training images")
    keep = len(train_x) - validation_size
    validation = (train_x[keep:, None], train_y[keep:]) if validation_size else None
    return dataset_from_arrays(
        name,
        num_classes,
        (train_x[:keep, None], train_y[:keep]),
        (test_x[:, None], test_y),
        validation,
        per_feature=False,
    )


def _checked(values: np.ndarray, filename: str, num_classes: int) -> np.ndarray:
    """Require uint8 images ``(n, rows, cols)`` or uint8 labels ``(n,)`` below ``num_classes``."""
    is_labels = "labels" in filename
    if values.dtype != np.uint8 or values.ndim != (1 if is_labels else 3):
        kind = "labels (n,)" if is_labels else "images (n, rows, cols)"
        raise DataError(f"{filename} should hold uint8 {kind}, holds {values.dtype} {values.shape}")
    if is_labels and values.size and int(values.max()) >= num_classes:
        raise DataError(f"{filename} holds label {int(values.max())}, expected 0..{num_classes - 1}")
    return values
