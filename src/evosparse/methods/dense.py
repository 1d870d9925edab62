"""The dense baseline: every connection present, no masks."""

from evosparse.methods.base import Method, register


@register
class Dense(Method):
    """Train the full network; the reference every sparse method is read against."""

    name = "dense"
    summary = "fully connected baseline (no sparsity)"
    sparse = False
