"""``--compile``: the training forward pass through ``torch.compile``, topology updates outside it.

Only the model's forward pass (and with it the backward pass torch derives from it) is compiled. The
optimizer step, ``sparsifier.step()`` (re-masking, topology updates) and evaluation run eagerly, as
without ``--compile``. The compiled graph reads the parameters as inputs on every call, so weights
zeroed or regrown by a topology update, and a csr layer's new structure, are what its next call sees
(tests/engine/test_compilation.py checks this against the eager model after a SET update). What the
compiler cannot trace (torch's sparse CSR kernels) runs eagerly between compiled pieces.

torch.compile needs a working backend on the device (a C++ compiler for the CPU, Triton for CUDA);
:func:`check_compile` tries it once on a tiny function and refuses ``--compile`` in one line where it fails.
"""

from __future__ import annotations

import functools
from typing import cast

import torch
from torch import nn

from evosparse.errors import UsageError


@functools.cache
def compile_problem(device_type: str) -> str | None:
    """Why ``torch.compile`` fails on ``device_type`` here (the first line of its error), or None when it works."""
    try:
        torch.compile(lambda x: torch.relu(x) + 1)(torch.ones(2, device=device_type))
    except Exception as error:  # whatever stops the compiler (no C++ compiler, no Triton, ...) means "not here"
        return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return None


def check_compile(device: torch.device) -> None:
    """Refuse ``--compile`` in one line where torch.compile does not work on ``device``."""
    problem = compile_problem(device.type)
    if problem is not None:
        raise UsageError(f"--compile: torch.compile does not work on {device.type} here ({problem}); run without it")


def compiled(model: nn.Module) -> nn.Module:
    """``model`` with its forward pass compiled (the same parameters and buffers, shared, not copied)."""
    return cast(nn.Module, torch.compile(model))
