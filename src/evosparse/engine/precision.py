"""Mixed precision (``--precision``): the forward pass and loss under ``torch.autocast`` in bfloat16.

``fp32`` computes everything in float32. ``bf16`` runs each training and evaluation forward pass and its
loss under ``torch.autocast(device_type, dtype=torch.bfloat16)`` on the run's device (CPU or CUDA): matrix
products in bfloat16, reductions and the loss in float32 (autocast's own op lists). Parameters, their
gradients and the optimizer state stay float32, so masks, the sparsifier's re-masking and checkpoints
are unchanged: masked weights stay exactly zero. bfloat16 keeps float32's exponent range, so no loss
scaling is needed (unlike float16).

The csr backend computes in bfloat16 only where torch's sparse kernels have it on the device
(:func:`~evosparse.backends.csr_ops.kernels_support`); elsewhere ``bf16`` with ``--backend csr`` is refused,
since it would silently train in float32. The condensed backend's kernels compute in the values' dtype
under autocast (:func:`~evosparse.backends.condensed_ops.condensed_linear`), so ``bf16`` with
``--backend condensed`` is refused for the same reason.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from evosparse.backends.csr_ops import kernels_support
from evosparse.errors import UsageError

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The context a forward pass and its loss run in for ``precision`` on ``device``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def check_precision(precision: str, backend: str, device: torch.device) -> None:
    """Refuse in one line a precision the backend cannot compute in on ``device``."""
    if precision == "bf16" and backend == "csr" and not kernels_support(torch.bfloat16, device):
        raise UsageError(
            f"--precision bf16 with --backend csr needs torch's sparse CSR kernels in bfloat16, which torch "
            f"{torch.__version__} lacks on {device.type}: use --backend masked or --precision fp32"
        )
    if precision == "bf16" and backend == "condensed":
        raise UsageError(
            "--precision bf16 with --backend condensed would train in float32 (its kernels compute in the "
            "weights' dtype): use --backend masked or --precision fp32"
        )
