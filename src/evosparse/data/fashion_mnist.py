"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): Zalando's drop-in replacement for MNIST.

Same IDX files and split as MNIST: 50k train, the last 10k training images as validation, 10k test,
``(1, 28, 28)`` samples, globally standardised.
"""

from __future__ import annotations

from pathlib import Path

from evosparse.data.base import Dataset
from evosparse.data.idx import load_idx_image_set

#: Zalando's canonical S3 bucket first, then the files in the project's GitHub repository.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

#: SHA-256 of the official files, pinned identically by several independent public loaders
#: (Zalando itself publishes MD5 sums only).
SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

#: Training images held out for validation, as for MNIST.
VALIDATION_SIZE = 10_000


def load_fashion_mnist(data_dir: Path | None = None) -> Dataset:
    """Fashion-MNIST as train 50k / validation 10k / test 10k, downloaded and verified on first use."""
    return load_idx_image_set("fashion-mnist", MIRRORS, SHA256, data_dir, VALIDATION_SIZE)
