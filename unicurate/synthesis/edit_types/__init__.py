"""Edit types: one module per type, each declaring ``EDIT_TYPE = EditTypeSpec(...)``.

A type's module holds its operation, its instruction templates, the parameters
it draws (colour, shift, scale, partner) and the checks that apply to it
(:class:`EditTypeSpec`). Everything else reads this registry: ``schema.EDIT_TYPES``,
the allowed values and the default of ``edits.types`` in recipes, the
synthesizer's dispatch and the triplet checks. Adding an edit type is adding a
module here (named as the type) and its test.
"""

from __future__ import annotations

from unicurate.declared import declarations
from unicurate.synthesis.edit_types._base import EditContext, EditTypeSpec, NoPartner

__all__ = ["EditContext", "EditTypeSpec", "NoPartner", "REGISTRY", "NAMES"]


def _discover() -> dict[str, EditTypeSpec]:
    """Every public module of this package and its ``EDIT_TYPE``, in declared ``order``."""
    specs = declarations(__name__, __path__, "EDIT_TYPE", EditTypeSpec)
    orders = [s.order for s in specs]
    if len(set(orders)) != len(orders):
        raise TypeError(f"edit types need distinct `order` values: {sorted((s.order, s.name) for s in specs)}")
    return {s.name: s for s in sorted(specs, key=lambda s: s.order)}


REGISTRY: dict[str, EditTypeSpec] = _discover()
NAMES: tuple[str, ...] = tuple(REGISTRY)
