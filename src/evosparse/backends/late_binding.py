"""Per-layer setup of a method, run once the Sparsifier's sparse layers are the final ones.

The Sparsifier constructs its method *before* it puts the csr backend in place (so that a method
refusing its settings leaves the model untouched): the method then still sees the masked
``nn.Linear`` layers that are about to be replaced by :class:`~evosparse.backends.csr_layer.CsrLinear`
(or, for a model built on the meta device, no layers at all). Hooks a method registers on those
layers would be lost. :class:`LayerSetup` runs the method's setup (hooks on the layer modules,
buffers sized by the layers) at the right moment: at once on the masked backend, whose layers are
final from the start; on the csr backend at the model's first forward pass (a forward pre-hook on
the model itself, which the backend never replaces) or at the first :meth:`LayerSetup.ensure`
(an update or a checkpoint load before any forward pass), whichever comes first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from evosparse.methods.base import Method


class LayerSetup:
    """Runs ``setup`` exactly once, when ``method.topology`` holds the final sparse layers."""

    def __init__(self, method: Method, setup: Callable[[], None]) -> None:
        self._setup = setup
        self.done = False
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        if method.sparsifier.backend == "masked":
            self.ensure()
        else:
            self._handle = method.sparsifier.model.register_forward_pre_hook(self._before_forward)
            method.add_hook(self._handle)

    def _before_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.ensure()

    def ensure(self) -> None:
        """Run the setup now unless it has run already."""
        if self.done:
            return
        self.done = True
        if self._handle is not None:
            self._handle.remove()
        self._setup()
