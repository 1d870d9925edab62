"""The storage backends of sparse layers, and how the Sparsifier makes a sparse-linear backend's layers.

``masked`` keeps dense weights times boolean masks (:class:`~evosparse.topology.masks.MaskedLayer`); the
others replace every sparse ``nn.Linear`` by a :class:`~evosparse.backends.csr_layer.SparseLinear`
module, made from the masked layer the Sparsifier drew by the factory in :data:`LINEAR_BACKENDS`.
"""

from __future__ import annotations

from evosparse.backends.condensed_model import condensed_layer_of
from evosparse.backends.csr_model import LinearFactory, csr_layer_of

#: Backends that replace each sparse ``nn.Linear`` by a sparse module, with the factory of their layers.
LINEAR_BACKENDS: dict[str, LinearFactory] = {"csr": csr_layer_of, "condensed": condensed_layer_of}

#: The storage backends of sparse layers.
BACKENDS: tuple[str, ...] = ("masked", *LINEAR_BACKENDS)

#: Backends whose layers store a fixed number of slots per output unit: their runs start from a constant
#: fan-in (:func:`~evosparse.topology.masks.fan_in_mask`) whatever the method.
CONSTANT_FAN_IN_BACKENDS: tuple[str, ...] = ("condensed",)
