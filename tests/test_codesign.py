"""Hardware parameters, area and power metrics, and `picojoule codesign` end to end (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.area import area_mm2
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.parameters import grid_points, instantiate
from picojoule.hwmodels.target import load_target
from picojoule.policy import Policy
from picojoule.search.constraints import parse_constraint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "codesign-digits.yaml"
BASE = {"array": [12, 14], "glb_bytes": 110592,
        "operand_bits": list(range(1, 17))}  # eyeriss-codesign's own figures: the base point


@pytest.fixture(scope="module")
def r20():
    return build_graph("resnet20")


def test_base_point_prices_as_the_file(r20):
    base = load_target("eyeriss-codesign")
    point = instantiate(base, BASE)
    for model in ("eyeriss", "hierarchy"):
        a, b = (price(r20, t, Policy.uniform(8, 8), model=model) for t in (base, point))
        np.testing.assert_allclose(a.energy_j, b.energy_j, rtol=1e-12)
        np.testing.assert_allclose(a.latency_s, b.latency_s, rtol=1e-12)
    assert area_mm2(point) == pytest.approx(area_mm2(base))
    assert point.parameters is None and point.name != base.name


def test_parameters_follow_their_scaling_rules(r20):
    base = load_target("eyeriss-codesign")
    small, big = (instantiate(base, {**BASE, "array": a}) for a in ([8, 8], [16, 16]))
    assert big.num_pes == 256 and small.num_pes == 64
    assert big.compute.modes[0].peak_macs_per_s == pytest.approx(base.compute.modes[0].peak_macs_per_s * 256 / 168)
    assert big.memory[0].instances == 256  # one register file per PE
    assert area_mm2(small) < area_mm2(base) < area_mm2(big)
    assert big.power.static_w > base.power.static_w  # leakage follows the silicon
    lat = [price(r20, t, Policy.uniform(8, 8), model="hierarchy").total_latency_s[0] for t in (small, big)]
    assert lat[1] < lat[0]
    g_small, g_big = (instantiate(base, {**BASE, "glb_bytes": g}) for g in (32768, 262144))
    assert g_small.memory[2].read_energy_pj_per_bit < base.memory[2].read_energy_pj_per_bit \
        < g_big.memory[2].read_energy_pj_per_bit  # the SRAM rule: bigger arrays cost more per access
    assert area_mm2(g_small) < area_mm2(g_big)
    fewer = instantiate(base, {**BASE, "operand_bits": [8, 16]})  # a shallower fused MAC: cheaper at full width
    assert fewer.compute.modes[0].mac_energy_pj < base.compute.modes[0].mac_energy_pj
    assert area_mm2(fewer) < area_mm2(base)
    assert len(grid_points(base.parameters)) == 27


def test_unknown_parameter_value_is_refused():
    with pytest.raises(PicojouleError, match="'clock_hz' is not one of its parameters"):
        instantiate(load_target("eyeriss-codesign"), {"clock_hz": 1e8})


def test_area_and_power_constraints_parse_and_apply(r20):
    c = parse_constraint("area <= 2 mm2")
    assert (c.metric, c.upper, c.value) == ("area", True, 2.0)
    assert parse_constraint("power <= 300 mW").value == pytest.approx(0.3)
    with pytest.raises(PicojouleError, match="area needs a unit"):
        parse_constraint("area <= 2")
    res = price(r20, "eyeriss", Policy.uniform(8, 8), model="hierarchy")
    assert res.area_mm2 == pytest.approx(area_mm2(load_target("eyeriss")))
    assert res.average_power_w[0] == pytest.approx(res.total_energy_j[0] / res.total_latency_s[0])


def _config(tmp_path: Path, **codesign) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["trials"] = 14
    data["codesign"] = {"strategy": "grid", "points": 3, "trials_per_point": 14, "warm_start": 2, **codesign}
    path = tmp_path / "codesign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_codesign_end_to_end_and_resume(tmp_path):
    from picojoule.search.codesign import run_codesign

    cfg = _config(tmp_path)
    out = tmp_path / "run"
    result = run_codesign(cfg, out, progress=False)
    assert len(result.points) == 3
    done = [p for p in result.points if p.status == "done"]
    assert done and all(p.front for p in done)
    assert result.front, "the joint front is empty"
    for row in result.front:  # each pair carries its hardware's area, and meets the area bound
        point = result.points[row["point"]]
        assert row["metrics"]["area"] == pytest.approx(point.area_mm2)
        assert point.area_mm2 <= 2.5
    for name in ("codesign.md", "codesign_result.json", "codesign_parameters.png", "codesign_front.png",
                 "codesign.json", "accuracy_cache.json"):
        assert (out / name).is_file(), name
    assert (out / "points" / "000" / "journal.log").is_file()
    # accuracy does not depend on the hardware: later points reuse measured policies (warm starts at least)
    assert len(json.loads((out / "accuracy_cache.json").read_text())) > 0
    assert (out / "points" / "000" / "report.md").is_file()  # each point's search leaves its own report
    # an interrupted co-design: the last point's search was under way; resuming finishes it from its journal
    state = json.loads((out / "codesign.json").read_text())
    last = max(i for i, p in enumerate(state["points"]) if p["status"] == "done")
    before = state["points"][last]["front"]
    state["points"][last].update(status="running", front=[])
    (out / "codesign.json").write_text(json.dumps(state))
    again = run_codesign(out / "config.yaml", out, resume=True, progress=False)
    assert [p.status for p in again.points] == [p.status for p in result.points]
    assert [r["trial"] for r in again.points[last].front] == [r["trial"] for r in before]
    with pytest.raises(PicojouleError, match="--resume"):
        run_codesign(cfg, out, progress=False)


@pytest.mark.slow
def test_codesign_cli_with_tpe_over_the_hardware(tmp_path):
    cfg = _config(tmp_path, strategy="tpe", points=3)
    out = tmp_path / "tpe"
    proc = subprocess.run([sys.executable, "-m", "picojoule", "codesign", str(cfg), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "co-design: 3 hardware points" in proc.stdout
    assert (out / "hardware.journal").is_file()  # the hardware study is a real Optuna journal
    doc = json.loads((out / "codesign_result.json").read_text())
    assert len(doc["points"]) == 3


def test_codesign_bad_input_is_one_line(tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    bad = tmp_path / "bad.yaml"
    for mutate, expect in (
        (lambda d: d.__setitem__("target", "eyeriss"), "has no 'parameters' section"),
        (lambda d: d["codesign"].__setitem__("stratgy", "grid"), "field 'codesign.stratgy': unknown field"),
        (lambda d: d["codesign"].__setitem__("strategy", "anneal"), "field 'codesign.strategy'"),
    ):
        d = yaml.safe_load(yaml.safe_dump(data))
        mutate(d)
        bad.write_text(yaml.safe_dump(d))
        proc = subprocess.run([sys.executable, "-m", "picojoule", "codesign", str(bad), "--out", str(tmp_path / "x")],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0] and str(bad) in lines[0], proc.stderr


def test_python_api_cost_only_in_memory():
    """pj.codesign with objects and no storage: cost-only (no accuracy), a random sample of hardware points."""
    import picojoule as pj

    result = pj.codesign("resnet20", target=pj.load_target("eyeriss-codesign"), cost_model="hierarchy",
                         objectives=["minimise energy", "minimise latency"], constraints=["area <= 2.5 mm2"],
                         trials=12, strategy="random", codesign={"strategy": "random", "points": 4}, progress=False)
    assert isinstance(result, pj.CodesignResult) and result.run_dir is None
    assert len(result.points) == 4 and result.front
    searched = [p for p in result.points if p.status == "done"]
    assert all(p.area_mm2 <= 2.5 for p in searched)
    assert all(p.status.startswith("skipped: area") for p in result.points if p not in searched)
    # the joint front holds no pair that another pair beats on energy, latency and area at once
    m = np.asarray([[r["metrics"]["energy"], r["metrics"]["latency"], r["metrics"]["area"]] for r in result.front])
    assert not any(((m <= row).all(1) & (m < row).any(1)).any() for row in m)
