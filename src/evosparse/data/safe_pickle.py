"""Unpickling restricted to NumPy arrays, for data files that only exist as pickles.

A pickle can name any importable callable and call it while loading, so an untrusted pickle is
untrusted code. This unpickler resolves only the handful of globals that rebuilding an ``ndarray``
needs and refuses every other one before it is imported.
"""

from __future__ import annotations

import gzip
import pickle
from typing import IO, Any

import numpy as np

from evosparse.errors import DataError

try:  # NumPy >= 2 moved the implementation module; both spellings occur in existing pickles.
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - NumPy < 1.26
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

#: What the unpickler raises on truncated or garbled input.
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that admits only the globals needed to rebuild NumPy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; raise :class:`DataError` for anything else."""
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"refusing to unpickle {module}.{name}: the file may only contain NumPy arrays") from None


def load_numpy_pickle(stream: IO[bytes] | gzip.GzipFile, encoding: str = "latin1") -> Any:
    """Unpickle ``stream`` with :class:`NumpyOnlyUnpickler`.

    ``latin1`` lets Python 2 pickles (whose array buffers are byte strings) load unchanged.
    Malformed or truncated data raises :class:`DataError`.
    """
    try:
        return NumpyOnlyUnpickler(stream, encoding=encoding).load()
    except DataError:
        raise
    except _MALFORMED as err:
        raise DataError(f"malformed pickle: {' '.join(str(err).split()) or type(err).__name__}") from None
