"""Sourced scaling rules for hardware co-design: memory, MAC, DRAM and leakage figures as functions of the
parameters a co-design target may range over (capacity, word width, operand bits, technology node).

Pure numpy; every rule says where its numbers come from (docstring, and :data:`SOURCES` for a target file's
``source: scaling.<rule>``). Energies are built at 45 nm, where the anchors are (Horowitz, ISSCC 2014), and moved to
other nodes by :func:`technology_scale`. Array arguments broadcast; scalar arguments give a float.

Figures that are fits or estimates say so. The CACTI figures quoted were produced for this module with the CACTI 7
binary that ZigZag ships (``zigzag/cacti/cacti_master``), ZigZag's baseline config (UCA ``ram``, one read/write
port, one bank, ECC on, itrs-hp cells and periphery unless stated, 300 K): they are cross-checks, not anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from picojoule.errors import PicojouleError


class ScalingError(PicojouleError, ValueError):
    """A bad argument to a scaling rule: one line naming the argument and what was expected."""


# ---------------------------------------------------------------------------------------------------------------
# argument checks


def _array(name: str, value, what: str, integer: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ScalingError(f"{name}: expected {what}, got {value!r}") from None
    if arr.size == 0:
        raise ScalingError(f"{name}: expected {what}, got an empty array")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        bad = arr[~(np.isfinite(arr) & (arr > 0))].flat[0]
        raise ScalingError(f"{name}: expected {what}, got {bad:g}")
    if integer and np.any(arr != np.round(arr)):
        bad = arr[arr != np.round(arr)].flat[0]
        raise ScalingError(f"{name}: expected {what}, got {bad:g}")
    return arr


def _capacity(value) -> np.ndarray:
    return _array("capacity_bytes", value, "a positive capacity in bytes")


def _bits(name: str, value) -> np.ndarray:
    return _array(name, value, "a positive whole number of bits", integer=True)


def _node(value, lo: float, hi: float, table: str) -> np.ndarray:
    arr = _array("technology_nm", value, "a positive technology node in nm")
    if np.any((arr < lo) | (arr > hi)):
        bad = arr[(arr < lo) | (arr > hi)].flat[0]
        raise ScalingError(f"technology_nm: expected {lo:g}..{hi:g} nm (the range of {table}), got {bad:g}")
    return arr


def _out(result: np.ndarray, *inputs) -> float | np.ndarray:
    """A float when every input was a scalar, else the broadcast array."""
    if all(np.ndim(x) == 0 for x in inputs):
        return float(np.asarray(result).reshape(()))
    return np.asarray(result, dtype=float)


def _loglog(x: np.ndarray, table: dict[float, float]) -> np.ndarray:
    """Piecewise power-law interpolation of ``table`` (node -> value) at ``x``."""
    nodes = np.array(sorted(table))
    vals = np.log([table[n] for n in nodes])
    return np.exp(np.interp(np.log(x), np.log(nodes), vals))


# ---------------------------------------------------------------------------------------------------------------
# technology scaling

#: Stillmaker & Baas (2017) energy-per-operation polynomials, factor(V) = a*V^2 + b*V + c, per node, as tabulated in
#: Accelergy's hwcomponents (``hwcomponents/scaling/techscaling.py``, ENERGY_SCALING), with the supply each node is
#: evaluated at (the last entry: the nominal PTM supply of that node). At nominal supply the 45 nm factor is 1.018,
#: i.e. the table is normalised to 45 nm / 1.0 V.
STILLMAKER_ENERGY = {
    130: (7.171, -6.709, 2.904, 1.3),
    90: (4.762, -4.781, 2.092, 1.2),
    65: (3.755, -4.398, 1.975, 1.1),
    45: (1.103, -0.362, 0.2767, 1.0),
    32: (0.9559, -0.7823, 0.471, 0.9),
    20: (0.373, -0.1582, 0.04104, 0.9),
    16: (0.2958, -0.1241, 0.03024, 0.85),
    14: (0.2363, -0.09675, 0.02239, 0.8),
    10: (0.2068, -0.09311, 0.02375, 0.75),
    7: (0.1776, -0.09097, 0.02447, 0.7),
}
#: Energy factor of each node at its nominal supply (a V^2 + b V + c).
_ENERGY_FACTOR = {n: a * v * v + b * v + c for n, (a, b, c, v) in STILLMAKER_ENERGY.items()}

#: Stillmaker & Baas (2017) logic area relative to 45 nm (the 45 nm row of hwcomponents' AREA_SCALING).
STILLMAKER_AREA_REL_45 = {130: 6.4, 90: 2.8, 65: 1.5, 45: 1.0, 32: 0.46, 20: 0.21, 16: 0.19, 14: 0.17, 10: 0.1,
                          7: 0.059}

#: Published high-density 6T SRAM bit-cell areas, um^2 (process papers).
SRAM_CELL_UM2 = {
    90: 1.0,      # Intel 90 nm, Thompson et al., IEDM 2002
    65: 0.57,     # Intel 65 nm, Bai et al., IEDM 2004
    45: 0.346,    # Intel 45 nm, Mistry et al., IEDM 2007
    32: 0.171,    # Intel 32 nm, Natarajan et al., IEDM 2008
    22: 0.092,    # Intel 22 nm, Auth et al., VLSI 2012
    16: 0.07,     # TSMC 16 nm FinFET, Wu et al., IEDM 2013
    14: 0.0588,   # Intel 14 nm, Natarajan et al., IEDM 2014
    10: 0.0312,   # Intel 10 nm, Auth et al., IEDM 2017
    7: 0.027,     # TSMC 7 nm, Wu et al., IEDM 2016
    5: 0.021,     # TSMC 5 nm, Yeap et al., IEDM 2019
}

_QUANTITIES = ("energy", "area", "sram_area")
_ENERGY_NODES = (min(_ENERGY_FACTOR), max(_ENERGY_FACTOR))
_CELL_NODES = (min(SRAM_CELL_UM2), max(SRAM_CELL_UM2))


def _energy_at(node: np.ndarray) -> np.ndarray:
    return _loglog(node, _ENERGY_FACTOR)


def technology_scale(value, from_nm, to_nm, quantity: str = "energy") -> float | np.ndarray:
    """``value`` (an energy or an area at ``from_nm``) moved to ``to_nm``.

    Sources, by ``quantity``:

    - ``"energy"``: Stillmaker & Baas, "Scaling equations for the accurate prediction of CMOS device performance
      from 180 nm to 7 nm", Integration 58 (2017) 74-81: energy-per-operation polynomials in Vdd per node,
      coefficients as tabulated in Accelergy's hwcomponents (:data:`STILLMAKER_ENERGY`), each node at its nominal
      PTM supply (1.3 V at 130 nm ... 1.0 V at 45 nm ... 0.7 V at 7 nm). Factor relative to 45 nm:
      130: 6.19, 90: 3.16, 65: 1.65, 45: 1, 32: 0.53, 20: 0.20, 16: 0.14, 14: 0.095, 10: 0.069, 7: 0.047.
      Cross-check, CACTI 7 SRAM read energy (8 KB, 64-bit, itrs-hp) relative to 45 nm: 90: 3.01, 65: 1.67,
      32: 0.55, 22: 0.29 (this rule at 22 nm: 0.24).
    - ``"area"`` (logic): Stillmaker & Baas (2017) area factors, the 45 nm row of hwcomponents' table
      (:data:`STILLMAKER_AREA_REL_45`): 130: 6.4, 90: 2.8, 65: 1.5, 32: 0.46, 20: 0.21, 16: 0.19, 14: 0.17,
      10: 0.1, 7: 0.059. (Classic (node ratio)^2 would give 2.09 for 65 nm and 0.024 for 7 nm.)
    - ``"sram_area"``: ratio of published SRAM bit-cell areas (:data:`SRAM_CELL_UM2`, 5..90 nm).

    Between tabulated nodes the factor is interpolated as a power law in the node; outside the table's range
    (7..130 nm; 5..90 nm for ``sram_area``) it raises rather than extrapolates. The coefficients were taken from
    hwcomponents; they have not been re-checked here against the paper's own table.
    """
    if quantity not in _QUANTITIES:
        raise ScalingError(f"quantity: expected one of {', '.join(_QUANTITIES)}, got {quantity!r}")
    v = np.asarray(value, dtype=float)
    if quantity == "sram_area":
        lo, hi, table, name = *_CELL_NODES, SRAM_CELL_UM2, "the SRAM bit-cell table"
    elif quantity == "area":
        lo, hi, table, name = *_ENERGY_NODES, STILLMAKER_AREA_REL_45, "the Stillmaker & Baas table"
    else:
        lo, hi, table, name = *_ENERGY_NODES, _ENERGY_FACTOR, "the Stillmaker & Baas table"
    f, t = _node(from_nm, lo, hi, name), _node(to_nm, lo, hi, name)
    return _out(v * _loglog(t, table) / _loglog(f, table), value, from_nm, to_nm)


def _from_45(node, quantity: str = "energy") -> np.ndarray:
    return np.asarray(technology_scale(np.ones(np.shape(node)), 45.0, node, quantity))


# ---------------------------------------------------------------------------------------------------------------
# arithmetic: Horowitz, ISSCC 2014, 45 nm

#: Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014: energy per operation, pJ, 45 nm.
HOROWITZ_ENERGY_PJ = {
    "int_add": {8: 0.03, 32: 0.1},
    "int_mult": {8: 0.2, 32: 3.1},
    "fp_add": {16: 0.4, 32: 0.9},
    "fp_mult": {16: 1.1, 32: 3.7},
}
#: Horowitz, ISSCC 2014, area table, um^2, 45 nm (integer entries as quoted in the task brief; the floating-point
#: entries from the same table as commonly reproduced, not re-checked here against the paper).
HOROWITZ_AREA_UM2 = {
    "int_add": {8: 36.0, 32: 137.0},
    "int_mult": {8: 282.0, 32: 3495.0},
    "fp_add": {16: 1360.0, 32: 4184.0},
    "fp_mult": {16: 1640.0, 32: 7700.0},
}


def _exponent(table: dict[int, float], square: bool) -> float:
    (b0, e0), (b1, e1) = sorted(table.items())
    x0, x1 = (b0 * b0, b1 * b1) if square else (b0, b1)
    return float(np.log(e1 / e0) / np.log(x1 / x0))


#: Power-law exponents through Horowitz's two points: multiplier ~ (w*a)^p, adder ~ n^q.
MULT_ENERGY_EXP = _exponent(HOROWITZ_ENERGY_PJ["int_mult"], square=True)   # 0.989
ADD_ENERGY_EXP = _exponent(HOROWITZ_ENERGY_PJ["int_add"], square=False)    # 0.868
MULT_AREA_EXP = _exponent(HOROWITZ_AREA_UM2["int_mult"], square=True)      # 0.908
ADD_AREA_EXP = _exponent(HOROWITZ_AREA_UM2["int_add"], square=False)       # 0.964

#: BitFusion (Sharma et al., ISCA 2018) repository, ``results/systolic_array_synth.csv``: one PE (N = M = 1) of the
#: precision-flexible systolic array at 500 MHz, max precision P, min precision P (fixed) or 2 (fused 2-bit bricks):
#: (area um^2, dynamic power nW) fixed, then fused.
BITFUSION_PE_SYNTH = {
    2: ((124.8912, 28742.0), (124.8912, 28742.0)),
    4: ((282.239998, 60101.7), (431.474398, 78470.1)),
    8: ((687.6072, 148845.0), (1733.129989, 279960.0)),
    16: ((2203.236034, 473688.0), (7492.413585, 1166200.0)),
}
#: Fused / fixed PE, per max precision: energy per full-width MAC (1.00, 1.31, 1.88, 2.46) and area (1.00, 1.53,
#: 2.52, 3.40). (Larger arrays in the same file give 2.2-2.3x energy and ~3.4x area at P = 8.)
BITFUSION_ENERGY_OVERHEAD = {p: fu[1] / fx[1] for p, (fx, fu) in BITFUSION_PE_SYNTH.items()}
BITFUSION_AREA_OVERHEAD = {p: fu[0] / fx[0] for p, (fx, fu) in BITFUSION_PE_SYNTH.items()}

_KINDS = ("int", "fp", "bitfusion", "bitserial")


def _int_mult_pj(w: np.ndarray, a: np.ndarray) -> np.ndarray:
    return HOROWITZ_ENERGY_PJ["int_mult"][8] * (w * a / 64.0) ** MULT_ENERGY_EXP


def _int_add_pj(n: np.ndarray) -> np.ndarray:
    return HOROWITZ_ENERGY_PJ["int_add"][8] * (n / 8.0) ** ADD_ENERGY_EXP


def _int_mult_um2(w: np.ndarray, a: np.ndarray) -> np.ndarray:
    return HOROWITZ_AREA_UM2["int_mult"][8] * (w * a / 64.0) ** MULT_AREA_EXP


def _int_add_um2(n: np.ndarray) -> np.ndarray:
    return HOROWITZ_AREA_UM2["int_add"][8] * (n / 8.0) ** ADD_AREA_EXP


def _fp_pick(table: dict[int, float], bits: np.ndarray) -> np.ndarray:
    return np.where(bits == 16, table[16], table[32])


def _mac_args(w_bits, a_bits, kind: str, acc_bits, max_bits):
    if kind not in _KINDS:
        raise ScalingError(f"kind: expected one of {', '.join(_KINDS)}, got {kind!r}")
    w, a = _bits("w_bits", w_bits), _bits("a_bits", a_bits)
    p = None
    if kind in ("bitfusion", "bitserial"):
        default = 8 if kind == "bitfusion" else 16
        p = _bits("max_bits", default if max_bits is None else max_bits)
        if kind == "bitfusion" and np.any(~np.isin(p, list(BITFUSION_PE_SYNTH))):
            raise ScalingError(f"max_bits: expected one of {sorted(BITFUSION_PE_SYNTH)} for kind='bitfusion' "
                               f"(the synthesised BitFusion PEs), got {p.flat[0]:g}")
        if np.any(w > p) or np.any(a > p):
            raise ScalingError(f"w_bits, a_bits: expected at most max_bits = {np.max(p):g} for kind={kind!r}, "
                               f"got {max(np.max(w), np.max(a)):g}")
    if kind == "fp":
        if np.any(~np.isin(w, (16, 32))) or np.any(w != a):
            raise ScalingError("w_bits, a_bits: expected equal widths of 16 or 32 for kind='fp' (Horowitz's "
                               f"fp16/fp32 anchors), got {np.max(w):g} and {np.max(a):g}")
    if acc_bits is None:
        acc = {"int": w + a, "fp": w}.get(kind, 2 * p if p is not None else None)
    else:
        acc = _bits("acc_bits", acc_bits)
        if kind == "fp" and np.any(~np.isin(acc, (16, 32))):
            raise ScalingError(f"acc_bits: expected 16 or 32 for kind='fp', got {acc.flat[0]:g}")
    return w, a, acc, p


def _pad_pow2(bits: np.ndarray) -> np.ndarray:
    return np.maximum(2.0, 2.0 ** np.ceil(np.log2(bits)))


def mac_energy_pj(w_bits, a_bits, technology_nm, kind: str = "int", acc_bits=None, max_bits=None
                  ) -> float | np.ndarray:
    """Energy of one multiply-accumulate, pJ: multiplier plus accumulator adder, at ``technology_nm``.

    Anchors, Horowitz, ISSCC 2014, 45 nm: int8 mult 0.2 pJ, int32 mult 3.1 pJ, int8 add 0.03 pJ, int32 add 0.1 pJ;
    fp16 mult 1.1, add 0.4; fp32 mult 3.7, add 0.9. Rules through those points (both reproduced exactly):

    - ``kind="int"``: mult(w, a) = 0.2 * (w*a/64)^0.989, add(n) = 0.03 * (n/8)^0.868, ``acc_bits`` default
      ``w_bits + a_bits`` (the product width; pass the target's ``psum_bits``). 16x16 + 16-bit add: 0.84 pJ.
    - ``kind="fp"``: Horowitz's fp16/fp32 entries (operands 16 or 32 bits, equal); ``acc_bits`` 16 or 32 (fp16
      with fp32 accumulation: 1.1 + 0.9 = 2.0 pJ), default the operand width.
    - ``kind="bitfusion"``: a BitFusion-style fused unit (Sharma et al., ISCA 2018) of ``max_bits`` P (2, 4, 8 or
      16; default 8) built from 2-bit bricks. Operands pad to a power of two >= 2 (w', a'); the unit does
      (P/w')(P/a') MACs per cycle, so a MAC costs int(P, P, acc) * overhead(P) * w'a'/P^2, overhead = fused/fixed
      PE dynamic energy from the BitFusion repository's synthesis results: 1.31 (P=4), 1.88 (P=8), 2.46 (P=16).
      At P = 8: 8x8 costs 1.88x a fixed int8 MAC, 4x4 0.47x, 2x2 0.12x. ``acc_bits`` default 2P.
    - ``kind="bitserial"``: ASSUMPTION, no sourced overhead: activations serial (Stripes-style), a_bits cycles of a
      w_bits x 1 partial product (the multiplier rule at w x 1) plus an acc_bits add; control, shifting and
      operand registers not counted. ``max_bits`` default 16, ``acc_bits`` default 2 * max_bits.

    Cross-check, BitFusion's fixed-precision PEs (same file, 45 nm per the paper, dynamic energy per cycle incl.
    registers): 2b 0.057, 4b 0.120, 8b 0.298, 16b 0.947 pJ; this rule with a 2w-bit accumulator: 0.029, 0.081,
    0.255, 0.89 pJ (registers are not in Horowitz's figures).
    """
    w, a, acc, p = _mac_args(w_bits, a_bits, kind, acc_bits, max_bits)
    node = _array("technology_nm", technology_nm, "a positive technology node in nm")
    if kind == "int":
        e = _int_mult_pj(w, a) + _int_add_pj(acc)
    elif kind == "fp":
        e = _fp_pick(HOROWITZ_ENERGY_PJ["fp_mult"], w) + _fp_pick(HOROWITZ_ENERGY_PJ["fp_add"], acc)
    elif kind == "bitfusion":
        ovh = np.vectorize(BITFUSION_ENERGY_OVERHEAD.__getitem__, otypes=[float])(p.astype(int))
        e = (_int_mult_pj(p, p) + _int_add_pj(acc)) * ovh * _pad_pow2(w) * _pad_pow2(a) / (p * p)
    else:
        e = a * (_int_mult_pj(w, np.ones_like(w)) + _int_add_pj(acc))
    return _out(e * _from_45(node), w_bits, a_bits, technology_nm, acc_bits)


def mac_area_mm2(w_bits, a_bits, technology_nm, kind: str = "int", acc_bits=None, max_bits=None
                 ) -> float | np.ndarray:
    """Area of one MAC unit (multiplier plus accumulator adder, no registers), mm^2, at ``technology_nm``.

    Anchors, Horowitz, ISSCC 2014 area table, 45 nm: 8-bit add 36 um^2, 32-bit add 137, 8-bit mult 282, 32-bit
    mult 3495 (fp16 add 1360, fp32 add 4184, fp16 mult 1640, fp32 mult 7700). Rules through those points:
    mult(w, a) = 282 * (w*a/64)^0.908 um^2, add(n) = 36 * (n/8)^0.964 um^2 (predicts 70 um^2 for Horowitz's
    16-bit add, 67 quoted). Moved between nodes with :func:`technology_scale` ``"area"``.

    ``kind="bitfusion"``: the fused unit of ``max_bits`` P, whatever the operands: int(P, P, 2P) * area overhead
    from the BitFusion synthesis results (1.53 at P=4, 2.52 at P=8, 3.40 at P=16). ``kind="bitserial"``:
    ASSUMPTION, a max_bits x 1 partial-product row plus an acc_bits adder. Defaults as :func:`mac_energy_pj`.
    Cross-check: BitFusion's fixed int8 PE with registers is 688 um^2; this rule's int8 MAC (16-bit add) 352 um^2.
    """
    w, a, acc, p = _mac_args(w_bits, a_bits, kind, acc_bits, max_bits)
    node = _array("technology_nm", technology_nm, "a positive technology node in nm")
    if kind == "int":
        um2 = _int_mult_um2(w, a) + _int_add_um2(acc)
    elif kind == "fp":
        um2 = _fp_pick(HOROWITZ_AREA_UM2["fp_mult"], w) + _fp_pick(HOROWITZ_AREA_UM2["fp_add"], acc)
    elif kind == "bitfusion":
        ovh = np.vectorize(BITFUSION_AREA_OVERHEAD.__getitem__, otypes=[float])(p.astype(int))
        um2 = (_int_mult_um2(p, p) + _int_add_um2(acc)) * ovh * np.ones_like(w * a)
    else:
        um2 = (_int_mult_um2(p, np.ones_like(p)) + _int_add_um2(acc)) * np.ones_like(w * a)
    return _out(um2 * 1e-6 * _from_45(node, "area"), w_bits, a_bits, technology_nm, acc_bits)


# ---------------------------------------------------------------------------------------------------------------
# SRAM and register files

#: Horowitz, ISSCC 2014, 45 nm: energy of one 64-bit SRAM (cache) access, pJ, by capacity in bytes.
HOROWITZ_SRAM_PJ_64B = {8192: 10.0, 32768: 20.0, 1048576: 100.0}


def _fit_power_law(table: dict[int, float], ref: float) -> tuple[float, float]:
    x = np.log(np.array(list(table)) / ref)
    y = np.log(np.array(list(table.values())))
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.exp(intercept)), float(slope)


#: Least-squares power law through Horowitz's three points: E64(C) = 10.16 pJ * (C / 8 KB)^0.4726
#: (8 KB: 10.16, +1.6%; 32 KB: 19.56, -2.2%; 1 MB: 100.6, +0.6%). CACTI 7 at 45 nm, 64-bit: exponent 0.53 over
#: 8 KB..1 MB, 0.45 over 256 B..8 KB.
SRAM_E0_PJ, SRAM_CAPACITY_EXP = _fit_power_law(HOROWITZ_SRAM_PJ_64B, 8192.0)
#: Access energy against word width, E(w) ~ w^0.41: least squares over CACTI 7 at 45 nm, 8 KB..1 MB, 16..256-bit
#: words (per-capacity fits 0.19..0.64). Per bit: (w/64)^(0.41 - 1).
SRAM_WORD_EXP = 0.41
#: Write / read energy: 1.3, the middle of ZigZag's Eyeriss-like hardware file (``inputs/hardware/eyeriss_like.yaml``
#: pairs Horowitz's read costs with w_cost/r_cost = 1.5 (8 KB), 1.25 (64 KB), 1.3 (1 MB), 1.5 and 1.33 (RFs)).
#: CACTI 7 (45 nm, 64-bit) does not give a constant: 1.2..2.0 from 256 B to 16 KB, 0.65..0.88 from 32 KB to 1 MB,
#: and the ratio grows with word width (8 KB: 0.65 at 16 bits, 2.3 at 256 bits). Uncertain to about +-50%.
SRAM_WRITE_READ_RATIO = 1.3


def sram_read_energy_pj_per_bit(capacity_bytes, technology_nm, word_bits=64) -> float | np.ndarray:
    """SRAM read energy per bit, pJ, for one array of ``capacity_bytes`` read ``word_bits`` at a time.

    Source: Horowitz, ISSCC 2014, 45 nm, 64-bit access: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ. Fit:
    E64 = 10.16 pJ * (C / 8 KB)^0.4726 per 64-bit access (within 2.2% of all three). Word width: per-bit energy
    * (word_bits / 64)^(0.41 - 1), the exponent fitted to CACTI 7 at 45 nm (see :data:`SRAM_WORD_EXP`). Other nodes:
    :func:`technology_scale` (Stillmaker & Baas). Below 8 KB this extrapolates the power law; for small register
    files and scratchpads use :func:`register_file_energy_pj_per_bit`. One monolithic array: a banked buffer
    costs the energy of one bank plus wiring, which this does not model.

    Cross-checks, pJ/bit at 45 nm, 64-bit: this rule 8 KB 0.159, 32 KB 0.306, 128 KB 0.59, 1 MB 1.57; CACTI 7
    0.095, 0.266, 0.586, 1.206. ZigZag's eyeriss_like.yaml reuses Horowitz's per-access figures on wider ports
    (8 KB 10 pJ / 128 b = 0.078, 64 KB 20 pJ / 128 b = 0.156, 1 MB 100 pJ / 384 b = 0.26 pJ/bit).
    """
    c, w = _capacity(capacity_bytes), _bits("word_bits", word_bits)
    node = _array("technology_nm", technology_nm, "a positive technology node in nm")
    e = SRAM_E0_PJ * (c / 8192.0) ** SRAM_CAPACITY_EXP / 64.0 * (w / 64.0) ** (SRAM_WORD_EXP - 1.0)
    return _out(e * _from_45(node), capacity_bytes, technology_nm, word_bits)


def sram_write_energy_pj_per_bit(capacity_bytes, technology_nm, word_bits=64,
                                 write_ratio: float = SRAM_WRITE_READ_RATIO) -> float | np.ndarray:
    """SRAM write energy per bit, pJ: ``write_ratio`` (default 1.3) times :func:`sram_read_energy_pj_per_bit`.

    Source of 1.3: ZigZag's Eyeriss-like hardware file, whose SRAM levels carry Horowitz's read costs with
    w_cost = 1.25..1.5 x r_cost. CACTI 7 disagrees above 32 KB (writes 0.65..0.88 x reads); see
    :data:`SRAM_WRITE_READ_RATIO`.
    """
    ratio = _array("write_ratio", write_ratio, "a positive write/read energy ratio")
    return _out(np.asarray(sram_read_energy_pj_per_bit(capacity_bytes, technology_nm, word_bits)) * ratio,
                capacity_bytes, technology_nm, word_bits, write_ratio)


#: Register-file anchor: Chen et al., ISCA 2016 (Eyeriss), normalised energy at 65 nm: a 16-bit access to the
#: 0.5 KB PE register file costs 1x a 16-bit MAC (array/inter-PE 2x, global buffer 6x, DRAM 200x).
RF_ANCHOR_BYTES = 512.0
RF_ANCHOR_WORD_BITS = 16
#: The register-file rule meets the SRAM rule here (Horowitz's smallest SRAM point), and is the SRAM rule above it.
RF_CROSSOVER_BYTES = 8192.0
_RF_ANCHOR_45 = float(mac_energy_pj(16, 16, 45, acc_bits=16)) / RF_ANCHOR_WORD_BITS
_RF_TOP_45 = float(sram_read_energy_pj_per_bit(RF_CROSSOVER_BYTES, 45, RF_ANCHOR_WORD_BITS))
#: Capacity exponent of the register-file rule, set so that it joins the Eyeriss anchor (0.5 KB) to the SRAM rule
#: at 8 KB: 0.69 (the SRAM rule's own 0.47 would leave a 2.7x step at 8 KB). A bridge, not a measured slope: CACTI 7
#: (65 nm, 16-bit) gives 0.46 over 64 B..1 KB.
RF_CAPACITY_EXP = float(np.log(_RF_TOP_45 / _RF_ANCHOR_45) / np.log(RF_CROSSOVER_BYTES / RF_ANCHOR_BYTES))


def register_file_energy_pj_per_bit(capacity_bytes, technology_nm, word_bits=16) -> float | np.ndarray:
    """Register-file / scratchpad read energy per bit, pJ (tens of bytes to a few KB).

    Source: Chen et al., ISCA 2016 (Eyeriss): a 16-bit access to a 0.5 KB RF costs 1x a 16-bit MAC, the MAC taken
    from :func:`mac_energy_pj` (16 x 16, 16-bit accumulator: 0.84 pJ at 45 nm, 1.39 pJ at 65 nm, so 0.087 pJ/bit
    at 65 nm). Against capacity: (C / 512 B)^0.69, the exponent chosen so the rule meets
    :func:`sram_read_energy_pj_per_bit` at 8 KB for every word width (continuous by construction); at and above
    8 KB it returns the SRAM rule. Word width as the SRAM rule, (word_bits / 16)^(0.41 - 1).

    Cross-check, CACTI 7 at 65 nm, 16-bit word, pJ/bit: 64 B 0.033, 256 B 0.055, 512 B 0.073, 1 KB 0.116; this
    rule 0.021, 0.054, 0.087, 0.14. ZigZag's eyeriss_like.yaml: 64 B RF 1.0 pJ per 8-bit access (0.125 pJ/bit).
    """
    c, w = _capacity(capacity_bytes), _bits("word_bits", word_bits)
    node = _array("technology_nm", technology_nm, "a positive technology node in nm")
    small = _RF_ANCHOR_45 * (c / RF_ANCHOR_BYTES) ** RF_CAPACITY_EXP * (w / RF_ANCHOR_WORD_BITS) ** (SRAM_WORD_EXP - 1)
    large = np.asarray(sram_read_energy_pj_per_bit(np.maximum(c, RF_CROSSOVER_BYTES), 45, w))
    e = np.where(c < RF_CROSSOVER_BYTES, small, large)
    return _out(e * _from_45(node), capacity_bytes, technology_nm, word_bits)


#: SRAM macro area = cell area * (bits + 1720) / 0.694: array efficiency 0.694 and a periphery worth 1720 cells,
#: least squares over CACTI 7 at 45 nm (256 B..1 MB, 64-bit, 146 F^2 cells); within 9% of CACTI at 45 and 65 nm.
SRAM_ARRAY_EFFICIENCY = 0.694
SRAM_PERIPHERY_BITS = 1720.0


def sram_area_mm2(capacity_bytes, technology_nm) -> float | np.ndarray:
    """Area of an SRAM macro, mm^2: published bit-cell area * (bits + 1720) / 0.694.

    Bit cells (:data:`SRAM_CELL_UM2`, high-density 6T, um^2): 90 nm 1.0 (Intel, IEDM 2002), 65 nm 0.57 (Intel,
    IEDM 2004), 45 nm 0.346 (Intel, IEDM 2007), 32 nm 0.171 (Intel, IEDM 2008), 22 nm 0.092 (Intel, VLSI 2012),
    16 nm 0.07 (TSMC, IEDM 2013), 14 nm 0.0588 (Intel, IEDM 2014), 10 nm 0.0312 (Intel, IEDM 2017), 7 nm 0.027
    (TSMC, IEDM 2016), 5 nm 0.021 (TSMC, IEDM 2019); power-law interpolation between them, 5..90 nm only.
    Efficiency and periphery: fitted to CACTI 7 (:data:`SRAM_ARRAY_EFFICIENCY`). CACTI's own 45 nm cell is
    146 F^2 = 0.296 um^2, so this rule is 17% above CACTI at 45 nm (1 MB: 4.2 mm^2, CACTI 3.6).
    """
    c = _capacity(capacity_bytes)
    node = _node(technology_nm, *_CELL_NODES, "the SRAM bit-cell table")
    um2 = _loglog(node, SRAM_CELL_UM2) * (8.0 * c + SRAM_PERIPHERY_BITS) / SRAM_ARRAY_EFFICIENCY
    return _out(um2 * 1e-6, capacity_bytes, technology_nm)


#: Aladdin (Shao et al., ISCA 2014) register: 5.98 um^2 and 0.009 pJ per bit at 40 nm (as shipped in Accelergy's
#: hwcomponents-library, ``aladdin.py``).
ALADDIN_REGISTER_UM2_PER_BIT_40NM = 5.98


def register_file_area_mm2(capacity_bytes, technology_nm) -> float | np.ndarray:
    """Area of a flip-flop register file, mm^2: 5.98 um^2 per bit at 40 nm (Aladdin's register, Shao et al.,
    ISCA 2014), moved with :func:`technology_scale` ``"area"``. Read multiplexers and decoders are not counted.

    About 11x :func:`sram_area_mm2` at 0.5 KB (45 nm: 0.032 vs 0.0029 mm^2); an SRAM-based scratchpad (Eyeriss's
    filter spad) should use :func:`sram_area_mm2`. No crossover is imposed: which one a design uses is a choice.
    """
    c = _capacity(capacity_bytes)
    node = _node(technology_nm, *_ENERGY_NODES, "the Stillmaker & Baas table")
    scale = np.asarray(technology_scale(np.ones(node.shape), 40.0, node, "area"))
    return _out(8.0 * c * ALADDIN_REGISTER_UM2_PER_BIT_40NM * scale * 1e-6, capacity_bytes, technology_nm)


# ---------------------------------------------------------------------------------------------------------------
# DRAM


@dataclass(frozen=True)
class DramKind:
    """An off-chip memory's access energy, pJ/bit (array, periphery and interface), the range quoted, and where
    it comes from."""

    pj_per_bit: float
    low: float
    high: float
    source: str


DRAM_KINDS = {
    "lpddr4": DramKind(8.0, 8.0, 8.0, "Accelergy CactiDRAM table (hwcomponents-cacti, type2energy: LPDDR4 8 pJ/bit, "
                       "'public data'; its primary source is not named there)"),
    "ddr4": DramKind(20.3, 20.3, 40.6, "Horowitz, ISSCC 2014: DRAM 1.3-2.6 nJ per 64-bit access (20.3-40.6 pJ/bit), "
                     "low end; the DRAM generation is not stated there and no DDR4-specific figure was found"),
    "ddr3": DramKind(70.0, 70.0, 70.0, "Accelergy CactiDRAM table: DDR3 70 pJ/bit, citing Chatterjee et al., "
                     "MICRO 2017"),
    "lpddr": DramKind(40.0, 40.0, 40.0, "Accelergy CactiDRAM table: LPDDR 40 pJ/bit, citing Malladi et al., ISCA 2012"),
    "gddr5": DramKind(14.0, 14.0, 14.0, "Accelergy CactiDRAM table: GDDR5 14 pJ/bit"),
    "gddr6": DramKind(7.5, 7.5, 7.5, "Micron, Ultra-Bandwidth Solutions memory comparison: GDDR6 average device "
                      "power 7.5 pJ/bit"),
    "hbm2": DramKind(3.97, 3.7, 3.97, "O'Connor et al., 'Fine-Grained DRAM', MICRO 2017: HBM2 access ~3.97 pJ/bit "
                     "(as quoted by third-party models; Accelergy's table uses 3.9; not read from the paper here)"),
    "hbm2e": DramKind(6.0, 6.0, 6.0, "Micron, Ultra-Bandwidth Solutions memory comparison: HBM2E average device "
                      "power 6.0 pJ/bit"),
}


def dram_energy_pj_per_bit(kind: str) -> float:
    """Off-chip DRAM access energy, pJ/bit, for ``kind`` (a key of :data:`DRAM_KINDS`: lpddr4, ddr4, ddr3,
    lpddr, gddr5, gddr6, hbm2, hbm2e). Each entry carries its source and range; they mix accounting conventions
    (Micron's device power includes I/O and activation at typical use; O'Connor's HBM2 figure is the access
    energy), so treat them as +-50%. Not scaled with the logic node: DRAM has its own process.
    """
    key = str(kind).lower()
    if key not in DRAM_KINDS:
        raise ScalingError(f"kind: expected one of {', '.join(DRAM_KINDS)}, got {kind!r}")
    return DRAM_KINDS[key].pj_per_bit


# ---------------------------------------------------------------------------------------------------------------
# leakage

#: ESTIMATE. SRAM-array standby leakage per area, mW/mm^2, from CACTI 7 runs (128 KB, 64-bit, 300 K) with cells and
#: periphery of one ITRS device flavour. Not logic leakage, not measured silicon, and strongly temperature-dependent.
LEAKAGE_MW_PER_MM2 = {
    "lstp": {90: 0.021, 65: 0.066, 45: 0.071, 32: 0.174, 22: 0.385},
    "lop": {90: 26.5, 65: 6.76, 45: 19.5, 32: 58.6, 22: 403.9},
    "hp": {90: 34.0, 65: 189.0, 45: 352.5, 32: 344.5, 22: 335.0},
}


def static_power_w(area_mm2, technology_nm, device: str = "lstp") -> float | np.ndarray:
    """ESTIMATE of static (leakage) power, W, of ``area_mm2`` of silicon at ``technology_nm``.

    Leakage density from CACTI 7 SRAM arrays (:data:`LEAKAGE_MW_PER_MM2`, 300 K) for the ITRS device flavour
    ``device``: ``"lstp"`` (low standby power, the class of the LP processes edge accelerators use; default),
    ``"lop"`` (low operating power) or ``"hp"`` (high performance); 22..90 nm only (CACTI 7's range). The flavours
    differ by three orders of magnitude, and leakage rises several-fold at operating temperature, so this is an
    order-of-magnitude figure; applying an SRAM density to logic is an assumption. Nothing here is a measured chip.
    """
    if device not in LEAKAGE_MW_PER_MM2:
        raise ScalingError(f"device: expected one of {', '.join(LEAKAGE_MW_PER_MM2)}, got {device!r}")
    area = _array("area_mm2", area_mm2, "a positive area in mm^2")
    table = LEAKAGE_MW_PER_MM2[device]
    node = _node(technology_nm, min(table), max(table), "the CACTI 7 leakage table")
    return _out(area * _loglog(node, table) * 1e-3, area_mm2, technology_nm)


# ---------------------------------------------------------------------------------------------------------------
# citations

SOURCES: dict[str, str] = {
    "sram_read_energy": "Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014: 45 nm, "
                        "64-bit access 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ; fit E64 = 10.16 pJ (C/8 KB)^0.4726; "
                        "word width (w/64)^-0.59 fitted to CACTI 7 (45 nm); node: Stillmaker & Baas 2017",
    "sram_write_energy": "1.3 x sram_read_energy: ZigZag eyeriss_like.yaml w_cost/r_cost 1.25-1.5 on Horowitz's "
                         "read costs (CACTI 7: 0.65-2.0 depending on capacity and width)",
    "register_file_energy": "Chen et al., ISCA 2016 (Eyeriss): 16-bit access to a 0.5 KB RF = 1x a 16-bit MAC; "
                            "(C/512 B)^0.69 to meet sram_read_energy at 8 KB (continuous by construction)",
    "sram_area": "published 6T bit-cell areas (Intel IEDM 2002-2017, VLSI 2012; TSMC IEDM 2013/2016/2019) x "
                 "(bits + 1720)/0.694, efficiency and periphery fitted to CACTI 7 (45 nm, 256 B-1 MB)",
    "register_file_area": "Aladdin register 5.98 um^2/bit at 40 nm (Shao et al., ISCA 2014, via Accelergy "
                          "hwcomponents-library); node: Stillmaker & Baas 2017 area",
    "mac_energy": "Horowitz, ISSCC 2014, 45 nm: int8/int32 mult 0.2/3.1 pJ, add 0.03/0.1 pJ; fp16/fp32 mult 1.1/3.7, "
                  "add 0.4/0.9; mult ~ (w a)^0.989, add ~ n^0.868; precision-scalable: BitFusion (Sharma et al., "
                  "ISCA 2018) repository synthesis, fused/fixed PE energy 1.31/1.88/2.46 at 4/8/16 bits; "
                  "bit-serial: assumption (no sourced overhead)",
    "mac_area": "Horowitz, ISSCC 2014 area table, 45 nm: add 36/137 um^2 (8/32 b), mult 282/3495 um^2; BitFusion "
                "fused/fixed PE area 1.53/2.52/3.40 at 4/8/16 bits; node: Stillmaker & Baas 2017 area",
    "technology_scale": "Stillmaker & Baas, 'Scaling equations for the accurate prediction of CMOS device "
                        "performance from 180 nm to 7 nm', Integration 58 (2017) 74-81, coefficients as tabulated in "
                        "Accelergy hwcomponents techscaling.py, nominal PTM supplies; SRAM: bit-cell ratios",
    "dram_energy": "per kind, DRAM_KINDS: Accelergy CactiDRAM table (LPDDR4 8, DDR3 70, LPDDR 40, GDDR5 14 pJ/bit), "
                   "Horowitz ISSCC 2014 (DRAM 1.3-2.6 nJ / 64 b), O'Connor et al. MICRO 2017 (HBM2 3.97), Micron "
                   "(GDDR6 7.5, HBM2E 6.0 pJ/bit)",
    "static_power": "ESTIMATE: CACTI 7 SRAM-array leakage per mm^2 (128 KB, 300 K) by ITRS device flavour, 22-90 nm",
}


def source(rule: str) -> str:
    """The citation of a rule, by its :data:`SOURCES` name, with or without a ``scaling.`` prefix."""
    key = rule.removeprefix("scaling.")
    if key not in SOURCES:
        raise ScalingError(f"rule: expected one of {', '.join(SOURCES)}, got {rule!r}")
    return SOURCES[key]
