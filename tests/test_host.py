"""The ``host`` target: this machine's CPU detected from /proc/cpuinfo and /sys, on recorded CPUs and on this one."""

from __future__ import annotations

from pathlib import Path

import pytest

from picojoule.errors import PicojouleError
from picojoule.hwmodels.host import (choose_mcpu, describe_cpu, detect_host, mcpu_from_flags, parse_cpuinfo,
                                     read_caches)
from picojoule.hwmodels.target import Target, load_target, target_from_dict

_BASE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
         "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni "
         "pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor "
         "lahf_lm abm fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt "
         "xsavec xgetbv1 xsaves arat umip vaes vpclmulqdq rdpid fsrm")
_AVX512 = ("avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512vbmi avx512_vbmi2 gfni avx512_vnni "
           "avx512_bitalg avx512_vpopcntdq")
_AMD = "mmxext fxsr_opt extd_apicid cmp_legacy cr8_legacy sse4a misalignsse 3dnowprefetch osvw topoext clzero"


def _cpuinfo(vendor: str, family: int, model: int, name: str, flags: str, mhz: float, siblings: int = 2,
             cores: int = 2) -> str:
    block = (f"processor\t: {{cpu}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: {name}\nstepping\t: 1\ncpu MHz\t\t: {mhz}\ncache size\t: 512 KB\nsiblings\t: {siblings}\n"
             f"cpu cores\t: {cores}\nflags\t\t: {flags}\nbogomips\t: 4890.81\n\n")
    return "".join(block.format(cpu=i) for i in range(siblings))


#: recorded CPUs (flags as their kernels print them): an Intel Sapphire Rapids VM with AMX and SMT, an AMD Zen 3
#: (AVX2, sse4a, no AVX-512), an AMD Zen 4 (AVX-512 on 256-bit pipes) and an AMD Zen 5 (full 512-bit pipes)
INTEL_SPR = _cpuinfo("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                     f"{_BASE} {_AVX512} avx_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8", 2700.0,
                     siblings=4, cores=2)
ZEN3 = _cpuinfo("AuthenticAMD", 25, 1, "AMD EPYC 7B13", f"{_BASE} {_AMD}", 2445.406)
ZEN4 = _cpuinfo("AuthenticAMD", 25, 17, "AMD EPYC 9B14", f"{_BASE} {_AMD} {_AVX512} avx512_bf16", 2596.132)
ZEN5 = _cpuinfo("AuthenticAMD", 26, 2, "AMD EPYC 9B45", f"{_BASE} {_AMD} {_AVX512} avx512_bf16 avx_vnni "
                "avx512_vp2intersect", 3000.0)
CACHES = {"l1d": 48 * 1024, "l2": 2 * 2**20, "l3": 105 * 2**20}


def _target(cpuinfo: str, cpus: int = 2, caches: dict | None = None, **kw) -> Target:
    return target_from_dict(describe_cpu(cpuinfo, CACHES if caches is None else caches, cpus, **kw), "test")


def _modes(t: Target) -> dict[str, float]:
    return {m.name: m.peak_macs_per_s for m in t.compute.modes}


def test_intel_with_amx():
    t = _target(INTEL_SPR, cpus=4)  # 4 vCPUs, 2 threads per core: 2 cores
    assert t.name == "host" and t.kind == "cpu" and t.spatial.rows == 2 and "Intel" in t.description
    assert t.clock_hz == 2.7e9 and "model name" in t.clock_source
    peaks = _modes(t)
    assert list(peaks) == ["int8-amx", "bf16-amx", "fp32"]
    assert peaks["fp32"] == pytest.approx(2 * 2.7e9 * 16 * 2)  # cores x clock x lanes x FMA units
    assert peaks["int8-amx"] == pytest.approx(2 * 2.7e9 * 1024) and peaks["bf16-amx"] == pytest.approx(2 * 2.7e9 * 512)
    assert "amx_int8" in t.compute.modes[0].source and "derived" in t.compute.modes[0].source
    assert t.memory[1].capacity_bytes == 48 * 1024 and "read" in t.memory[1].source
    assert t.tvm.mcpu == "x86-64-v4" and "TVM absent" in t.tvm.source  # no TVM check asked: from the flags


def test_intel_llvm_name_is_kept_only_if_this_cpu_has_its_isa():
    info = parse_cpuinfo(INTEL_SPR)
    assert choose_mcpu(info, "rocketlake", lambda m: [])[0] == "rocketlake"
    mcpu, why = choose_mcpu(info, "rocketlake", lambda m: ["avx512vp2intersect"] if m == "rocketlake" else [])
    assert mcpu == "x86-64-v4" and "rejected rocketlake (needs avx512vp2intersect)" in why
    assert choose_mcpu(info, "rocketlake", lambda m: ["x"])[0] == "generic"


def test_amd_zen3_avx2_only():
    t = _target(ZEN3)
    peaks = _modes(t)
    assert list(peaks) == ["int8-avx2", "fp32"]
    assert peaks["fp32"] == pytest.approx(2 * 2.445406e9 * 8 * 2) and peaks["int8-avx2"] == pytest.approx(2 * peaks["fp32"])
    assert t.memory[0].capacity_bytes == 16 * 32 and t.spatial.cols == 8 and t.technology_nm == 7
    assert "cpu MHz" in t.clock_source
    info = parse_cpuinfo(ZEN3)
    assert mcpu_from_flags(info) == "x86-64-v3"
    needs = {"znver3": [], "x86-64-v4": ["avx512f"]}
    assert choose_mcpu(info, "znver3", lambda m: needs.get(m, []))[0] == "znver3"


def test_amd_zen4_and_zen5_avx512():
    z4, z5 = _modes(_target(ZEN4)), _modes(_target(ZEN5))
    assert list(z4) == ["int8-vnni", "bf16-avx512", "fp32"]
    assert z4["fp32"] == pytest.approx(2 * 2.596132e9 * 16)  # 512-bit FMA on two 256-bit pipes: 16 MACs/cycle
    assert z4["int8-vnni"] == pytest.approx(4 * z4["fp32"]) and z4["bf16-avx512"] == pytest.approx(2 * z4["fp32"])
    assert z5["fp32"] == pytest.approx(2 * 3e9 * 32)  # Zen 5: two full 512-bit pipes
    assert mcpu_from_flags(parse_cpuinfo(ZEN4)) == "x86-64-v4"


def test_every_mode_energy_grows_with_width():
    for text in (INTEL_SPR, ZEN3, ZEN4, ZEN5):
        energies = [m.mac_energy_pj for m in _target(text).compute.modes]
        assert energies == sorted(energies)


def test_broken_cpuinfo_and_no_caches_fall_back_to_defaults():
    t = _target("garbage\x00 no colon\n:::\ncpu MHz : abc\nflags : \nsiblings : x\n", cpus=3, caches={})
    assert t.clock_hz == 2.5e9 and "default" in t.clock_source
    assert all("default" in m.source for m in t.memory[1:4])
    assert t.spatial.rows == 3 and t.tvm.mcpu == "generic" and [m.name for m in t.compute.modes] == ["fp32"]
    assert "default" in t.spatial.source
    assert _target("").compute.modes[-1].peak_macs_per_s > 0  # an empty file too


def test_cpufreq_maximum_is_preferred():
    t = _target(ZEN3, max_freq_khz=3_500_000)
    assert t.clock_hz == 3.5e9 and "cpuinfo_max_freq" in t.clock_source


def test_cache_sizes_read_from_sysfs_layout(tmp_path: Path):
    for i, (level, kind, size) in enumerate([("1", "Data", "32K"), ("1", "Instruction", "32K"),
                                             ("2", "Unified", "1024K"), ("3", "Unified", "32M")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")
    (tmp_path / "index4").mkdir()  # unreadable: no files
    assert read_caches(tmp_path) == {"l1d": 32768, "l2": 2**20, "l3": 32 * 2**20}
    (tmp_path / "index2" / "size").write_text("lots\n")  # garbled: left out
    assert read_caches(tmp_path) == {"l1d": 32768, "l3": 32 * 2**20}
    assert read_caches(tmp_path / "absent") == {}


def test_bad_arguments_are_one_line_errors_naming_the_field():
    with pytest.raises(PicojouleError, match=r"field 'caches\.l2'") as info:
        describe_cpu(ZEN3, {"l2": -1}, 2)
    assert "\n" not in str(info.value)
    with pytest.raises(PicojouleError, match="field 'cpus'"):
        describe_cpu(ZEN3, {}, 0)


def test_this_machine():
    """The real /proc/cpuinfo and /sys of this machine: a valid target whose figures follow its flags."""
    t = target_from_dict(detect_host(use_tvm=False), "this machine")
    info = parse_cpuinfo(Path("/proc/cpuinfo").read_text()) if Path("/proc/cpuinfo").is_file() else parse_cpuinfo("")
    lanes = 16 if info.has("avx512f") else 8 if info.has("avx", "avx2") else 4
    assert t.spatial.cols == lanes
    fp32 = t.mode_for(32).peak_macs_per_s
    assert fp32 == pytest.approx(t.spatial.rows * t.clock_hz * lanes * t.spatial.macs_per_pe_per_cycle)
    if info.has("avx512_vnni", "avx512vnni") and not info.has("amx_int8"):
        assert t.peak_macs_per_s(8) == pytest.approx(4 * fp32)
    assert t.tvm.mcpu == mcpu_from_flags(info)


def test_load_target_host_is_this_cpu_and_its_code_runs_here():
    t = load_target("host")
    assert t.name == "host" and t is load_target("host")  # detected once per process
    pytest.importorskip("tvm")
    from picojoule.compilers import tvm_build

    assert tvm_build.missing_isa(tvm_build.tvm_target(t)) == []
    assert tvm_build.host_target().attrs["mcpu"] == t.tvm.mcpu
