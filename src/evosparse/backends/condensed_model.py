"""The condensed backend: a model's sparse ``nn.Linear`` layers become :class:`CondensedLinear`, seen as
:class:`CondensedLayer`.

Made, installed and squashed like the csr backend (:func:`~evosparse.backends.csr_model.linear_twins`
with :func:`condensed_layer_of`, :func:`~evosparse.backends.csr_model.install_linears`,
:func:`~evosparse.backends.csr_model.squash_linears`); only the rewiring and the storage differ (see
:mod:`evosparse.backends.condensed_layer`). It suits methods that keep every neuron's fan-in (the
Sparsifier starts it from a constant fan-in): any rewiring is correct, but a layer whose counts drift
apart pays for its fullest row in every row.
"""

from __future__ import annotations

from torch import Tensor

from evosparse.backends import condensed_layer
from evosparse.backends.condensed_layer import CondensedLinear
from evosparse.backends.csr_model import SparseLinearLayer, twin_factory


class CondensedLayer(SparseLinearLayer[CondensedLinear]):
    """A :class:`CondensedLinear` as a sparse layer: padded (out, k_max) slots, no dense out x in tensor."""

    backend = "condensed"

    def rewire(self, prune: Tensor, grow: Tensor, grow_values: Tensor | float = 0.0) -> int:
        return condensed_layer.rewire(self.module, prune, grow, grow_values, self.optimizer)

    def apply_mask(self) -> None:
        """Zero the padding slots' values (they hold no connection)."""
        self.module.zero_padding()

    def check_storage(self) -> None:
        condensed_layer.check(self.module)


#: Masked ``nn.Linear`` layers to condensed layers.
condensed_layer_of = twin_factory(CondensedLayer, CondensedLinear.from_dense)
