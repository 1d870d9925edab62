"""Static random sparsity: a random mask drawn once and never changed."""

from collections.abc import Mapping
from typing import Any

from evosparse.methods.base import Method, register


@register
class Static(Method):
    """A fixed random topology at the requested density (the control for every evolving method)."""

    name = "static"
    summary = "random sparse topology, fixed for the whole run"

    @classmethod
    def keeps_fan_ins(cls, hparams: Mapping[str, Any]) -> bool:
        """The topology never changes."""
        return True
