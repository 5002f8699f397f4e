"""Compression passes behind one interface (:class:`~picojoule.passes.base.CompressionPass`), in one registry.

:data:`PASSES` lists them in the order their fields appear in a policy; :func:`ordered` in the order they
apply to weights and price a workload (prune, low rank, sparsity, quantize). A new technique is a module with a
pass object, added here.
"""

from __future__ import annotations

from picojoule.passes.base import CompressionPass, KnobField, PricingState
from picojoule.passes.lowrank import LOWRANK
from picojoule.passes.prune import PRUNE
from picojoule.passes.quantize import QUANTIZE
from picojoule.passes.sparsity import SPARSITY

#: every pass, in the order of their fields in a policy (w_bits, a_bits, keep, rank, sparsity, ...)
PASSES: tuple[CompressionPass, ...] = (QUANTIZE, PRUNE, LOWRANK, SPARSITY)
#: every knob field, in policy order
FIELDS: tuple[KnobField, ...] = tuple(f for p in PASSES for f in p.fields)
FIELD_BY_NAME: dict[str, KnobField] = {f.name: f for f in FIELDS}
#: the pass that owns each field
OWNER: dict[str, CompressionPass] = {f.name: p for p in PASSES for f in p.fields}

__all__ = ["FIELDS", "FIELD_BY_NAME", "OWNER", "PASSES", "CompressionPass", "KnobField", "PricingState",
           "ordered", "get_pass"]


def ordered() -> tuple[CompressionPass, ...]:
    """The passes in apply and pricing order."""
    return tuple(sorted(PASSES, key=lambda p: p.order))


def get_pass(name: str) -> CompressionPass:
    for p in PASSES:
        if p.name == name:
            return p
    raise KeyError(name)
