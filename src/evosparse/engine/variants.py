"""Comparison entries that are a registered method run in a particular way.

* ``learned-static`` — method ``static`` on the final masks of the same-seed run of a source method in
  the same comparison (``--learned-from``, default: the first evolving sparse method listed), the
  "role of adaptivity" control of AWS Section 5.1; the source runs first.
* ``wide-dense`` / ``small-dense`` — method ``dense`` with hidden widths scaled to the dense weight count
  divided by the density, or to the sparse runs' active count (AWS Section 4.3; see
  :mod:`evosparse.engine.width_scaling`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from evosparse.engine.width_scaling import AUTO_SMALL, AUTO_WIDE
from evosparse.errors import UsageError
from evosparse.methods import get_method

LEARNED_STATIC = "learned-static"
#: Entry name -> the registered method it runs.
VARIANTS = {LEARNED_STATIC: "static", "wide-dense": "dense", "small-dense": "dense"}
WIDTH_SCALES = {"wide-dense": AUTO_WIDE, "small-dense": AUTO_SMALL}


def base_method(name: str) -> str:
    """The registered method behind a comparison entry (the entry itself for a plain method)."""
    return VARIANTS.get(name, name)


def learned_source(methods: Sequence[str], learned_from: str | None) -> str | None:
    """The method whose final masks ``learned-static`` trains on, or None when it is not listed.

    ``learned_from`` must be a listed sparse method; by default the first listed method that evolves
    its topology is taken. Anything else is refused with one line.
    """
    if LEARNED_STATIC not in methods:
        if learned_from is not None:
            raise UsageError(f"--learned-from applies to {LEARNED_STATIC}, which is not among --methods")
        return None
    if learned_from is None:
        evolving = [name for name in methods if name not in VARIANTS and get_method(name).evolves]
        if not evolving:
            raise UsageError(f"{LEARNED_STATIC} needs an evolving sparse method among --methods (or --learned-from)")
        return evolving[0]
    if learned_from not in methods or learned_from in VARIANTS or not get_method(learned_from).sparse:
        raise UsageError(f"--learned-from must name a sparse method among --methods, got {learned_from!r}")
    return learned_from


def variant_settings(
    name: str, seed: int, source: str | None, run_folder: Callable[[str, int], Path]
) -> dict[str, str]:
    """The run settings an entry adds to the shared ones: the source run's folder, or the width scale."""
    if name == LEARNED_STATIC:
        assert source is not None, "learned_source() resolves the source of a listed learned-static"
        return {"fixed_topology_from": str(run_folder(source, seed))}
    if name in WIDTH_SCALES:
        return {"width_scale": WIDTH_SCALES[name]}
    return {}


def run_order(methods: Sequence[str]) -> list[str]:
    """``methods`` in the order they must train: ``learned-static`` after its source (last)."""
    return sorted(methods, key=lambda name: name == LEARNED_STATIC)
