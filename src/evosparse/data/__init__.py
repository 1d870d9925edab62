"""Dataset registry: ``load_dataset("digits")``, ``"mnist"``, ``"csv:PATH"``, ...

Loaders are imported on first use so that a dataset's dependencies cost nothing until it is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from evosparse.data.base import Dataset
from evosparse.errors import UsageError

#: dataset id -> "module:function" of its loader; every loader takes ``data_dir``.
DATASETS: dict[str, str] = {
    "digits": "evosparse.data.digits:load_digits",
    "mnist": "evosparse.data.mnist:load_mnist",
    "fashion-mnist": "evosparse.data.fashion_mnist:load_fashion_mnist",
    "cifar10": "evosparse.data.cifar:load_cifar10",
    "cifar100": "evosparse.data.cifar:load_cifar100",
    "isolet": "evosparse.data.isolet:load_isolet",
}
#: Dataset ids that name a user's own file.
FILE_DATASETS = ("csv:PATH", "text:PATH")


def check_context(spec: str, context: int | None) -> None:
    """Refuse in one line a window length for a dataset that is not ``text:PATH``, or one below 1."""
    if context is None:
        return
    if not spec.startswith("text:"):
        raise UsageError(f"--context sets the window length of text:PATH datasets; {spec} is not one")
    if context < 1:
        raise UsageError(f"--context must be at least 1 character, got {context}")


def load_dataset(
    spec: str, *, data_dir: Path | None = None, target: str | None = None, context: int | None = None
) -> Dataset:
    """Load a dataset by id, a user's table with ``csv:PATH`` (label column: last, or ``target``), or a
    user's text with ``text:PATH`` (windows of ``context`` characters, default ``SEQ_LEN``)."""
    check_context(spec, context)
    if spec.startswith("csv:"):
        from evosparse.data.table import load_csv

        return load_csv(Path(spec[4:]), target=target)
    if spec.startswith("text:"):
        from evosparse.data.text import SEQ_LEN, load_text

        return load_text(Path(spec[5:]), SEQ_LEN if context is None else context)
    if target is not None:
        raise UsageError("--target applies only to csv:PATH datasets")
    if spec not in DATASETS:
        known = ", ".join([*sorted(DATASETS), *FILE_DATASETS])
        raise UsageError(f"unknown dataset {spec!r}; choose one of {known}")
    module_name, function_name = DATASETS[spec].split(":")
    loader = getattr(importlib.import_module(module_name), function_name)
    return loader(data_dir=data_dir)


__all__ = ["DATASETS", "FILE_DATASETS", "Dataset", "check_context", "load_dataset"]
