"""Hardware targets: one YAML file each, validated against this schema on load.

A target is data, not code: adding one is adding a file under ``picojoule/hwmodels/targets/``
(or passing a path). Every figure carries the source it was taken from.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from picojoule.errors import PicojouleError
from picojoule.yamlfile import read_yaml, validated

TARGETS_DIR = Path(__file__).parent / "targets"

#: Op kinds the cost models distinguish; every target states an efficiency for each.
OP_KINDS = ("conv", "depthwise", "linear", "matmul", "pool", "elementwise")


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
    """One level of the memory hierarchy, innermost (registers) first, off-chip DRAM last."""

    name: str
    capacity_bytes: float | None = Field(gt=0, description="per instance; null for off-chip DRAM")
    instances: int = Field(default=1, ge=1, description="copies, e.g. one register file per PE")
    bandwidth_bytes_per_s: float = Field(gt=0, description="aggregate over all instances")
    read_energy_pj_per_bit: float = Field(gt=0)
    write_energy_pj_per_bit: float | None = Field(default=None, gt=0, description="default: = read")
    source: str = Field(min_length=3)

    @property
    def write_pj_per_bit(self) -> float:
        return self.write_energy_pj_per_bit or self.read_energy_pj_per_bit


class Spatial(_Strict):
    """The processing-element array that the Eyeriss-style model maps a layer onto."""

    rows: int = Field(ge=1)
    cols: int = Field(ge=1)
    macs_per_pe_per_cycle: float = Field(gt=0, description="at the widest mode")
    psum_bits: int = Field(default=32, ge=8, le=64, description="accumulator (partial sum) width in the PEs")
    source: str = Field(min_length=3)


class Sparsity(_Strict):
    """What the hardware does with zero operands: gate them (saves energy) or skip them (saves time)."""

    gates: Literal["none", "unstructured", "2:4"] = "none"
    skips: Literal["none", "unstructured", "2:4"] = "none"
    source: str = Field(min_length=3)


class Power(_Strict):
    static_w: float = Field(ge=0, description="static (leakage + idle) power while the layer runs")
    tdp_w: float | None = Field(default=None, gt=0)
    source: str = Field(min_length=3)


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
    sparsity: Sparsity
    power: Power
    tvm: TVMTarget | None = None

    @model_validator(mode="after")
    def _check(self) -> Target:
        *on_chip, dram = self.memory
        if dram.capacity_bytes is not None:
            raise ValueError("memory: the last level is off-chip DRAM and must have capacity_bytes: null")
        if any(m.capacity_bytes is None for m in on_chip):
            raise ValueError("memory: every on-chip level needs capacity_bytes")
        return self

    @property
    def dram(self) -> MemoryLevel:
        return self.memory[-1]

    @property
    def num_pes(self) -> int:
        return self.spatial.rows * self.spatial.cols

    def mode_for(self, bits: int) -> ComputeMode:
        """The narrowest mode that holds ``bits``-wide operands; the widest mode for anything wider."""
        return next((m for m in self.compute.modes if m.bits >= bits), self.compute.modes[-1])

    def peak_macs_per_s(self, bits: int) -> float:
        return self.mode_for(bits).peak_macs_per_s


def _format_error(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{path}: field '{field}': {first['msg']}"


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
