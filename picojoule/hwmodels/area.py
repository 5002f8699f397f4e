"""Silicon area of a target (mm²), from the scaling rules of :mod:`picojoule.hwmodels.scaling`.

area = sum over on-chip memory levels of instances x the area of one instance at its capacity (the SRAM rule; for
levels with role ``rf`` the smaller of it and the flip-flop register-file rule, as a designer would build a few
bytes from flip-flops and half a kilobyte as SRAM, like Eyeriss's filter scratchpad) + PEs x MACs per PE x the area of one MAC at the
widest mode's operand width. A precision-scalable datapath (``compute.precision_scalable``) is a BitFusion-style
fused unit (Sharma et al., ISCA 2018): its area and energy overheads over a fixed-width MAC grow with the fusion
depth, the widest width over the narrowest one it packs natively (``compute.operand_bits``), as BitFusion's
synthesised 2-bit-brick units do at depths 2, 4 and 8 (1.53x, 2.52x, 3.40x area; 1.31x, 1.88x, 2.46x energy,
:data:`~picojoule.hwmodels.scaling.BITFUSION_AREA_OVERHEAD`). Off-chip DRAM, and a ``noc`` level (the network into the register files), have no area here. A target's area is
an estimate of its die, not a floor plan: wires, control and I/O are not counted, so compare the areas of
hardware points of one family rather than a die photo.
"""

from __future__ import annotations

import numpy as np

from picojoule.hwmodels import scaling
from picojoule.hwmodels.target import Target

#: fusion depth (widest / narrowest natively packed width) -> BitFusion's overheads (2-bit bricks: P = 2 x depth)
_DEPTHS = (1, 2, 4, 8)


def fusion_depth(target: Target) -> int:
    """Widest mode width over the narrowest natively packed width, rounded to a power of two in 1..8 (1: a fixed
    width datapath or one that is not precision-scalable)."""
    return depth_of(max(m.bits for m in target.compute.modes), min(target.compute.native_bits),
                    target.compute.precision_scalable)


def depth_of(widest: int, narrowest: int, precision_scalable: bool) -> int:
    """:func:`fusion_depth` from the figures themselves."""
    if not precision_scalable:
        return 1
    ratio = min(max(widest / max(narrowest, 1), 1.0), 8.0)
    return int(min(_DEPTHS, key=lambda d: abs(np.log2(d) - np.log2(ratio))))


def fusion_overhead(depth: int, quantity: str) -> float:
    """BitFusion's synthesised overhead (``"area"`` or ``"energy"``) of a fused unit of ``depth`` over a fixed one."""
    if depth <= 1:
        return 1.0
    table = scaling.BITFUSION_AREA_OVERHEAD if quantity == "area" else scaling.BITFUSION_ENERGY_OVERHEAD
    return float(table[2 * depth])


def memory_area_mm2(target: Target) -> dict[str, float]:
    """Area of each on-chip memory level (all its instances), mm²."""
    node = target.technology_nm
    out = {}
    for role, m in zip(target.roles[:-1], target.memory[:-1]):
        if role == "noc":  # the array's network delivers into the register files: its storage is theirs
            continue
        one = float(scaling.sram_area_mm2(m.capacity_bytes, node))
        if role == "rf":  # a register file is built from flip-flops or as a small SRAM, whichever is smaller
            one = min(one, float(scaling.register_file_area_mm2(m.capacity_bytes, node)))
        out[m.name] = one * m.instances
    return out


def compute_area_mm2(target: Target) -> float:
    """Area of the PE array's MACs, mm²: fixed-width MACs at the widest mode (accumulating at the PE's psum width),
    times the fused unit's overhead where the datapath is precision-scalable."""
    bits = max(m.bits for m in target.compute.modes)
    acc = max(target.spatial.psum_bits, bits)
    per_mac = float(scaling.mac_area_mm2(bits, bits, target.technology_nm, acc_bits=acc))
    per_mac *= fusion_overhead(fusion_depth(target), "area")
    return per_mac * target.num_pes * target.spatial.macs_per_pe_per_cycle


def area_mm2(target: Target) -> float:
    """The target's area estimate, mm²: memories plus MACs."""
    return sum(memory_area_mm2(target).values()) + compute_area_mm2(target)
