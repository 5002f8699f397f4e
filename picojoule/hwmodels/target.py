"""Hardware targets: one YAML file each, validated against this schema on load.

A target is data, not code: adding one is adding a file under ``picojoule/hwmodels/targets/``
(or passing a path). Every figure carries the source it was taken from.
"""

from __future__ import annotations

import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from picojoule.errors import PicojouleError
from picojoule.hwmodels.kernel_table import KernelTable
from picojoule.hwmodels.parameters import PARAMETERS
from picojoule.yamlfile import read_yaml, validated

TARGETS_DIR = Path(__file__).parent / "targets"

#: Op kinds the cost models distinguish; every target states an efficiency for each.
OP_KINDS = ("conv", "depthwise", "linear", "matmul", "pool", "elementwise")

#: Operands a memory level may hold: weights, input activations, outputs (partial sums).
OPERANDS = ("W", "I", "O")
#: What a memory level is for. v1 files have no roles: they follow from the level's position.
ROLES = ("rf", "noc", "buffer", "glb", "dram")
#: Loop dimensions of a conv-like layer (ZigZag's names): batch, output and input channels, output columns and
#: rows, filter columns and rows, and groups (a depthwise conv's channels).
LOOP_DIMS = ("B", "K", "C", "OX", "OY", "FX", "FY", "G")
#: Dataflows: which operand stays in the PE's register file while the others stream past it; "flexible": the
#: cheapest at every level, as a mapper that searches loop orders (ZigZag's LOMA, Timeloop) would find.
DATAFLOWS = ("row-stationary", "weight-stationary", "output-stationary", "flexible")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComputeMode(_Strict):
    """One datapath mode: operand width, peak rate and the energy of one MAC at that width."""

    name: str
    bits: int = Field(ge=1, le=32, description="operand width of this mode")
    peak_macs_per_s: float = Field(gt=0, description="peak multiply-accumulates per second (ops / 2)")
    mac_energy_pj: float = Field(gt=0, description="energy of one MAC at full width, pJ")
    source: str = Field(min_length=3)


class Compute(_Strict):
    """Datapath: its modes, the operand widths it handles natively, and achievable efficiency."""

    modes: list[ComputeMode] = Field(min_length=1)
    operand_bits: list[int] | None = Field(
        default=None,
        description="operand widths handled natively (others pad up); default: the modes' widths",
    )
    precision_scalable: bool = Field(
        default=False,
        description="MAC energy scales with w_bits*a_bits inside a mode (bit-serial/precision-scalable PEs); "
        "otherwise a MAC costs its mode's full-width energy",
    )
    efficiency: dict[Literal[OP_KINDS], float] = Field(
        description="fraction of peak reached per op kind (calibrated from measurements)"
    )
    layer_overhead_s: float = Field(ge=0, description="fixed cost per layer: kernel launch, loop set-up")
    channel_exponent: float = Field(
        default=0.0, ge=-1, le=1,
        description="compute time scales by (channels / reference_channels)^channel_exponent, channels being the "
        "geometric mean of a layer's kept input and output channels: > 0 where wide layers fall out of cache "
        "(untuned CPU code), < 0 where narrow ones underfill vector lanes or PEs; 0: efficiency by op kind only",
    )
    reference_channels: int = Field(default=32, ge=1, description="channel count at which the efficiency holds as stated")
    rescale_ops: float = Field(
        default=4.0, gt=0,
        description="ops of the widest mode to rescale one output's partial sum by a group's scales in an integer "
        "GEMM (picojoule.hwmodels.scales): convert, two scale multiplies and an accumulate are 4",
    )
    rescale_source: str | None = Field(default=None, description="where rescale_ops comes from, if not the count")
    vector_fp16_factor: float = Field(
        default=1.0, ge=1,
        description="fp16 element ops the widest mode's vector pipe does per fp32 op (packed half2): the rate of the "
        "run-time ranges and rotations of picojoule.hwmodels.scales",
    )
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _check(self) -> Compute:
        bits = [m.bits for m in self.modes]
        if bits != sorted(set(bits)):
            raise ValueError("modes must be listed by increasing, distinct bits")
        if missing := [k for k in OP_KINDS if k not in self.efficiency]:
            raise ValueError(f"efficiency lacks op kinds {missing}")
        if any(not 0 < v <= 1 for v in self.efficiency.values()):
            raise ValueError("every efficiency must lie in (0, 1]")
        if self.operand_bits is not None and max(self.operand_bits) > max(bits):
            raise ValueError("operand_bits wider than the widest mode")
        energies = [m.mac_energy_pj for m in self.modes]
        if energies != sorted(energies):
            raise ValueError("modes: mac_energy_pj must not decrease as bits increase")
        return self

    @property
    def native_bits(self) -> list[int]:
        """Operand widths the datapath handles without padding, ascending."""
        return sorted(set(self.operand_bits or [m.bits for m in self.modes]))


class MemoryLevel(_Strict):
    """One level of the memory hierarchy, innermost (registers) first, off-chip DRAM last.

    Schema v2 (optional fields; a v1 file has none of them): the ``operands`` a level holds (a weight-only
    SRAM, an output register file; an operand a level does not hold bypasses it), its ``role`` and separate
    read and write bandwidths. A level with as many ``instances`` as the array has PEs is a per-PE register
    file; fewer instances are shared by the PEs (one read reaches every PE that wants the same value)."""

    name: str
    role: Literal[ROLES] | None = Field(  # type: ignore[valid-type]
        default=None, description="rf | noc | buffer | glb | dram; default by position (v1): first rf, last dram, "
        "the second of 4 or more noc, the second-last glb, any other buffer")
    operands: list[Literal[OPERANDS]] | None = Field(  # type: ignore[valid-type]
        default=None, description="operands held (W weights, I inputs, O outputs/psums); default all three")
    capacity_bytes: float | None = Field(gt=0, description="per instance; null for off-chip DRAM")
    instances: int = Field(default=1, ge=1, description="copies, e.g. one register file per PE")
    bandwidth_bytes_per_s: float = Field(gt=0, description="aggregate over all instances")
    read_bandwidth_bytes_per_s: float | None = Field(default=None, gt=0, description="read port; default: shared")
    write_bandwidth_bytes_per_s: float | None = Field(default=None, gt=0, description="write port; default: shared")
    read_energy_pj_per_bit: float = Field(gt=0)
    write_energy_pj_per_bit: float | None = Field(default=None, gt=0, description="default: = read")
    access_bits: int | None = Field(
        default=None, ge=1, description="the fewest bits one access moves (a word of the array, ZigZag's bandwidth_min): "
        "an access of fewer bits costs as many; default: any number of bits")
    spans: list[int] | None = Field(
        default=None, description="the dataflow's array dimensions (indices into dataflow.unroll) that one instance "
        "serves, as ZigZag's served_dimensions; default: none for one instance per PE, all for one instance")
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _check(self) -> MemoryLevel:
        if self.operands is not None:
            if not self.operands:
                raise ValueError("a memory level must hold at least one operand of W, I, O")
            if len(set(self.operands)) != len(self.operands):
                raise ValueError(f"operands listed twice: {self.operands}")
        return self

    @property
    def write_pj_per_bit(self) -> float:
        return self.write_energy_pj_per_bit or self.read_energy_pj_per_bit

    @cached_property
    def held(self) -> tuple[str, ...]:
        """The operands this level holds, in W, I, O order."""
        return tuple(o for o in OPERANDS if self.operands is None or o in self.operands)

    @property
    def ports_separate(self) -> bool:
        """Whether reads and writes have their own ports (each at its own bandwidth) or share one."""
        return self.read_bandwidth_bytes_per_s is not None or self.write_bandwidth_bytes_per_s is not None


class Spatial(_Strict):
    """The processing-element array that the Eyeriss-style model maps a layer onto. A v2 target whose
    ``dataflow`` unrolls an array of any number of dimensions may leave ``rows`` and ``cols`` out."""

    rows: int | None = Field(default=None, ge=1)
    cols: int | None = Field(default=None, ge=1)
    macs_per_pe_per_cycle: float = Field(gt=0, description="at the widest mode")
    psum_bits: int = Field(default=32, ge=8, le=64, description="accumulator (partial sum) width in the PEs")
    source: str = Field(min_length=3)


class Unroll(_Strict):
    """One dimension of the PE array: the loop dimensions it unrolls, innermost first, and its size. With
    several dims, the first takes as much of the size as the layer has, the next the rest (``[FY, C]`` over 12
    rows runs a 3-row filter four channels at a time, as Eyeriss replicates a small filter)."""

    dims: list[Literal[LOOP_DIMS]] = Field(min_length=1)  # type: ignore[valid-type]
    size: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> Unroll:
        if len(set(self.dims)) != len(self.dims):
            raise ValueError(f"dims listed twice: {self.dims}")
        return self


class Dataflow(_Strict):
    """How layers map onto the PE array (schema v2): the spatial unrolling, and which operand the PEs keep."""

    kind: Literal[DATAFLOWS]  # type: ignore[valid-type]
    unroll: list[Unroll] = Field(min_length=1, description="one entry per dimension of the PE array")
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _check(self) -> Dataflow:
        seen = [d for u in self.unroll for d in u.dims]
        if len(set(seen)) != len(seen):
            raise ValueError(f"a loop dimension is unrolled over two array dimensions: {seen}")
        return self

    @property
    def num_pes(self) -> int:
        return int(np.prod([u.size for u in self.unroll]))


class Sparsity(_Strict):
    """What the hardware does with zero operands: gate them (saves energy) or skip them (saves time)."""

    gates: Literal["none", "unstructured", "2:4"] = "none"
    skips: Literal["none", "unstructured", "2:4"] = "none"
    source: str = Field(min_length=3)


class Power(_Strict):
    static_w: float = Field(ge=0, description="static (leakage + idle) power while the layer runs")
    tdp_w: float | None = Field(default=None, gt=0)
    source: str = Field(min_length=3)


class ParameterSpec(_Strict):
    """A hardware parameter's values (see :mod:`picojoule.hwmodels.parameters`): a ``range`` (with an optional
    grid ``step``, or ``log`` spacing) or a list of ``choices``."""

    range: list[float] | None = Field(default=None, min_length=2, max_length=2)
    step: float | None = Field(default=None, gt=0)
    log: bool = False
    choices: list[Any] | None = Field(default=None, min_length=1)
    source: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ParameterSpec:
        if (self.range is None) == (self.choices is None):
            raise ValueError("give either a range [low, high] or a list of choices")
        if self.range is not None:
            lo, hi = self.range
            if not lo < hi:
                raise ValueError(f"range [{lo:g}, {hi:g}] is empty or its bounds are swapped: expected low < high")
            if self.log and lo <= 0:
                raise ValueError("a log range needs low > 0")
        elif self.step is not None or self.log:
            raise ValueError("step and log go with a range, not with choices")
        return self


class TVMTarget(_Strict):
    """How Apache TVM builds for this target; absent where TVM cannot (TPU, FPGA, NPU)."""

    kind: Literal["llvm", "cuda"]
    mcpu: str | None = None
    arch: str | None = None
    source: str | None = Field(default=None, description="why this mcpu (the detected host target says)")


class Target(_Strict):
    """A hardware target: clock, compute modes, memory hierarchy, PE array, sparsity and power."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str
    kind: Literal["cpu", "gpu", "tpu", "fpga", "npu", "accelerator"]
    technology_nm: int = Field(gt=0)
    clock_hz: float = Field(gt=0)
    clock_source: str = Field(min_length=3)
    compute: Compute
    memory: list[MemoryLevel] = Field(min_length=2)
    spatial: Spatial
    dataflow: Dataflow | None = None
    sparsity: Sparsity
    power: Power
    tvm: TVMTarget | None = None
    kernels: KernelTable | None = Field(
        default=None, description="measured kernel latencies on the runtime deployed on (picojoule calibrate "
        "--runtime onnxruntime): latency comes from them where they cover a layer")
    parameters: dict[str, ParameterSpec] | None = Field(
        default=None, description="hardware parameters as ranges or choices (co-design); the file's own figures "
        "are the base point")

    @model_validator(mode="after")
    def _check(self) -> Target:
        *on_chip, dram = self.memory
        if dram.capacity_bytes is not None:
            raise ValueError("memory: the last level is off-chip DRAM and must have capacity_bytes: null")
        if any(m.capacity_bytes is None for m in on_chip):
            raise ValueError("memory: every on-chip level needs capacity_bytes")
        if dram.held != OPERANDS:
            raise ValueError(f"memory: the last level ({dram.name}) is DRAM and must hold every operand (W, I, O)")
        roles = self.roles
        if roles[-1] != "dram" or "dram" in roles[:-1]:
            raise ValueError("memory: the last level, and only it, has role dram")
        if (self.spatial.rows is None) != (self.spatial.cols is None):
            raise ValueError("spatial: give both rows and cols, or neither (with a dataflow)")
        if self.spatial.rows is None and self.dataflow is None:
            raise ValueError("spatial: rows and cols are needed unless a dataflow gives the array")
        if self.dataflow is not None and self.spatial.rows is not None \
                and self.dataflow.num_pes != self.spatial.rows * self.spatial.cols:
            raise ValueError(f"dataflow: its unrolling covers {self.dataflow.num_pes} PEs but spatial has "
                             f"{self.spatial.rows} x {self.spatial.cols}")
        for i, m in enumerate(self.memory):
            self._check_spans(i, m)
        for name in self.parameters or {}:
            if name not in PARAMETERS:
                raise ValueError(f"parameters: unknown parameter '{name}': expected one of {', '.join(PARAMETERS)}")
            why = PARAMETERS[name].usable(self.model_dump(mode="python"))
            if why:
                raise ValueError(f"parameters.{name}: this target cannot use it: {why}")
            _check_values(name, self.parameters[name], self)
        return self

    def _check_spans(self, i: int, m: MemoryLevel) -> None:
        where = f"memory.{i}.spans"
        if m.spans is None:
            if self.dataflow is not None and 1 < m.instances < self.num_pes and i < len(self.memory) - 1:
                raise ValueError(f"{where}: {m.name} has {m.instances} instances for {self.num_pes} PEs: say which "
                                 "array dimensions (indices into dataflow.unroll) one instance serves")
            return
        if self.dataflow is None:
            raise ValueError(f"{where}: spans needs a dataflow (it indexes dataflow.unroll)")
        n = len(self.dataflow.unroll)
        if any(not 0 <= d < n for d in m.spans) or len(set(m.spans)) != len(m.spans):
            raise ValueError(f"{where}: expected distinct indices in 0..{n - 1}, got {m.spans}")
        served = int(np.prod([self.dataflow.unroll[d].size for d in m.spans]))
        if i < len(self.memory) - 1 and m.instances * served != self.num_pes:
            raise ValueError(f"{where}: {m.instances} instances x {served} PEs each != the array's {self.num_pes} PEs")

    def spans_of(self, i: int) -> tuple[int, ...]:
        """The array dimensions one instance of memory level ``i`` serves (empty: one per PE)."""
        m = self.memory[i]
        n = len(self.dataflow.unroll) if self.dataflow is not None else 0
        if m.spans is not None:
            return tuple(m.spans)
        if i == len(self.memory) - 1 or m.instances < self.num_pes:
            return tuple(range(n))
        return ()

    @property
    def roles(self) -> tuple[str, ...]:
        """Each memory level's role, as given or by position (v1 files)."""
        n = len(self.memory)

        def default(i: int) -> str:
            if i == n - 1:
                return "dram"
            if i == 0:
                return "rf"
            if i == 1 and n >= 4:
                return "noc"
            return "glb" if i == n - 2 else "buffer"

        return tuple(m.role or default(i) for i, m in enumerate(self.memory))

    def document(self) -> dict[str, Any]:
        """The target as a plain mapping that :func:`target_from_dict` reads back to an equal target (what a YAML
        file of it holds): unset optional fields left out, DRAM's ``capacity_bytes: null`` kept."""
        doc = self.model_dump(mode="json", exclude_none=True)
        doc["memory"][-1]["capacity_bytes"] = None
        return doc

    @property
    def dram(self) -> MemoryLevel:
        return self.memory[-1]

    @property
    def num_pes(self) -> int:
        if self.spatial.rows is None:
            return self.dataflow.num_pes
        return self.spatial.rows * self.spatial.cols

    def mode_for(self, bits: int) -> ComputeMode:
        """The narrowest mode that holds ``bits``-wide operands; the widest mode for anything wider."""
        return next((m for m in self.compute.modes if m.bits >= bits), self.compute.modes[-1])

    def peak_macs_per_s(self, bits: int) -> float:
        return self.mode_for(bits).peak_macs_per_s


def _check_values(name: str, spec: ParameterSpec, target: Target) -> None:
    where = f"parameters.{name}"
    kind = PARAMETERS[name].kind
    values = spec.choices if spec.choices is not None else spec.range
    if kind in (bool, str, list) and spec.range is not None:
        raise ValueError(f"{where}: takes choices, not a range")
    for v in values:
        if kind is bool and not isinstance(v, bool):
            raise ValueError(f"{where}: expected true or false, got {v!r}")
        if kind is str and v not in ("none", "unstructured", "2:4"):
            raise ValueError(f"{where}: expected none, unstructured or 2:4, got {v!r}")
        if kind is list:
            if not isinstance(v, list) or not v or not all(isinstance(x, int) and x >= 1 for x in v):
                raise ValueError(f"{where}: expected lists of positive integers, got {v!r}")
        if kind in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise ValueError(f"{where}: expected positive numbers, got {v!r}")
    if name == "array":
        n = len(target.dataflow.unroll) if target.dataflow is not None else 2
        for v in values:
            if len(v) != n:
                raise ValueError(f"{where}: {v} has {len(v)} sizes; the target's array has {n} dimensions")
    if name == "operand_bits":
        widest = max(m.bits for m in target.compute.modes)
        for v in values:
            if max(v) > widest:
                raise ValueError(f"{where}: {v} is wider than the widest mode ({widest} bits)")


def _format_error(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    named = re.match(r"^([a-z_]+(?:\.[A-Za-z0-9_]+)*): ", msg)
    if not field and named:  # a whole-target check names the field it is about
        field, msg = named.group(1), msg[named.end():]
    return f"{path}: field '{field or '(top level)'}': {msg}"


def target_from_dict(data: object, source: str) -> Target:
    """``data`` validated as a Target; a bad field gives a one-line error naming ``source`` and the field."""
    return validated(Target, data, source, "target fields", _format_error)


def load_target_file(path: str | Path) -> Target:
    """Load and validate one target YAML file; a bad file gives a one-line error naming it and the field."""
    return target_from_dict(read_yaml(path, "target file"), str(path))


def target_names() -> list[str]:
    """Names of the bundled targets."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))


@lru_cache(maxsize=64)
def _load_cached(path: str) -> Target:
    return load_target_file(path)


_BY_NAME: dict[str, Target] = {}


def load_target(name_or_path: str | Path | Target) -> Target:
    """A bundled target by name (``a100``), ``host`` (this machine's CPU, detected: :mod:`picojoule.hwmodels.host`),
    any target YAML file by path, or a :class:`Target` (as it is)."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    if text == "host":
        from picojoule.hwmodels.host import host_target

        return host_target()
    if text in _BY_NAME:
        return _BY_NAME[text]
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return _load_cached(str(Path(text).resolve()))
    path = TARGETS_DIR / f"{text}.yaml"
    if not path.is_file():
        raise PicojouleError(f"unknown target '{text}': expected one of {', '.join(target_names())}, "
                              "host (this CPU) or a .yaml path")
    _BY_NAME[text] = _load_cached(str(path))
    return _BY_NAME[text]
