"""Hardware parameters: a target's ``parameters:`` section turns fixed figures into search variables.

A target file may give some of its hardware as ranges or choices::

    parameters:
      array: {choices: [[8, 8], [12, 14], [16, 16]]}     # PE array, one size per dimension of the array
      glb_bytes: {choices: [32768, 110592, 262144]}
      rf_bytes: {range: [256, 1024], step: 256}
      dram_bandwidth_bytes_per_s: {range: [0.8e9, 6.4e9], log: true}
      operand_bits: {choices: [[16], [8, 16], [4, 8, 16]]}
      precision_scalable: {choices: [false, true]}
      zero_gating: {choices: [none, unstructured]}
      clock_hz: {range: [1.0e8, 4.0e8], step: 1.0e8}

The file as written is one hardware point (its base figures); :func:`instantiate` builds the target at other
values. Every figure a parameter changes follows a sourced scaling rule (:mod:`picojoule.hwmodels.scaling`),
applied as a ratio to the file's own figure, so that at its base value a target prices exactly as written:
a bigger SRAM costs more per access by the SRAM rule; a bigger array multiplies the peak, the per-PE register
files and their bandwidth; a faster clock multiplies the peaks and the on-chip bandwidths (DRAM keeps its
own). Area (:mod:`picojoule.hwmodels.area`) and static power follow the hardware.

One registry (:data:`PARAMETERS`) holds what each name sets; a name the target's dataflow cannot use (an
``array`` with the wrong number of dimensions, ``rf_bytes`` without a register-file level) is refused when the
file loads.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from picojoule.errors import PicojouleError

Data = dict[str, Any]


@dataclass(frozen=True)
class Parameter:
    """One hardware parameter: what its values are, and how a value rewrites a target's fields."""

    name: str
    kind: type  # int, float, bool, str or list (a list of ints)
    doc: str
    apply: Callable[[Data, Any, Data], None]  # (target fields to change, value, the base target's fields)
    usable: Callable[[Data], str | None]  # None, or why this target cannot use the parameter


def _roles(data: Data) -> list[str]:
    n = len(data["memory"])
    return [m.get("role") or ("dram" if i == n - 1 else "rf" if i == 0 else "noc" if i == 1 and n >= 4 else
                              "glb" if i == n - 2 else "buffer") for i, m in enumerate(data["memory"])]


def _levels(data: Data, role: str) -> list[Data]:
    return [m for m, r in zip(data["memory"], _roles(data)) if r == role]


def _array_dims(data: Data) -> list[int]:
    df = data.get("dataflow")
    if df:
        return [u["size"] for u in df["unroll"]]
    return [data["spatial"]["rows"], data["spatial"]["cols"]]


def _set_array(data: Data, sizes: list[int], base: Data) -> None:
    old = int(np.prod(_array_dims(base)))
    new = int(np.prod(sizes))
    ratio = new / old
    df = data.get("dataflow")
    if df:
        for u, s in zip(df["unroll"], sizes):
            u["size"] = int(s)
    if data["spatial"].get("rows") is not None:
        if len(sizes) == 2:
            data["spatial"]["rows"], data["spatial"]["cols"] = int(sizes[0]), int(sizes[1])
        else:
            data["spatial"]["rows"], data["spatial"]["cols"] = None, None
    for mode in data["compute"]["modes"]:
        mode["peak_macs_per_s"] *= ratio
    for m, role in zip(data["memory"][:-1], _roles(data)):
        if role == "noc" and m.get("instances", 1) < old:  # the array's network: one delivery per PE
            m["capacity_bytes"] *= ratio
            for key in ("bandwidth_bytes_per_s", "read_bandwidth_bytes_per_s", "write_bandwidth_bytes_per_s"):
                if m.get(key):
                    m[key] *= ratio
            continue
        spans = m.get("spans")
        if spans is not None:
            m["instances"] = int(new // int(np.prod([sizes[d] for d in spans])))
        elif m.get("instances", 1) >= old:  # one per PE
            m["instances"] = new
        else:
            continue
        for key in ("bandwidth_bytes_per_s", "read_bandwidth_bytes_per_s", "write_bandwidth_bytes_per_s"):
            if m.get(key):
                m[key] *= ratio


def _array(data: Data, value: Any, base: Data) -> None:
    _set_array(data, [int(v) for v in value], base)


def _pe_rows(data: Data, value: Any, base: Data) -> None:
    dims = _array_dims(data)
    _set_array(data, [int(value), dims[1]], base if dims == _array_dims(base) else data)


def _pe_cols(data: Data, value: Any, base: Data) -> None:
    dims = _array_dims(data)
    _set_array(data, [dims[0], int(value)], base if dims == _array_dims(base) else data)


def _rescale_energy(m: Data, base_m: Data, capacity: float, rule: Callable[[float, float], float], node: float):
    ratio = rule(capacity, node) / rule(base_m["capacity_bytes"], node)
    m["capacity_bytes"] = float(capacity)
    for key in ("read_energy_pj_per_bit", "write_energy_pj_per_bit"):
        if base_m.get(key):
            m[key] = base_m[key] * ratio


def _memory_setter(role: str, rule: Callable[[float, float], float]) -> Callable[[Data, Any, Data], None]:
    def apply(data: Data, value: Any, base: Data) -> None:
        for m, b in zip(_levels(data, role), _levels(base, role)):
            _rescale_energy(m, b, float(value), rule, base["technology_nm"])
    return apply


def _rf_rule(capacity: float, node: float) -> float:
    from picojoule.hwmodels import scaling

    return float(scaling.register_file_energy_pj_per_bit(capacity, node))


def _sram_rule(capacity: float, node: float) -> float:
    from picojoule.hwmodels import scaling

    return float(scaling.sram_read_energy_pj_per_bit(capacity, node))


def _dram_bandwidth(data: Data, value: Any, base: Data) -> None:
    dram = data["memory"][-1]
    ratio = float(value) / base["memory"][-1]["bandwidth_bytes_per_s"]
    dram["bandwidth_bytes_per_s"] = float(value)
    for key in ("read_bandwidth_bytes_per_s", "write_bandwidth_bytes_per_s"):
        if dram.get(key):
            dram[key] *= ratio


def _depth(data: Data) -> int:
    from picojoule.hwmodels.area import depth_of

    c = data["compute"]
    widest = max(m["bits"] for m in c["modes"])
    native = c.get("operand_bits") or [m["bits"] for m in c["modes"]]
    return depth_of(widest, min(native), bool(c.get("precision_scalable")))


def _rescale_mac_energy(data: Data, base: Data) -> None:
    """A precision-scalable MAC's energy per operation follows its fusion depth (BitFusion's synthesis ratios,
    :func:`picojoule.hwmodels.area.fusion_overhead`): packing narrower widths natively costs at full width."""
    from picojoule.hwmodels.area import fusion_overhead

    ratio = fusion_overhead(_depth(data), "energy") / fusion_overhead(_depth(base), "energy")
    for mode, b in zip(data["compute"]["modes"], base["compute"]["modes"]):
        mode["mac_energy_pj"] = b["mac_energy_pj"] * ratio


def _operand_bits(data: Data, value: Any, base: Data) -> None:
    data["compute"]["operand_bits"] = sorted(int(v) for v in value)
    _rescale_mac_energy(data, base)


def _precision_scalable(data: Data, value: Any, base: Data) -> None:
    data["compute"]["precision_scalable"] = bool(value)
    _rescale_mac_energy(data, base)


def _gating(data: Data, value: Any, base: Data) -> None:
    data["sparsity"]["gates"] = str(value)


def _skipping(data: Data, value: Any, base: Data) -> None:
    data["sparsity"]["skips"] = str(value)


def _clock(data: Data, value: Any, base: Data) -> None:
    ratio = float(value) / base["clock_hz"]
    data["clock_hz"] = float(value)
    for mode in data["compute"]["modes"]:
        mode["peak_macs_per_s"] *= ratio
    for m in data["memory"][:-1]:
        for key in ("bandwidth_bytes_per_s", "read_bandwidth_bytes_per_s", "write_bandwidth_bytes_per_s"):
            if m.get(key):
                m[key] *= ratio


def _always(data: Data) -> str | None:
    return None


def _two_d(data: Data) -> str | None:
    if len(_array_dims(data)) != 2:
        return f"the dataflow unrolls {len(_array_dims(data))} array dimensions, not rows x cols: use 'array'"
    return None


def _has(role: str) -> Callable[[Data], str | None]:
    def check(data: Data) -> str | None:
        return None if _levels(data, role) else f"no memory level has role {role}"
    return check


PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    Parameter("array", list, "PE array: one size per array dimension (the dataflow's unroll entries, or rows x cols)",
              _array, _always),
    Parameter("pe_rows", int, "rows of a 2-D PE array", _pe_rows, _two_d),
    Parameter("pe_cols", int, "columns of a 2-D PE array", _pe_cols, _two_d),
    Parameter("rf_bytes", int, "capacity of each register-file level (role rf), per instance",
              _memory_setter("rf", _rf_rule), _has("rf")),
    Parameter("glb_bytes", int, "capacity of the global buffer (role glb)", _memory_setter("glb", _sram_rule), _has("glb")),
    Parameter("dram_bandwidth_bytes_per_s", float, "off-chip bandwidth", _dram_bandwidth, _always),
    Parameter("operand_bits", list, "operand widths the datapath handles natively (others pad up)", _operand_bits,
              _always),
    Parameter("precision_scalable", bool, "MAC energy scales with w_bits x a_bits", _precision_scalable, _always),
    Parameter("zero_gating", str, "zero operands gated (none | unstructured | 2:4): saves energy", _gating, _always),
    Parameter("zero_skipping", str, "zero operands skipped (none | unstructured | 2:4): saves time", _skipping, _always),
    Parameter("clock_hz", float, "core clock (on-chip bandwidths follow it; DRAM does not)", _clock, _always),
)}


def grid(name: str, spec: Any, points: int = 4) -> list[Any]:
    """The values parameter ``name`` (its :class:`~picojoule.hwmodels.target.ParameterSpec` ``spec``) takes on a
    grid: its choices, or its range in ``step``s (else ``points`` values, geometric when ``log``)."""
    if spec.choices is not None:
        return list(spec.choices)
    lo, hi = spec.range
    if spec.step:
        n = int(np.floor((hi - lo) / spec.step + 1e-9)) + 1
        values = [lo + i * spec.step for i in range(n)]
    elif spec.log:
        values = list(np.geomspace(lo, hi, points))
    else:
        values = list(np.linspace(lo, hi, points))
    return [cast(name, v) for v in values]


def cast(name: str, value: Any) -> Any:
    """``value`` as parameter ``name`` takes it (an int parameter's range gives floats)."""
    kind = PARAMETERS[name].kind
    if kind is int:
        return int(round(float(value)))
    if kind is float:
        return float(value)
    return value


def grid_points(parameters: Mapping[str, Any], points: int = 4) -> list[dict[str, Any]]:
    """Every combination of the parameters' grid values."""
    names = list(parameters)
    return [dict(zip(names, combo))
            for combo in itertools.product(*(grid(n, parameters[n], points) for n in names))]


def point_name(base: str, values: Mapping[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{base}.{digest}"


def instantiate(target: Any, values: Mapping[str, Any]) -> Any:
    """The target ``target`` (a :class:`~picojoule.hwmodels.target.Target` with a ``parameters`` section) at
    ``values`` (parameter name -> value): a plain target, without parameters, named after the point."""
    from picojoule.hwmodels.target import target_from_dict

    base = target.document()
    params = base.pop("parameters", None) or {}
    unknown = [n for n in values if n not in params]
    if unknown:
        raise PicojouleError(f"target '{target.name}': '{unknown[0]}' is not one of its parameters "
                             f"({', '.join(params) or 'none'})")
    data = copy.deepcopy(base)
    for name in ("array", "pe_rows", "pe_cols"):  # the array first: clock and memories scale from it
        if name in values:
            PARAMETERS[name].apply(data, values[name], base)
    for name, value in values.items():
        if name not in ("array", "pe_rows", "pe_cols"):
            PARAMETERS[name].apply(data, value, base)
    data["name"] = point_name(target.name, values)
    data["description"] = f"{target.name} at " + ", ".join(f"{k}={v}" for k, v in values.items())
    where = f"target '{target.name}' at {dict(values)}"
    point = target_from_dict(data, where)
    # static (leakage) power follows the silicon: the file's figure scaled by the area rule's ratio
    from picojoule.hwmodels.area import area_mm2

    ratio = area_mm2(point) / area_mm2(target)
    if ratio != 1.0:
        data["power"]["static_w"] = base["power"]["static_w"] * ratio
        point = target_from_dict(data, where)
    return point
