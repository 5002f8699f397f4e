"""The ``host`` target: this machine's CPU, detected at run time.

:func:`describe_cpu` turns the text of ``/proc/cpuinfo``, the cache sizes of ``/sys/devices/system/cpu/cpu0/cache``,
the number of usable CPUs and the clock into a :class:`~picojoule.hwmodels.target.Target` (a pure function:
tests feed it recorded CPUs); :func:`host_target` does so for this machine, once per process. Every figure's
``source`` says where it came from: read from the machine, derived from its instruction sets (peak MAC/s =
cores x clock x FMA units x SIMD lanes x MACs per lane), or a stated default where nothing could be read.

The LLVM ``mcpu`` is LLVM's name for this CPU (through TVM) when this CPU has every instruction set that name
implies (checked with :func:`picojoule.compilers.tvm_build.missing_isa`); otherwise, and without TVM, the
highest x86-64 micro-architecture level (``x86-64-v4`` / ``-v3`` / ``-v2``) whose features the flags hold.
No torch here; TVM is imported only to name and check the ``mcpu``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from picojoule.errors import PicojouleError

__all__ = ["HOST", "CpuInfo", "choose_mcpu", "describe_cpu", "detect_host", "host_target", "mcpu_from_flags",
           "parse_cpuinfo", "read_caches"]

HOST = "host"
CPUINFO = Path("/proc/cpuinfo")
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")

DEFAULT_CLOCK_HZ = 2.5e9
#: cache sizes used where /sys gives none (bytes): typical of current server cores
DEFAULT_CACHES = {"l1d": 32 * 1024, "l2": 1024 * 1024, "l3": 32 * 1024 * 1024}
#: DRAM bandwidth per core and its cap: host-znver3.yaml measured 27 GB/s (numpy copy, one thread) on a 2-vCPU
#: EPYC VM; a socket of 8 DDR4-3200 channels gives 204.8 GB/s in all
DRAM_BYTES_PER_S_PER_CORE = 13.5e9
DRAM_CAP_BYTES_PER_S = 204.8e9

#: x86-64 psABI micro-architecture levels, as /proc/cpuinfo names their features (pni = SSE3, abm = LZCNT)
X86_LEVELS = (
    ("x86-64-v4", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
    ("x86-64-v3", ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")),
    ("x86-64-v2", ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3")),
)

# Efficiencies: estimates for tuned library kernels, as in the bundled targets (cpu-avx512.yaml, host-znver3.yaml);
# 'picojoule calibrate --target host' fits them to TVM timings on this machine.
_EFF_AVX512 = {"conv": 0.65, "depthwise": 0.2, "linear": 0.4, "matmul": 0.7, "pool": 0.3, "elementwise": 0.3}
_EFF_AVX2 = {"conv": 0.35, "depthwise": 0.1, "linear": 0.1, "matmul": 0.4, "pool": 0.1, "elementwise": 0.1}


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the first CPU."""

    vendor: str = "unknown"
    model_name: str = "unknown CPU"
    family: int | None = None
    model: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    mhz: float | None = None
    threads_per_core: int = 1

    def has(self, *names: str) -> bool:
        """Whether any of ``names`` is among the flags (kernels spell some two ways: avx512_vnni, avx512vnni)."""
        return any(n in self.flags for n in names)


def _number(text: str | None, kind: type = float) -> Any:
    try:
        return kind(text, 0) if kind is int and text and text.lower().startswith("0x") else kind(text)
    except (TypeError, ValueError):
        return None


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor block of ``/proc/cpuinfo`` text; missing or garbled fields keep their defaults."""
    fields: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            if fields:
                break  # the first block only
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags") or fields.get("features") or ""
    siblings, cores = _number(fields.get("siblings"), int), _number(fields.get("cpu cores"), int)
    tpc = siblings // cores if siblings and cores and siblings >= cores else 1
    mhz = _number(fields.get("cpu mhz"))
    return CpuInfo(vendor=fields.get("vendor_id") or fields.get("cpu implementer") or "unknown",
                   model_name=fields.get("model name") or "unknown CPU",
                   family=_number(fields.get("cpu family"), int), model=_number(fields.get("model"), int),
                   flags=frozenset(flags.split()), mhz=mhz if mhz and mhz > 0 else None, threads_per_core=max(1, tpc))


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)


def read_caches(root: str | Path = CACHE_DIR) -> dict[str, int]:
    """Cache sizes in bytes from ``root/index*/{level,type,size}``: keys ``l1d``, ``l2``, ``l3``; an unreadable
    or garbled entry is left out (the caller falls back to a default)."""
    out: dict[str, int] = {}
    for index in sorted(Path(root).glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        m = _SIZE.match(size)
        if not m or kind.lower() == "instruction":
            continue
        name = "l1d" if level == "1" else f"l{level}"
        out[name] = int(m.group(1)) * 1024 ** " KMG".index((m.group(2) or " ").upper())
    return out


def mcpu_from_flags(info: CpuInfo) -> str:
    """The highest x86-64 level whose features ``info``'s flags all hold (``x86-64`` below v2; ``generic`` for a
    CPU that is not x86)."""
    if not info.has("sse2"):
        return "generic"
    return next((name for name, need in X86_LEVELS if all(f in info.flags for f in need)), "x86-64")


def choose_mcpu(info: CpuInfo, llvm_cpu: str | None = None,
                missing: Callable[[str], list[str]] | None = None) -> tuple[str, str]:
    """(mcpu, why): LLVM's name ``llvm_cpu`` for this CPU if ``missing(mcpu)`` (the instruction sets code for it
    needs that this CPU lacks) is empty, else the first x86-64 level from the flags downward that passes; without
    ``missing`` (no TVM) the level from the flags."""
    level = mcpu_from_flags(info)
    if missing is None:
        return level, f"{level}: the highest x86-64 level /proc/cpuinfo's flags hold (TVM absent: not checked)"
    levels = [name for name, _ in X86_LEVELS]
    fallbacks = levels[levels.index(level):] + ["x86-64"] if level in levels else [level]
    rejected = []
    for mcpu in ([llvm_cpu] if llvm_cpu else []) + fallbacks:
        if not (lacks := missing(mcpu)):
            how = "LLVM's name for this CPU" if mcpu == llvm_cpu else "x86-64 level from /proc/cpuinfo's flags"
            return mcpu, f"{mcpu}: {how}, whose instruction sets this CPU has (LLVM host features)" + (
                "; rejected " + "; ".join(rejected) if rejected else "")
        rejected.append(f"{mcpu} (needs {', '.join(lacks[:4])})")
    return "generic", "generic: every candidate needs instruction sets this CPU lacks: " + "; ".join(rejected)


@dataclass(frozen=True)
class _Vector:
    """The SIMD datapath: fp32 lanes per register, FMA units (of that width) per core, register file."""

    isa: str
    lanes: int
    units: float
    registers: int
    why: str

    @property
    def bytes(self) -> int:
        return 4 * self.lanes

    @property
    def datapath_bytes(self) -> int:
        """Bytes one load/FMA port moves per cycle (32 where 512-bit ops are split over 256-bit pipes)."""
        return self.bytes if self.units >= 2 or self.lanes < 16 else self.bytes // 2


def _vector(info: CpuInfo) -> _Vector:
    amd, intel = info.vendor == "AuthenticAMD", info.vendor == "GenuineIntel"
    if info.has("avx512f"):
        if amd and info.family == 0x19:
            return _Vector("AVX-512", 16, 1, 32, "Zen 4 (AMD family 19h with avx512f) executes a 512-bit FMA on its "
                           "two 256-bit FMA pipes: 1 zmm FMA/cycle (AMD Software Optimization Guide for Family 19h)")
        if amd:
            return _Vector("AVX-512", 16, 2, 32, "Zen 5 (AMD family 1Ah): two full 512-bit FMA pipes (AMD, Zen 5 "
                           "launch material; mobile parts split them: estimate)")
        why = ("Intel Xeon Scalable: two 512-bit FMA units per core (ports 0+1 fused and port 5; Intel Optimization "
               "Reference Manual); some SKUs have one: estimate") if intel else "assumed two 512-bit FMA units: estimate"
        return _Vector("AVX-512", 16, 2, 32, why)
    if info.has("avx2") and info.has("fma"):
        return _Vector("AVX2+FMA", 8, 2, 16, "two 256-bit FMA pipes per core (Haswell and later, Zen 2 and later; "
                       "Intel Optimization Reference Manual, AMD Family 17h/19h Optimization Guides)")
    if info.has("avx"):
        return _Vector("AVX", 8, 1, 16, "AVX without FMA: one 256-bit multiply and one add pipe, counted as one FMA "
                       "unit (estimate)")
    if info.has("sse2"):
        return _Vector("SSE2", 4, 1, 16, "SSE2 only: 128-bit multiply + add, counted as one FMA unit (estimate)")
    return _Vector("unknown", 4, 1, 32, "default: no x86 vector flags read; 128-bit SIMD (NEON-class) with one "
                   "FMA unit assumed")


@dataclass(frozen=True)
class _Mode:
    name: str
    bits: int
    macs_per_core_cycle: float
    energy_pj: float
    why: str


def _modes(info: CpuInfo, v: _Vector) -> list[_Mode]:
    """The compute modes the ISA gives, narrowest first; MACs per core-cycle derived from lanes x units."""
    fp32 = v.lanes * v.units
    # issue + datapath energy of one vector instruction (estimates of cpu-avx512.yaml / host-znver3.yaml: ~0.5 nJ
    # per zmm, ~0.28 nJ per ymm instruction, from the TDP budget per core); xmm taken as 0.2 nJ (estimate)
    instr_pj = {16: 500.0, 8: 280.0}.get(v.lanes, 200.0)
    fma = f"{v.lanes} fp32 lanes x {v.units:g} FMA units = {fp32:g} MACs/cycle/core ({v.why})"
    modes = []
    if info.has("amx_int8") and info.has("amx_tile"):
        modes.append(_Mode("int8-amx", 8, 1024, instr_pj / (4 * v.lanes) / 4,
                           "amx_int8: AMX TMUL, 1024 int8 MACs/cycle/core (Intel: 2048 int8 ops/cycle/core; TDPBUSD "
                           "16x64x16 tiles in 16 cycles). Energy estimate: 1/4 of the VNNI figure (no per-MAC issue)"))
    elif info.has("avx512_vnni", "avx512vnni") and v.lanes == 16:
        modes.append(_Mode("int8-vnni", 8, 4 * fp32, instr_pj / (4 * v.lanes),
                           f"avx512_vnni: vpdpbusd does 4 u8*s8 MACs per 32-bit lane, 4 x the fp32 rate: 4 x {fma}. "
                           "Energy estimate: one instruction's issue + datapath / its MACs"))
    elif info.has("avx_vnni") and v.lanes >= 8:
        modes.append(_Mode("int8-avx-vnni", 8, 4 * 8 * v.units, 280.0 / 32,
                           f"avx_vnni: ymm vpdpbusd, 4 int8 MACs per 32-bit lane of 8: 32 x {v.units:g} FMA units "
                           "MACs/cycle/core. Energy estimate: ~0.28 nJ per ymm instruction / 32 MACs"))
    elif info.has("avx512bw", "avx2"):
        modes.append(_Mode("int8-avx512bw" if v.lanes == 16 else "int8-avx2", 8, 2 * fp32, 3 * instr_pj / (4 * v.lanes),
                           f"no VNNI: vpmaddubsw + vpmaddwd + vpaddd give 4 exact int8 MACs per 32-bit lane in 3 "
                           f"instructions, bounded by the multiply pipes at 2 x the fp32 rate: 2 x {fma}. Energy "
                           "estimate: 3 instructions' issue + datapath / their MACs"))
    if info.has("amx_bf16") and info.has("amx_tile"):
        modes.append(_Mode("bf16-amx", 16, 512, instr_pj / (2 * v.lanes) / 4,
                           "amx_bf16: AMX TMUL, 512 bf16 MACs/cycle/core (half its int8 rate; TDPBF16PS). Energy "
                           "estimate: 1/4 of the AVX-512 bf16 figure"))
    elif info.has("avx512_bf16") and v.lanes == 16:
        modes.append(_Mode("bf16-avx512", 16, 2 * fp32, instr_pj / (2 * v.lanes),
                           f"avx512_bf16: vdpbf16ps does 2 bf16 MACs per fp32 lane: 2 x {fma}. Energy estimate: one "
                           "instruction / its MACs"))
    elif info.has("avx512_vnni", "avx512vnni") and v.lanes == 16:
        modes.append(_Mode("int16-vnni", 16, 2 * fp32, instr_pj / (2 * v.lanes),
                           f"avx512_vnni: vpdpwssd does 2 int16 MACs per 32-bit lane: 2 x {fma}. Energy estimate: one "
                           "instruction / its MACs"))
    modes.append(_Mode("fp32", 32, fp32, instr_pj / v.lanes,
                       f"{v.isa}: {fma}. Energy estimate: one FMA instruction's issue + datapath / its lanes"))
    floor = float("inf")  # MAC energy must not decrease as bits increase: a narrow mode costs at most a wider one
    for i in range(len(modes) - 1, -1, -1):
        floor = min(floor, modes[i].energy_pj)
        modes[i] = _Mode(modes[i].name, modes[i].bits, modes[i].macs_per_core_cycle, floor, modes[i].why)
    return modes


def _clock(info: CpuInfo, max_freq_khz: float | None) -> tuple[float, str]:
    if max_freq_khz and max_freq_khz > 0:
        return max_freq_khz * 1e3, (f"read: {MAX_FREQ} = {max_freq_khz:.0f} kHz, the maximum (boost) clock; "
                                    "all-core vector code may run lower")
    if m := re.search(r"@\s*([\d.]+)\s*GHz", info.model_name):
        return float(m.group(1)) * 1e9, f"read: /proc/cpuinfo model name '{info.model_name}' (the nominal clock)"
    if info.mhz:
        return info.mhz * 1e6, (f"read: /proc/cpuinfo 'cpu MHz' {info.mhz:.0f} (the kernel's current or, in a VM, "
                                "nominal clock; boost may be higher)")
    return DEFAULT_CLOCK_HZ, f"default {DEFAULT_CLOCK_HZ / 1e9:g} GHz: neither cpufreq nor /proc/cpuinfo gave a clock"


def _node_nm(info: CpuInfo) -> tuple[int, str]:
    """Process node guessed from vendor and family (no field gives it)."""
    if info.vendor == "AuthenticAMD" and info.family == 0x19:
        return (7, "Zen 3, TSMC N7") if (info.model or 0) < 0x10 or 0x20 <= (info.model or 0) < 0x60 else (5, "Zen 4, TSMC N5")
    if info.vendor == "AuthenticAMD" and (info.family or 0) >= 0x1A:
        return 4, "Zen 5, TSMC N4/N3"
    if info.vendor == "GenuineIntel":
        return 10, "Intel 10 nm class (Ice Lake-SP 10 nm, Sapphire Rapids 'Intel 7')"
    return 7, "default"


def _cache(caches: Mapping[str, Any], key: str) -> tuple[float, str]:
    value = caches.get(key)
    if value is None:
        return float(DEFAULT_CACHES[key]), f"default {DEFAULT_CACHES[key] // 1024} KiB ({CACHE_DIR} gave no {key} size)"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise PicojouleError(f"host: field 'caches.{key}': expected a positive size in bytes, got {value!r}")
    return float(value), f"read: {CACHE_DIR} {key} = {int(value) // 1024} KiB"


def describe_cpu(cpuinfo: str, caches: Mapping[str, Any], cpus: int, max_freq_khz: float | None = None,
                 llvm_cpu: str | None = None, missing: Callable[[str], list[str]] | None = None) -> dict[str, Any]:
    """The ``host`` target's fields (a mapping :class:`Target` validates) for a CPU described by the text of its
    /proc/cpuinfo, its cache sizes in bytes (``l1d``, ``l2``, ``l3``), the CPUs this process may use, its
    cpufreq maximum in kHz (if readable), LLVM's name for it and a ``missing(mcpu)`` check (see
    :func:`choose_mcpu`)."""
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise PicojouleError(f"host: field 'cpus': expected a positive number of CPUs, got {cpus!r}")
    info = parse_cpuinfo(cpuinfo)
    v = _vector(info)
    cores = max(1, cpus // info.threads_per_core)
    core_src = f"{cpus} usable CPUs (sched_getaffinity) / {info.threads_per_core} thread(s) per core (siblings / cpu cores)"
    clock, clock_src = _clock(info, max_freq_khz)
    per_cycle = cores * clock
    modes = _modes(info, v)
    mcpu, mcpu_src = choose_mcpu(info, llvm_cpu, missing)
    node, node_src = _node_nm(info)
    l1, l1_src = _cache(caches, "l1d")
    l2, l2_src = _cache(caches, "l2")
    l3, l3_src = _cache(caches, "l3")
    dram = min(DRAM_CAP_BYTES_PER_S, DRAM_BYTES_PER_S_PER_CORE * cores)
    ghz = f"{clock / 1e9:.3g} GHz"
    flags = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "sse4a")
             if info.has(f, f.replace("_", ""))]
    summary = f"{cores} cores x {ghz}"
    return {
        "name": HOST,
        "description": (f"this machine's CPU, detected: {info.model_name} ({info.vendor}, family {info.family}, model "
                        f"{info.model}), {summary}, {v.isa} ({' '.join(flags) or 'no vector flags read'}), L3 "
                        f"{l3 / 2**20:g} MiB, llvm -mcpu={mcpu}; node {node} nm ({node_src}: estimate)"),
        "kind": "cpu",
        "technology_nm": node,
        "clock_hz": clock,
        "clock_source": clock_src,
        "compute": {
            "modes": [{"name": m.name, "bits": m.bits, "peak_macs_per_s": m.macs_per_core_cycle * per_cycle,
                       "mac_energy_pj": round(m.energy_pj, 3),
                       "source": f"derived: {cores} cores x {ghz} x {m.macs_per_core_cycle:g} MACs/cycle/core; {m.why}"}
                      for m in modes],
            "efficiency": dict(_EFF_AVX512 if v.lanes == 16 else _EFF_AVX2),
            "layer_overhead_s": 1e-6 if v.lanes == 16 else 3e-6,
            "source": ("default estimates for tuned library kernels, as the bundled "
                       f"{'cpu-avx512' if v.lanes == 16 else 'host-znver3'} target; untuned TVM code reaches a few % "
                       "of them: run 'picojoule calibrate --target host'. Cores: " + core_src),
        },
        "memory": [
            {"name": "registers", "capacity_bytes": v.registers * v.bytes, "instances": cores,
             "bandwidth_bytes_per_s": v.units * 3 * v.bytes * per_cycle, "read_energy_pj_per_bit": 0.05,
             "source": f"derived: {v.registers} {v.isa} registers x {v.bytes} B per core; bandwidth = 3 operands of "
                       f"{v.units:g} FMAs/cycle x {v.bytes} B x {summary}; energy estimate as host-znver3"},
            {"name": "l1d", "capacity_bytes": l1, "instances": cores,
             "bandwidth_bytes_per_s": 2 * v.datapath_bytes * per_cycle, "read_energy_pj_per_bit": 0.14,
             "source": f"{l1_src}; bandwidth: 2 loads/cycle x {v.datapath_bytes} B x {summary} (estimate); energy "
                       "estimate: Horowitz 32 KB 0.31 pJ/bit x0.45 (45 nm -> N7), as host-znver3"},
            {"name": "l2", "capacity_bytes": l2, "instances": cores,
             "bandwidth_bytes_per_s": v.datapath_bytes * per_cycle, "read_energy_pj_per_bit": 0.59,
             "source": f"{l2_src}; bandwidth: {v.datapath_bytes} B/cycle per core x {summary} (estimate); energy "
                       "estimate as host-znver3 (Horowitz 512 KB x0.45)"},
            {"name": "l3", "capacity_bytes": l3, "bandwidth_bytes_per_s": 16 * per_cycle, "read_energy_pj_per_bit": 1.2,
             "source": f"{l3_src}; bandwidth: ~16 B/cycle per core sustained x {summary} (estimate between "
                       "host-znver3's 24 and cpu-avx512's 11); energy estimate as host-znver3"},
            {"name": "dram", "capacity_bytes": None, "bandwidth_bytes_per_s": dram, "read_energy_pj_per_bit": 20.0,
             "source": f"default, not measured: {DRAM_BYTES_PER_S_PER_CORE / 1e9:g} GB/s per core (host-znver3.yaml "
                       f"measured 27 GB/s for 2 cores with a numpy copy) x {cores} cores, capped at "
                       f"{DRAM_CAP_BYTES_PER_S / 1e9:g} GB/s (8 channels of DDR4-3200); energy estimate: DDR4 ~18 pJ/bit "
                       "+ ~2 pJ/bit on-package links, as host-znver3"},
        ],
        "spatial": {"rows": cores, "cols": v.lanes, "macs_per_pe_per_cycle": v.units,
                    "source": f"rows = cores, cols = fp32 lanes, {v.units:g} FMA units per core: {v.why}"},
        "sparsity": {"gates": "none", "skips": "none",
                     "source": f"{v.isa} has no zero-skipping or zero-gating in its datapath; sparse kernels are software"},
        "power": {"static_w": 1.75 * cores, "tdp_w": 4.4 * cores,
                  "source": "default estimate per core, as host-znver3 (AMD EPYC 7763: 280 W TDP / 64 cores = 4.4 W; "
                            f"~1.75 W leakage and uncore share) x {cores} cores"},
        "tvm": {"kind": "llvm", "mcpu": mcpu, "source": mcpu_src},
    }


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _llvm() -> tuple[str | None, Callable[[str], list[str]] | None]:
    """(LLVM's name for this CPU, missing(mcpu)) through TVM, or (None, None) without TVM."""
    try:
        from picojoule.compilers import tvm_build

        llvm_cpu = tvm_build.host_cpu()
    except (PicojouleError, ImportError, OSError):
        return None, None
    import tvm

    def missing(mcpu: str) -> list[str]:
        try:
            return tvm_build.missing_isa(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
        except Exception as exc:  # TVM rejects an mcpu LLVM does not know
            return [f"an mcpu TVM rejects ({type(exc).__name__})"]

    return llvm_cpu, missing


def detect_host(cpuinfo: str | None = None, caches: Mapping[str, Any] | None = None, cpus: int | None = None,
                max_freq_khz: float | None = None, use_tvm: bool = True) -> dict[str, Any]:
    """:func:`describe_cpu` for this machine; any argument given replaces what would be read."""
    freq = max_freq_khz if max_freq_khz is not None else _number(_read(MAX_FREQ).strip())
    llvm_cpu, missing = _llvm() if use_tvm else (None, None)
    return describe_cpu(_read(CPUINFO) if cpuinfo is None else cpuinfo,
                        read_caches() if caches is None else caches, _usable_cpus() if cpus is None else cpus,
                        freq, llvm_cpu, missing)


@lru_cache(maxsize=1)
def host_target() -> Any:
    """The ``host`` :class:`~picojoule.hwmodels.target.Target`: this machine's CPU, detected once per process."""
    from picojoule.hwmodels.target import target_from_dict

    return target_from_dict(detect_host(), "host (detected)")

