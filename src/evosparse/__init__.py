"""evosparse: dynamic sparse training for PyTorch.

>>> s = evosparse.sparsify(model, optimizer, method="set", density=0.05)
>>> # in the loop: optimizer.step(); s.step()   — after each epoch: s.end_epoch()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Sparsifier", "__version__", "sparsify"]

if TYPE_CHECKING:
    from evosparse.sparsifier import Sparsifier, sparsify


def __getattr__(name: str) -> Any:
    """Import the training machinery (and torch) only when it is first used."""
    if name in ("Sparsifier", "sparsify"):
        from evosparse import sparsifier

        return getattr(sparsifier, name)
    raise AttributeError(f"module 'evosparse' has no attribute {name!r}")
