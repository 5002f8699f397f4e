"""Export and compilation: real ResNet-20 weights and CIFAR images -> QDQ ONNX -> ONNX Runtime and TVM builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from picojoule.compilers.export import ORT_TOLERANCE, check_onnxruntime, export_onnx, qdq_counts, run_onnxruntime
from picojoule.data import load_npz
from picojoule.errors import PicojouleError
from picojoule.spaces.quantize import calibrate_activations, quantize_model
from picojoule.zoo import build_model

torch.set_num_threads(1)
tvm = pytest.importorskip("tvm")

from picojoule.compilers import tvm_build  # noqa: E402  (needs tvm)
from picojoule.compilers.deploy import deploy  # noqa: E402


@pytest.fixture(scope="module")
def resnet20(shared_data: Path) -> tuple[nn.Module, torch.Tensor]:
    return build_model("resnet20", shared_data / "models" / "resnet20_cifar10.th")


@pytest.fixture(scope="module")
def images(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(32 calibration images from the train split, 8 test images), normalised NCHW."""
    path = shared_data / "cifar10" / "lossless_subset.npz"
    calib = next(load_npz(path, "train").subset(32).batches(32))[0]
    test = next(load_npz(path, "test").subset(8).batches(8))[0]
    return calib, test


def _quantized(model: nn.Module, calib: torch.Tensor, bits: dict[str, tuple[int, int]]) -> nn.Module:
    torch.manual_seed(0)  # repeatable calibration, whatever sampling quantize uses
    q = quantize_model(model, bits)
    calibrate_activations(q, [calib])
    return q


def _uniform(model: nn.Module, w_bits: int, a_bits: int) -> dict[str, tuple[int, int]]:
    return {n: (w_bits, a_bits) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.fixture(scope="module")
def w8a8(resnet20, images, tmp_path_factory) -> tuple[nn.Module, Path]:
    model, example = resnet20
    q = _quantized(model, images[0], _uniform(model, 8, 8))
    return q, export_onnx(q, example, tmp_path_factory.mktemp("w8a8") / "resnet20-w8a8.onnx")


def _int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 initializers feeding DequantizeLinear nodes that read no activation (the weights)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return [onnx.numpy_helper.to_array(inits[n.input[0]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and inits[n.input[0]].dims]


def _assert_close_to_torch(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    diff = check_onnxruntime(model, x, path)  # raises beyond ORT_TOLERANCE x max |output|
    with torch.no_grad():
        expected = model(x).numpy()
    assert (run_onnxruntime(path, x).argmax(1) == expected.argmax(1)).all()
    return diff


def test_float_export_matches_torch(resnet20, images, tmp_path):
    model, example = resnet20
    path = export_onnx(model, example, tmp_path / "fp32.onnx")
    assert qdq_counts(path)["QuantizeLinear"] == 0
    assert check_onnxruntime(model, images[1], path) < 1e-4


def test_w8a8_exports_qdq_and_matches_torch(w8a8, images):
    q, path = w8a8
    counts = qdq_counts(path)
    # 20 layers: one QuantizeLinear per input activation; weights stored as int8, DequantizeLinear only
    assert counts["QuantizeLinear"] == 20 and counts["DequantizeLinear"] == 40 and counts["Clip"] == 0
    assert len(_int8_weights(path)) == 20
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # float sums in another order move a few activations across a rounding boundary: < 2% of the logit range
    assert _assert_close_to_torch(q, path, images[1]) < ORT_TOLERANCE * 40


def test_w4a8_int8_carrier_with_clipped_range(resnet20, images, tmp_path):
    model, example = resnet20
    q = _quantized(model, images[0], _uniform(model, 4, 8))
    path = export_onnx(q, example, tmp_path / "w4a8.onnx")
    weights = _int8_weights(path)
    assert len(weights) == 20
    assert all(w.min() >= -8 and w.max() <= 7 for w in weights)  # 4-bit values inside int8
    assert any(w.min() == -8 or w.max() == 7 for w in weights)
    _assert_close_to_torch(q, path, images[1])


def test_sub8_activations_clip_and_wide_bits_emulate(resnet20, images, tmp_path):
    model, example = resnet20
    bits = _uniform(model, 8, 8) | {"layer1.0.conv1": (4, 4), "layer2.0.conv2": (6, 5), "layer3.1.conv1": (12, 12)}
    q = _quantized(model, images[0], bits)
    path = export_onnx(q, example, tmp_path / "mixed.onnx")
    counts = qdq_counts(path)
    # two sub-8-bit inputs get a Clip before their uint8 QuantizeLinear; the 12-bit layer is emulated in float
    # (its activation clamp is a Clip, its weight a float constant on the 12-bit grid)
    assert counts["QuantizeLinear"] == 19 and counts["DequantizeLinear"] == 38 and counts["Clip"] == 3
    _assert_close_to_torch(q, path, images[1])


def test_uncalibrated_model_is_a_user_error(resnet20, tmp_path):
    model, example = resnet20
    q = quantize_model(model, _uniform(model, 8, 8))
    with pytest.raises(PicojouleError, match="not calibrated"):
        export_onnx(q, example, tmp_path / "x.onnx")


def test_tvm_targets_from_yaml():
    host = tvm_build.host_target()
    assert host.kind.name == "llvm" and host.attrs["mcpu"] == tvm_build.native_mcpu() != "generic"
    assert tvm_build.missing_isa(host) == []
    avx = tvm_build.tvm_target("cpu-avx512")
    assert avx.kind.name == "llvm" and avx.attrs["mcpu"] == "icelake-server"
    cuda = tvm_build.tvm_target("a100", host_mcpu="znver4")
    assert cuda.kind.name == "cuda" and cuda.attrs["arch"] == "sm_80"
    assert cuda.host.kind.name == "llvm" and cuda.host.attrs["mcpu"] == "znver4"


def test_unsupported_target_keeps_onnx_and_says_so(resnet20, tmp_path):
    model, example = resnet20
    with pytest.raises(PicojouleError, match=r"TVM cannot build for edge-npu .*the ONNX artifact is at .*fp32\.onnx"):
        deploy(model, example, "edge-npu", tmp_path, name="fp32")
    assert (tmp_path / "fp32.onnx").is_file()
    report = json.loads((tmp_path / "fp32-edge-npu.json").read_text())
    assert report["library"] is None and "TVM cannot build" in report["error"]


@pytest.mark.slow
def test_tvm_host_build_matches_onnxruntime(w8a8, resnet20, images, tmp_path):
    q, path = w8a8
    _, example = resnet20
    report = deploy(q, example, "host", tmp_path, name="w8a8", repeat=5, number=2)
    assert report["runs_on_host"] and report["latency_s"] > 0
    # TVM and ONNX Runtime sum in other orders too: quantized models differ by rounding flips (measured 0-0.2%)
    bound = ORT_TOLERANCE * np.abs(run_onnxruntime(path, example)).max()
    assert report["tvm_vs_ort_max_abs_diff"] < bound and report["ort_max_abs_diff"] < bound
    assert report["tvm_target"]["mcpu"] == tvm_build.native_mcpu()
    assert json.loads((tmp_path / "w8a8-host.json").read_text())["library"] == report["library"]
    lib = tvm_build.load_library(report["library"])  # the .so reloads and gives ONNX Runtime's answer
    for x in images[1][:4].split(1):  # real CIFAR images
        got, expected = tvm_build.run(lib, x, tvm_build.host_target()), run_onnxruntime(path, x)
        assert np.abs(got - expected).max() < ORT_TOLERANCE * np.abs(expected).max()
        assert got.argmax() == expected.argmax()


@pytest.mark.slow
def test_tvm_builds_for_cpu_avx512(w8a8, resnet20, tmp_path):
    from picojoule.graph import build_graph
    from picojoule.policy import Policy

    q, path = w8a8
    model, example = resnet20
    report = deploy(q, example, "cpu-avx512", tmp_path, name="w8a8", graph=build_graph(model, example),
                    policy=Policy.uniform(8, 8), repeat=5, number=2)
    assert report["tvm_target"]["mcpu"] == "icelake-server" and report["predicted_latency_s"] > 0
    target = tvm_build.tvm_target("cpu-avx512")
    executable = tvm_build.load_library(report["library"])
    if tvm_build.missing_isa(target):  # this CPU has no AVX-512: refused, not an illegal-instruction crash
        assert report["latency_s"] is None and not report["runs_on_host"]
        with pytest.raises(PicojouleError, match="avx512"):
            tvm_build.run(executable, example, target)
    else:
        assert report["latency_s"] > 0
        assert report["tvm_vs_ort_max_abs_diff"] < ORT_TOLERANCE * np.abs(run_onnxruntime(path, example)).max()


@pytest.mark.slow
def test_tvm_builds_for_cuda_without_gpu(w8a8, resnet20, tmp_path):
    _, path = w8a8
    _, example = resnet20
    executable = tvm_build.compile_onnx(path, "a100", tuple(example.shape))
    lib = tvm_build.export_library(executable, tmp_path / "a100.so")
    assert lib.stat().st_size > 100_000
    assert b"__global__" in lib.read_bytes()  # CUDA kernels inside (source: compiled when loaded on a GPU)


@pytest.mark.slow
def test_pruned_model_builds_and_runs_faster(resnet20, images, tmp_path):
    apply = pytest.importorskip("picojoule.spaces.apply")
    from picojoule.graph import build_graph
    from picojoule.policy import Policy

    model, example = resnet20
    graph = build_graph(model, example)
    policy = Policy.uniform(keep=0.5)
    pruned, info = apply.apply_policy(model, example, policy, graph)
    report = deploy(pruned, example, "host", tmp_path, name="keep50", graph=graph, policy=policy, repeat=5, number=2)
    assert report["ort_max_abs_diff"] < 1e-4 and report["tvm_vs_ort_max_abs_diff"] < 1e-4
    full = tvm_build.measure_latency(tvm_build.compile_onnx(export_onnx(model, example, tmp_path / "fp32.onnx"),
                                                            "host", tuple(example.shape)), example, 5, 2)
    assert report["latency_s"] < 0.6 * full  # a quarter of the MACs; measured ~4.5x faster


def test_tuning_refuses_code_this_cpu_cannot_time(w8a8, resnet20):
    _, path = w8a8
    _, example = resnet20
    with pytest.raises(PicojouleError, match="tuning times candidates on this CPU, so code built for cuda"):
        tvm_build.compile_onnx(path, "a100", tuple(example.shape), tune_trials=8)
    with pytest.raises(PicojouleError, match="tune trials must be >= 0"):
        tvm_build.compile_onnx(path, "host", tuple(example.shape), tune_trials=-1)


@pytest.mark.slow
def test_metaschedule_tuned_build_matches_onnxruntime(tmp_path):
    """A few MetaSchedule trials on the digits CNN: tuning records are written, and the tuned library gives
    ONNX Runtime's answer."""
    from picojoule.models import load_torch_model

    model, example = load_torch_model("digits")
    report = deploy(model, example, "host", tmp_path, name="digits", repeat=3, number=2, tune_trials=8)
    assert report["tune_trials"] == 8 and report["tune_cost_model"] in ("xgb", "random")
    records = tmp_path / "digits-host.tuning" / "database_tuning_record.json"
    assert len(records.read_text().splitlines()) >= 1
    assert report["latency_s"] > 0
    bound = ORT_TOLERANCE * np.abs(run_onnxruntime(report["onnx"], example)).max()
    assert report["tvm_vs_ort_max_abs_diff"] < bound


# ------------------------------------------------------------------------------------------ ONNX Runtime integer


@pytest.fixture(scope="module")
def lossless(shared_data: Path):
    path = shared_data / "cifar10" / "lossless_subset.npz"
    return load_npz(path, "train").subset(256), load_npz(path, "test").subset(256)


def _top1(fn, data) -> float:
    correct = sum(int((fn(x).argmax(1) == y.numpy()).sum()) for x, y in data.batches(128))
    return correct / len(data)


def test_integer_onnx_runs_every_conv_as_qlinearconv_and_keeps_top1(w8a8, resnet20, images, lossless, tmp_path):
    from picojoule.compilers import integer_onnx as io
    from picojoule.compilers.integer_onnx import integer_onnx

    q, path = w8a8
    g = io._Graph(onnx.load(str(path)))  # the BatchNorm fold alone: as close to torch as the export itself
    io._fold_batchnorm(g, io.IntegerReport())
    onnx.save(g.model, str(tmp_path / "folded.onnx"))
    assert check_onnxruntime(q, images[1], tmp_path / "folded.onnx") < ORT_TOLERANCE * 40
    calib, test = lossless
    model, report = integer_onnx(onnx.load(str(path)), [x for x, _ in calib.batches(128)])
    out = tmp_path / "w8a8.ort.onnx"
    onnx.save(model, str(out))
    # all 19 convolutions and the 9 residual Adds run as integer kernels in ORT; no float Conv is left
    assert report.kernels.get("QLinearConv") == 19 and report.kernels.get("QLinearAdd") == 9
    assert not {"Conv", "FusedConv", "BatchNormalization"} & set(report.kernels)
    assert report.bn_folded == 19 and report.biases_quantized == 19 and report.quantizers_inserted > 0
    with torch.no_grad():
        fake = _top1(lambda x: q(x).numpy(), test)
    integer = _top1(lambda x: run_onnxruntime(out, x), test)
    assert abs(integer - fake) <= 2 / len(test)  # at most 2 of 256 images change their label


def test_pruned_shortcuts_export_as_constant_gathers_and_run_on_the_integers(resnet20, lossless, tmp_path):
    """A pruned option-A shortcut exports as Slice, Pad and a Gather with constant indices (no ScatterElements or
    shape arithmetic), and in the integer rewrite that data movement runs on the uint8 integers: no dequantize
    before it, no requantize after it, and the labels stay those of the fake-quant model."""
    import picojoule as pj
    from picojoule.compilers import integer_onnx as io

    model, example = resnet20
    calib, test = lossless
    q = pj.compress(model, example, {"default": {"w_bits": 8, "a_bits": 8, "keep": 0.75}}, calib_data=calib)
    path = export_onnx(q, example, tmp_path / "k75.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Gather" in ops and not {"ScatterElements", "Shape", "ConstantOfShape", "Where"} & ops
    integer, report = io.integer_onnx(onnx.load(str(path)), [x for x, _ in calib.batches(128)])
    # two shortcuts, each Slice, Slice, Pad, Gather: all on the integers, and their quantizers gone
    assert report.moves_on_integers == 8 and report.quantizers_dropped == 2
    g = io._Graph(integer)
    movers = [n for n in g.graph.node if n.op_type in ("Slice", "Pad", "Gather")]
    assert len(movers) == 8 and not any(g.op(g.producer.get(n.input[0]), "DequantizeLinear") for n in movers)
    pads = [n for n in movers if n.op_type == "Pad"]
    assert all(g.const(p.input[2]).dtype == np.uint8 for p in pads)  # filled with the zero point
    assert report.kernels.get("QLinearConv") == 19 and report.kernels.get("QLinearAdd") == 9
    out = tmp_path / "k75.ort.onnx"
    onnx.save(integer, str(out))
    with torch.no_grad():
        fake = np.concatenate([q(x).argmax(1).numpy() for x, _ in test.batches(128)])
    got = np.concatenate([run_onnxruntime(out, x).argmax(1) for x, _ in test.batches(128)])
    # 97% measured (48% top-1 without fine-tuning, so many labels are close calls); 97.5% without the moves
    assert (got == fake).mean() >= 0.95


def test_integer_onnx_batchnorm_fold_is_exact_and_sub8_clips_move_after_the_quantizer(resnet20, images, tmp_path):
    from picojoule.compilers import integer_onnx as io

    model, example = resnet20
    q = _quantized(model, images[0], _uniform(model, 4, 4))
    path = export_onnx(q, example, tmp_path / "w4a4.onnx")
    g = io._Graph(onnx.load(str(path)))
    report = io.IntegerReport()
    io._fold_batchnorm(g, report)
    io._move_clips(g, report)
    io._quantize_biases(g, report)
    assert report.bn_folded == 19 and report.clips_moved == 20
    ints = [n for n in g.graph.node if n.op_type == "Clip"]
    assert len(ints) == 20 and all(g.producer[c.input[0]].op_type == "QuantizeLinear" for c in ints)
    assert all(g.const(c.input[2]).dtype in (np.int8, np.uint8) and g.const(c.input[2]) in (7, 15) for c in ints)
    folded = tmp_path / "folded.onnx"
    onnx.save(g.model, str(folded))
    x = images[1]
    base, new = run_onnxruntime(path, x), run_onnxruntime(folded, x)
    # the integers do not change, but float rounding of the folded scales and the int32 bias moves a few
    # activations across a rounding boundary, one step of a 4-bit grid each: the labels stay
    assert (base.argmax(1) == new.argmax(1)).all()
    full, rep = io.integer_onnx(onnx.load(str(path)), [images[0]])
    assert rep.kernels.get("QLinearConv", 0) >= 18 and rep.relus_dropped > 0


def test_deploy_writes_the_ort_artifact_and_compile_cli_runs_it(resnet20, images, shared_data, tmp_path, capsys):
    from picojoule.cli import main

    data = shared_data / "cifar10" / "lossless_subset.npz"
    policy = tmp_path / "w8a8.yaml"
    policy.write_text("version: 1\nmodel: resnet20\ndefault: {w_bits: 8, a_bits: 8}\n")
    weights = shared_data / "models" / "resnet20_cifar10.th"
    assert main(["compile", str(policy), "--weights", str(weights), "--target", "host", "--out", str(tmp_path / "b"),
                 "--backend", "onnxruntime", "--calib-data", str(data), "--measure", "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "b" / "w8a8-host.json").read_text())
    assert report["model"] == "resnet20" and report["backends"] == ["onnxruntime"] and "library" in report
    ort = report["onnxruntime"]
    assert ort["kernels"]["QLinearConv"] == 19 and ort["latency_s"] > 0 and "QLinearConv 19" in out
    artifact = tmp_path / "b" / "w8a8.ort.onnx"
    assert main(["run", str(artifact), "--data", str(data), "--images", "256", "--repeat", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 256 and 0.85 < result["top1"] <= 1 and result["latency_s"] > 0
    assert main(["run", str(tmp_path / "b" / "missing.onnx"), "--data", str(data)]) == 2
    assert "no such artifact" in capsys.readouterr().err
    assert main(["run", str(policy), "--data", str(data)]) == 2
    assert "unknown artifact kind '.yaml'" in capsys.readouterr().err
    assert main(["run", str(artifact), "--data", "digits"]) == 2  # 8x8 images into a CIFAR model
    assert "cannot run on digits" in capsys.readouterr().err


def test_compile_finds_a_search_runs_data_in_its_config_file(tmp_path):
    """result.json leaves the data out; compile RUN_DIR reads the run's config.yaml for it (it used noise)."""
    from picojoule.compilers.commands import _resolve, calibration_batches

    run = tmp_path / "run"
    run.mkdir()
    policy = {"default": {"w_bits": 8, "a_bits": 8}, "layers": {}}
    (run / "result.json").write_text(json.dumps({"config": {"model": "digits"},
                                                 "winners": [{"trial": 3, "policy": policy}]}))
    (run / "config.yaml").write_text("model: digits\ndata: {calibration: digits}\n"
                                     "evaluation: {calibration_images: 64}\n")
    _, spec, _, name, config = _resolve(run, None, None)
    assert spec == "digits" and name == "trial_00003" and config["data"] == {"calibration": "digits"}
    batches, where = calibration_batches(torch.zeros(1, 1, 8, 8), None, config, run)
    assert sum(len(b) for b in batches) == 64 and "data.calibration" in where


def test_compile_calibrates_on_the_runs_own_data(tmp_path):
    from picojoule.compilers.commands import calibration_batches

    example = torch.zeros(1, 1, 8, 8)
    config = {"data": {"calibration": "digits"}, "evaluation": {"calibration_images": 200}}
    batches, where = calibration_batches(example, None, config, tmp_path)
    assert [len(b) for b in batches] == [128, 72] and "data.calibration" in where
    batches, where = calibration_batches(example, None, {}, tmp_path)
    assert "noise" in where
    with pytest.raises(PicojouleError, match=r"field 'data.calibration'"):
        calibration_batches(example, None, {"data": {"calibration": str(tmp_path / "none.npz")}}, tmp_path)


def test_compile_refuses_a_run_whose_linear_layers_took_the_llm_recipe(tmp_path, capsys):
    """compile builds policies with the generic passes: for a run searched under evaluation.linear_quant that
    would be another model than the one measured, so it says so in one line instead."""
    from picojoule.cli import main

    run = tmp_path / "run"
    run.mkdir()
    policy = {"default": {"w_bits": 8, "a_bits": 8}, "layers": {}}
    (run / "result.json").write_text(json.dumps({"config": {"model": "digits", "evaluation": {
        "linear_quant": {"weights": "gptq", "rotate": True}}}, "winners": [{"trial": 0, "policy": policy}]}))
    assert main(["compile", str(run), "--target", "host", "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'evaluation.linear_quant'" in err[0] and str(run) in err[0]
    assert not (tmp_path / "out").exists()
