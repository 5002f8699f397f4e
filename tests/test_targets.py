"""The bundled hardware targets: they load, they are physically consistent, and bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from picojoule.errors import PicojouleError
from picojoule.hwmodels.target import TARGETS_DIR, load_target, load_target_file, target_names

REQUIRED = ("cpu-avx512", "v100", "a100", "h100", "tpu-v4", "fpga-zcu102", "edge-npu", "eyeriss")
ALL = tuple(target_names())
BASE = TARGETS_DIR / "a100.yaml"  # a full real file: GPU, several modes, four memory levels


# ---------------------------------------------------------------------------------------------
# Every bundled file loads and is named after its file


def test_required_targets_exist():
    missing = sorted(set(REQUIRED) - set(ALL))
    assert not missing, f"missing targets: {missing}"


@pytest.mark.parametrize("name", ALL)
def test_loads_and_name_matches_file(name):
    t = load_target(name)
    assert t.name == name
    assert load_target(TARGETS_DIR / f"{name}.yaml") == t  # by path too


# ---------------------------------------------------------------------------------------------
# Physical consistency


@pytest.mark.parametrize("name", ALL)
def test_spatial_array_matches_widest_mode_peak(name):
    """rows x cols x MACs/PE/cycle x clock reproduces the widest mode's datasheet peak (within 2x)."""
    t = load_target(name)
    widest = t.compute.modes[-1]
    array_rate = t.spatial.rows * t.spatial.cols * t.spatial.macs_per_pe_per_cycle * t.clock_hz
    ratio = array_rate / widest.peak_macs_per_s
    assert 0.5 <= ratio <= 2.0, (
        f"{name}: array {array_rate:.3g} MAC/s vs {widest.name} peak {widest.peak_macs_per_s:.3g}"
    )


@pytest.mark.parametrize("name", ALL)
def test_narrower_modes_are_not_slower(name):
    """A mode for narrower operands never has a lower peak than a wider one (else it would not be listed)."""
    modes = load_target(name).compute.modes
    for narrow, wide in zip(modes, modes[1:]):
        assert narrow.peak_macs_per_s >= wide.peak_macs_per_s, f"{name}: {narrow.name} slower than {wide.name}"


@pytest.mark.parametrize("name", ALL)
def test_mode_energy_increases_with_bits(name):
    modes = load_target(name).compute.modes
    assert [m.bits for m in modes] == sorted({m.bits for m in modes})
    for narrow, wide in zip(modes, modes[1:]):
        assert narrow.mac_energy_pj < wide.mac_energy_pj, f"{name}: {narrow.name} >= {wide.name} energy"


@pytest.mark.parametrize("name", ALL)
def test_memory_energy_increases_outward_and_dram_costs_most(name):
    t = load_target(name)
    *on_chip, dram = t.memory
    assert dram.capacity_bytes is None
    for level in on_chip:
        assert dram.read_energy_pj_per_bit > level.read_energy_pj_per_bit, f"{name}: {level.name} >= DRAM"
        assert dram.write_pj_per_bit > level.write_pj_per_bit
    for inner, outer in zip(t.memory, t.memory[1:]):
        assert inner.read_energy_pj_per_bit < outer.read_energy_pj_per_bit, f"{name}: {inner.name} -> {outer.name}"


@pytest.mark.parametrize("name", ALL)
def test_memory_bandwidth_does_not_grow_outward(name):
    levels = load_target(name).memory
    for inner, outer in zip(levels, levels[1:]):
        assert inner.bandwidth_bytes_per_s >= outer.bandwidth_bytes_per_s, f"{name}: {inner.name} -> {outer.name}"


@pytest.mark.parametrize("name", ALL)
def test_native_bits_are_covered_by_a_mode(name):
    t = load_target(name)
    for bits in t.compute.native_bits:
        assert t.peak_macs_per_s(bits) > 0


def test_selected_datasheet_figures():
    """Spot checks that the datasheet ops/s were halved into MACs/s, not copied."""
    assert load_target("a100").peak_macs_per_s(16) == pytest.approx(312e12 / 2)
    assert load_target("a100").dram.bandwidth_bytes_per_s == pytest.approx(1555e9)
    assert load_target("v100").peak_macs_per_s(32) == pytest.approx(15.7e12 / 2)
    assert load_target("h100").peak_macs_per_s(8) == pytest.approx(1978.9e12 / 2)
    assert load_target("tpu-v4").peak_macs_per_s(16) == pytest.approx(275e12 / 2)
    assert load_target("edge-npu").peak_macs_per_s(8) == pytest.approx(4e12 / 2)
    assert load_target("edge-npu").compute.native_bits == [8]
    cpu = load_target("cpu-avx512")
    assert cpu.peak_macs_per_s(8) == pytest.approx(4 * cpu.peak_macs_per_s(32))  # VNNI = 4x fp32
    assert cpu.tvm is not None and cpu.tvm.kind == "llvm"
    for gpu, arch in (("v100", "sm_70"), ("a100", "sm_80"), ("h100", "sm_90")):
        t = load_target(gpu)
        assert t.tvm is not None and t.tvm.kind == "cuda" and t.tvm.arch == arch
    for name in ("tpu-v4", "fpga-zcu102", "edge-npu"):
        assert load_target(name).tvm is None
    assert load_target("a100").sparsity.skips == "2:4"
    assert load_target("v100").sparsity.skips == "none"


# ---------------------------------------------------------------------------------------------
# Malformed files: one-line errors naming the file and the field


def _base() -> dict:
    return yaml.safe_load(BASE.read_text())


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _error(path: Path) -> str:
    with pytest.raises(PicojouleError) as info:
        load_target_file(path)
    msg = str(info.value)
    assert "\n" not in msg, f"multi-line error: {msg!r}"
    assert str(path) in msg
    return msg


def _drop_clock(d):
    del d["clock_hz"]


def _string_clock(d):
    d["clock_hz"] = "fast"


def _string_bandwidth(d):
    d["memory"][1]["bandwidth_bytes_per_s"] = "lots"


def _efficiency_too_high(d):
    d["compute"]["efficiency"]["conv"] = 1.5


def _dram_with_capacity(d):
    d["memory"][-1]["capacity_bytes"] = 40e9


def _unknown_field(d):
    d["frobnication"] = 3


def _unknown_nested_field(d):
    d["spatial"]["diagonals"] = 2


def _list_for_mapping(d):
    d["spatial"] = [108, 4, 16]


def _modes_out_of_order(d):
    d["compute"]["modes"].reverse()


def _missing_efficiency_kind(d):
    del d["compute"]["efficiency"]["depthwise"]


@pytest.mark.parametrize(
    "corrupt, fields",
    [
        (_drop_clock, ["clock_hz"]),
        (_string_clock, ["clock_hz"]),
        (_string_bandwidth, ["memory.1.bandwidth_bytes_per_s"]),
        (_efficiency_too_high, ["compute", "efficiency"]),
        (_dram_with_capacity, ["memory", "capacity_bytes"]),
        (_unknown_field, ["frobnication"]),
        (_unknown_nested_field, ["spatial.diagonals"]),
        (_list_for_mapping, ["spatial"]),
        (_modes_out_of_order, ["compute", "modes"]),
        (_missing_efficiency_kind, ["compute", "depthwise"]),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_malformed_field_names_file_and_field(tmp_path, corrupt, fields):
    data = _base()
    corrupt(data)
    msg = _error(_write(tmp_path, data))
    for field in fields:
        assert field in msg, f"{field!r} not in {msg!r}"


def test_unmodified_copy_loads(tmp_path):
    """The corruption tests start from a valid file: an untouched round-trip copy must load."""
    assert load_target_file(_write(tmp_path, _base())).name == "a100"


def test_invalid_yaml_syntax(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: a100\nclock_hz: [1.41e+9\nkind: gpu\n")
    msg = _error(path)
    assert "YAML" in msg and "line" in msg


def test_list_instead_of_mapping(tmp_path):
    msg = _error(_write(tmp_path, [_base()]))
    assert "mapping" in msg and "list" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(PicojouleError, match="not found"):
        load_target(path)


def test_malformed_file_by_path_through_load_target(tmp_path):
    data = _base()
    del data["clock_hz"]
    path = _write(tmp_path, data)
    with pytest.raises(PicojouleError) as info:
        load_target(str(path))
    msg = str(info.value)
    assert "\n" not in msg and path.name in msg and "clock_hz" in msg


def test_unknown_target_lists_known_names():
    with pytest.raises(PicojouleError) as info:
        load_target("no-such-chip")
    msg = str(info.value)
    assert "\n" not in msg and "no-such-chip" in msg
    for name in REQUIRED:
        assert name in msg
