"""Calibration of a CPU target against TVM builds timed on this machine, and the compile/calibrate commands."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from picojoule.compilers.calibrate import (fit_efficiency, measure_policies, predict_latency, sample_policies,
                                           write_target_yaml)
from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import OP_KINDS, TARGETS_DIR, Target, load_target
from picojoule.policy import Policy

torch.set_num_threads(1)
tvm = pytest.importorskip("tvm")

from picojoule.compilers import tvm_build  # noqa: E402  (needs tvm)
from picojoule.compilers.calibrate import runnable_tvm_target  # noqa: E402
from picojoule.compilers.commands import _resolve, add_parsers, chosen_policy  # noqa: E402


@pytest.fixture(scope="module")
def graph():
    return build_graph("resnet20")


@pytest.fixture(scope="module")
def zen3() -> Target:
    """The bundled Zen 3 target: analytic tests only (its code needs sse4a, so it is not timed on every CPU)."""
    return load_target("host-znver3")


@pytest.fixture(scope="module")
def this_cpu() -> Target:
    """This machine's CPU, detected: the target for tests that time code here."""
    return load_target("host")


def _truth(target: Target, scale: float, int8_rate: float, overhead: float, exponent: float = 0.0) -> Target:
    """``target`` with its efficiencies x ``scale``, its 8-bit mode at ``int8_rate`` x its peak, ``overhead``
    and channel exponent ``exponent``."""
    c = target.compute
    modes = [m.model_copy(update={"peak_macs_per_s": m.peak_macs_per_s * int8_rate}) if m.bits == 8 else m
             for m in c.modes]
    compute = c.model_copy(update={"efficiency": {k: v * scale for k, v in c.efficiency.items()},
                                   "layer_overhead_s": overhead, "modes": modes, "channel_exponent": exponent})
    return target.model_copy(update={"compute": compute})


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _policy_file(tmp_path: Path, name: str = "keep50.yaml", **default) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"model": "resnet20", "default": default or {"keep": 0.5}}))
    return path


# ------------------------------------------------------------------------------------------ fast


def test_bundled_zen3_target(zen3):
    assert zen3.tvm is not None and zen3.tvm.mcpu == "znver3"
    assert zen3.peak_macs_per_s(8) == pytest.approx(2 * zen3.peak_macs_per_s(32))  # AVX2 int8 ~ 2x fp32
    if tvm_build.host_cpu() == "znver3":
        assert tvm_build.missing_isa(tvm_build.tvm_target(zen3)) == []
        assert runnable_tvm_target(zen3)[0].attrs["mcpu"] == "znver3"


def test_target_code_this_cpu_cannot_run_is_timed_on_the_host():
    tgt, why = runnable_tvm_target(load_target("cpu-avx512"))
    if tvm_build.missing_isa(tvm_build.tvm_target("cpu-avx512")):
        assert tgt.attrs["mcpu"] == tvm_build.native_mcpu() and "avx512" in why and "not on cpu-avx512" in why
    assert runnable_tvm_target(load_target("edge-npu"))[0].attrs["mcpu"] == tvm_build.native_mcpu()


def test_host_target_is_timed_with_its_own_build(this_cpu):
    tgt, why = runnable_tvm_target(this_cpu)
    assert tgt.attrs["mcpu"] == this_cpu.tvm.mcpu and "host's own TVM target" in why


def test_calibrated_host_yaml_is_a_normal_target_file(graph, this_cpu, tmp_path):
    policies = sample_policies(graph, this_cpu, 6, seed=3)
    measured = predict_latency(graph, _truth(this_cpu, 0.04, 0.5, 2e-6), policies)
    calibrated, stats = fit_efficiency(graph, this_cpu, policies, measured, holdout=0)
    loaded = load_target(write_target_yaml(calibrated, tmp_path / "host-calibrated.yaml", stats))
    assert loaded == calibrated and loaded.name == "host-calibrated" and loaded.tvm == this_cpu.tvm


def test_sampled_policies_are_diverse(graph, zen3):
    policies = sample_policies(graph, zen3, 16, seed=0)
    names = [p.meta["name"] for p in policies]
    assert len(set(names)) == 16 and names[:2] == ["fp32", "w8a8"]
    macs = price(graph, zen3, policies).total_macs
    assert macs.max() == macs[0] and macs.max() / macs.min() > 3  # from the full model to heavily pruned
    assert any(lp.rank > 0 for p in policies for lp in p.layers.values())
    assert any(p.for_layer("layer1.0.conv1").w_bits == 32 for p in policies[5:])  # float samples too
    assert [p.meta["name"] for p in sample_policies(graph, zen3, 16, seed=0)] == names


def test_fit_recovers_a_known_target(graph, zen3):
    truth = _truth(zen3, scale=0.03, int8_rate=0.5, overhead=2e-6, exponent=0.4)
    policies = sample_policies(graph, zen3, 20, seed=1)
    measured = predict_latency(graph, truth, policies)
    calibrated, stats = fit_efficiency(graph, zen3, policies, measured, holdout=0.25, seed=0)
    assert stats.n_test == 5 and stats.n_train == 15 and stats.method == "holdout"
    assert stats.mape_before > 0.5 and stats.mape_after < 0.01 and stats.spearman_after == pytest.approx(1.0)
    assert calibrated.compute.efficiency["conv"] == pytest.approx(0.03 * zen3.compute.efficiency["conv"], rel=0.02)
    assert stats.mode_rates["int8-avx2"] == pytest.approx(0.5, rel=0.02)
    assert stats.channel_exponent == pytest.approx(0.4, abs=0.01)
    assert calibrated.compute.channel_exponent == stats.channel_exponent
    assert calibrated.peak_macs_per_s(8) >= calibrated.peak_macs_per_s(32)  # never slower than float
    # the fitted model is the cost model: price() with the calibrated target gives the same latencies
    np.testing.assert_allclose(price(graph, calibrated, policies).total_latency_s,
                               predict_latency(graph, calibrated, policies), rtol=1e-12)
    assert all(0 < v <= 1 for v in calibrated.compute.efficiency.values())


def test_calibrated_yaml_round_trips(graph, zen3, tmp_path):
    policies = sample_policies(graph, zen3, 8, seed=2)
    measured = predict_latency(graph, _truth(zen3, 0.05, 0.6, 1e-6), policies)
    calibrated, stats = fit_efficiency(graph, zen3, policies, measured, holdout=0)  # leave-one-out
    assert stats.method == "loo" and stats.n_test == 8
    path = write_target_yaml(calibrated, tmp_path / "cal.yaml", stats)
    text = path.read_text()
    assert text.startswith("# Calibrated by 'picojoule calibrate'") and "resnet20, 8 policies" in text
    assert "Spearman" in text and stats.date in text
    loaded = load_target(path)
    assert loaded == calibrated and loaded.name == "host-znver3-calibrated"
    assert set(loaded.compute.efficiency) == set(OP_KINDS)
    assert f"MAPE {100 * stats.mape_after:.1f}%" in loaded.compute.source


def test_fit_rejects_bad_input(graph, zen3):
    policies = sample_policies(graph, zen3, 4)
    with pytest.raises(PicojouleError, match="need >= 3 policies") as info:
        fit_efficiency(graph, zen3, policies[:2], [0.01, 0.02])
    assert "\n" not in str(info.value)
    with pytest.raises(PicojouleError, match="holdout"):
        fit_efficiency(graph, zen3, policies, [0.01] * 4, holdout=1.0)
    with pytest.raises(PicojouleError, match="only CPU targets"):
        _run(["calibrate", "--target", "a100", "--model", "resnet20"])


def test_run_directory_gives_its_chosen_policy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    winners = [{"objective": "minimise latency", "trial": 7, "policy": Policy.uniform(8, 8, 0.75).to_dict()},
               {"objective": "maximise accuracy", "trial": 3, "policy": Policy.uniform(8, 8, 0.5).to_dict()}]
    (run / "result.json").write_text(json.dumps({"config": {"model": "resnet20", "weights": "w.th"},
                                                 "winners": winners}))
    policy, model, weights, name, _ = _resolve(run, None, None)
    assert (model, weights, name) == ("resnet20", "w.th", "trial_00007") and policy.default.keep == 0.75
    (run / "result.json").unlink()
    with pytest.raises(PicojouleError, match="not a finished search run"):
        chosen_policy(run)
    with pytest.raises(PicojouleError, match="names no model"):
        _resolve(_anon(tmp_path), None, None)


def _anon(tmp_path: Path) -> Path:
    path = tmp_path / "anon.yaml"
    Policy.uniform(keep=0.5).save(path)
    return path


def test_compile_for_edge_npu_keeps_the_onnx(shared_data, tmp_path, capsys):
    policy = _policy_file(tmp_path, "w8a8.yaml", w_bits=8, a_bits=8)
    out = tmp_path / "npu"
    weights = str(shared_data / "models" / "resnet20_cifar10.th")
    assert _run(["compile", str(policy), "--target", "edge-npu", "--out", str(out), "--weights", weights]) == 0
    err = capsys.readouterr().err
    assert "TVM cannot build for edge-npu" in err and "w8a8.onnx" in err
    assert (out / "w8a8.onnx").is_file() and not list(out.glob("*.so"))
    report = json.loads((out / "w8a8-edge-npu.json").read_text())
    assert report["library"] is None and report["predicted_latency_s"] > 0 and "noise" in report["calibration"]


# ------------------------------------------------------------------------------------------ real builds


@pytest.mark.slow
def test_compile_policy_yaml_writes_onnx_library_and_report(shared_data, this_cpu, tmp_path, capsys):
    policy = _policy_file(tmp_path)
    out = tmp_path / "out"
    weights = str(shared_data / "models" / "resnet20_cifar10.th")
    assert _run(["compile", str(policy), "--target", "host", "--out", str(out), "--weights", weights,
                 "--measure", "--repeat", "3", "--number", "1"]) == 0
    assert "measured latency on this CPU" in capsys.readouterr().out
    report = json.loads((out / "keep50-host.json").read_text())
    assert Path(report["onnx"]).is_file() and Path(report["library"]).stat().st_size > 10_000
    assert report["tvm_target"]["mcpu"] == this_cpu.tvm.mcpu and report["policy"]["default"]["keep"] == 0.5
    assert report["latency_s"] > 0 and report["host_latency_s"] == report["latency_s"]
    assert report["predicted_latency_s"] > 0 and report["tvm_vs_ort_max_abs_diff"] < 1e-3
    assert report["host_prediction_target"] == "host"
    assert report["host_predicted_latency_s"] == report["predicted_latency_s"]


def _foreign_cpu_target(tmp_path: Path) -> Path:
    """cpu-avx512's figures with an mcpu whose instruction sets this CPU lacks (skips if it has every one's)."""
    for mcpu in ("znver3", "sapphirerapids", "znver5", "graniterapids"):  # sse4a, AMX, vp2intersect, AMX-fp16
        if tvm_build.missing_isa(tvm.target.Target({"kind": "llvm", "mcpu": mcpu})):
            break
    else:
        pytest.skip("this CPU runs the code of every candidate mcpu: no foreign CPU to compile for")
    data = yaml.safe_load((TARGETS_DIR / "cpu-avx512.yaml").read_text())
    data.update(name="foreign-cpu", tvm={"kind": "llvm", "mcpu": mcpu})
    path = tmp_path / "foreign-cpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_measure_puts_the_host_prediction_beside_a_timing_on_this_cpu(this_cpu, tmp_path, capsys):
    """Code this CPU cannot run is timed as a build for this CPU, and the prediction beside that timing is the
    host target's, not the foreign CPU's."""
    from picojoule.compilers.report import predicted_latency
    from picojoule.models import load_torch_model

    foreign = _foreign_cpu_target(tmp_path)
    policy = tmp_path / "half.yaml"
    policy.write_text(yaml.safe_dump({"model": "digits", "default": {"keep": 0.5}}))
    out = tmp_path / "out"
    assert _run(["compile", str(policy), "--target", str(foreign), "--out", str(out), "--measure",
                 "--repeat", "3", "--number", "1"]) == 0
    text = capsys.readouterr()
    assert "code does not run here: building for this CPU" in text.err
    assert "predicted latency on this CPU (target host" in text.out
    report = json.loads((out / "half-foreign-cpu.json").read_text())
    assert report["latency_s"] is None and report["host_latency_s"] > 0
    assert report["host_timed_build"].startswith(f"llvm -mcpu={this_cpu.tvm.mcpu}")
    model, example = load_torch_model("digits")
    graph = build_graph(model, example, name="digits")
    pol = Policy.load(policy)
    assert report["predicted_latency_s"] == pytest.approx(predicted_latency(graph, load_target(foreign), pol))
    assert report["host_prediction_target"] == "host"
    assert report["host_predicted_latency_s"] == pytest.approx(predicted_latency(graph, this_cpu, pol))
    assert report["host_predicted_latency_s"] != pytest.approx(report["predicted_latency_s"])


@pytest.mark.slow
def test_calibration_on_measured_resnet20_lowers_the_error(shared_data, graph, this_cpu, tmp_path):
    """8 real policies (5 baselines, 3 samples) built for this CPU and timed; leave-one-out: each predicted
    without it."""
    weights = str(shared_data / "models" / "resnet20_cifar10.th")
    policies = sample_policies(graph, this_cpu, 8, seed=0)
    measured = measure_policies("resnet20", weights, this_cpu, policies, tmp_path, repeat=3, number=1, rounds=2,
                                progress=False)
    assert all(m.error is None and m.measured_s > 0 for m in measured)
    fp32, w8a8, fp32_half = (m.measured_s for m in measured[:3])
    assert fp32_half < 0.5 * fp32  # pruning pays: keep 0.5 is a quarter of the MACs
    assert w8a8 > 0.7 * fp32  # Q/DQ runs as float: no int8 speed-up
    calibrated, stats = fit_efficiency(graph, this_cpu, policies, [m.measured_s for m in measured], holdout=0)
    assert stats.mape_after < 0.5 * stats.mape_before and stats.mape_after < 0.25
    assert stats.spearman_after > 0.8 and stats.spearman_after >= stats.spearman_before
    assert stats.mode_rates[this_cpu.mode_for(8).name] < 0.8  # the fit learns that 8-bit runs near float speed
    assert load_target(write_target_yaml(calibrated, tmp_path / "cal.yaml", stats)) == calibrated


def test_onnxruntime_timings_see_the_integer_kernels(shared_data, graph, this_cpu, tmp_path):
    """The same baselines timed in ONNX Runtime on the integer ONNX compile writes: 8 bits pays there (in TVM's
    untuned code it does not), and the sampled policies carry no 9..16-bit widths (ORT would emulate them)."""
    from picojoule.compilers.calibrate import integer_or_float

    weights = str(shared_data / "models" / "resnet20_cifar10.th")
    policies = [integer_or_float(p) for p in sample_policies(graph, this_cpu, 7, seed=0)]
    assert all(not 8 < b < 32 for p in policies for lp in [p.default, *p.layers.values()]
               for b in (lp.w_bits, lp.a_bits) if b is not None)
    measured = measure_policies("resnet20", weights, this_cpu, policies, tmp_path, repeat=5, number=5, rounds=2,
                                progress=False, runtime="onnxruntime")
    assert all(m.error is None and m.measured_s > 0 and m.onnx.endswith(".ort.onnx") for m in measured)
    fp32, w8a8 = measured[0].measured_s, measured[1].measured_s
    assert w8a8 < 0.8 * fp32  # QLinearConv: about 2x here
    with pytest.raises(PicojouleError, match="field 'runtime'"):
        measure_policies("resnet20", weights, this_cpu, policies[:1], tmp_path, runtime="tensorrt")


def _cli_has(command: str) -> bool:
    from picojoule.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return any(command in a.choices for a in actions)


@pytest.mark.slow
@pytest.mark.skipif(not _cli_has("compile"), reason="picojoule/cli.py does not call commands.add_parsers yet")
def test_cli_compile_subprocess(shared_data, tmp_path):
    policy = _policy_file(tmp_path)
    out = tmp_path / "cli"
    weights = str(shared_data / "models" / "resnet20_cifar10.th")
    proc = subprocess.run([sys.executable, "-m", "picojoule", "compile", str(policy), "--target", "host-znver3",
                           "--out", str(out), "--weights", weights], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} >= {"keep50.onnx", "keep50-host-znver3.so", "keep50-host-znver3.json"}
