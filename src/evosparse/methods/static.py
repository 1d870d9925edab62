"""Static random sparsity: a random mask drawn once and never changed."""

from evosparse.methods.base import Method, register


@register
class Static(Method):
    """A fixed random topology at the requested density (the control for every evolving method)."""

    name = "static"
    summary = "random sparse topology, fixed for the whole run"
