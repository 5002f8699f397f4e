"""The command line, run as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "picojoule", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_targets_json():
    out = run("targets", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert {"cpu-avx512", "v100", "a100", "h100", "tpu-v4", "fpga-zcu102", "edge-npu", "eyeriss"} <= set(rows)
    assert rows["a100"]["peak_tops"]["int8-tensor"] == pytest.approx(624)
    assert rows["eyeriss"]["dram_gb_s"] > 0


def test_cost_json_plot_and_policy(tmp_path):
    policy = tmp_path / "w4a8.yaml"
    policy.write_text(yaml.safe_dump({"default": {"w_bits": 4, "a_bits": 8, "keep": 1.0},
                                      "layers": {"conv1": {"w_bits": 8}, "layer3.0.conv1": {"keep": 0.5}}}))
    png = tmp_path / "cost.png"
    out = run("cost", "resnet20", "--target", "eyeriss", "--cost-model", "eyeriss", "--policy", str(policy),
              "--json", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["model"] == "resnet20" and rep["target"] == "eyeriss"
    assert rep["total"]["macs"] < 40_551_040  # layer3.0.conv1 pruned to half
    assert {"macs", "params", "latency_s", "energy_j", "co2e_g"} <= set(rep["total"])
    assert {"name", "op", "macs", "latency_s", "energy_j", "energy_breakdown_j", "bound"} <= set(rep["layers"][0])
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base = json.loads(run("cost", "resnet20", "--target", "eyeriss", "--cost-model", "eyeriss", "--json").stdout)
    assert rep["total"]["energy_j"] < base["total"]["energy_j"]


def test_cost_table():
    out = run("cost", "resnet20", "--target", "a100")
    assert out.returncode == 0, out.stderr
    assert "layer3.2.conv2" in out.stdout and "40.55 M MACs" in out.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("cost", "resnet20", "--target", "tpu-v9"), "unknown target 'tpu-v9'"),
        (("cost", "resnet99", "--target", "a100"), "unknown zoo model 'resnet99'"),
        (("cost", "missing.onnx", "--target", "a100"), "missing.onnx: ONNX file not found"),
    ],
)
def test_user_errors_are_one_line(args, needle, tmp_path):
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert needle in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_bad_policy_and_target_files(tmp_path):
    bad_policy = tmp_path / "p.yaml"
    bad_policy.write_text("default: {w_bits: 40}\n")
    out = run("cost", "resnet20", "--target", "a100", "--policy", str(bad_policy))
    assert out.returncode == 2 and "w_bits" in out.stderr and str(bad_policy) in out.stderr
    unknown_layer = tmp_path / "q.yaml"
    unknown_layer.write_text("layers: {nope.conv: {keep: 0.5}}\n")
    out = run("cost", "resnet20", "--target", "a100", "--policy", str(unknown_layer))
    assert out.returncode == 2 and "nope.conv" in out.stderr
    target = yaml.safe_load((Path(__file__).parents[1] / "picojoule/hwmodels/targets/a100.yaml").read_text())
    del target["clock_hz"]
    bad_target = tmp_path / "t.yaml"
    bad_target.write_text(yaml.safe_dump(target))
    out = run("cost", "resnet20", "--target", str(bad_target))
    assert out.returncode == 2 and "clock_hz" in out.stderr and str(bad_target) in out.stderr
    assert out.stderr.count("\n") == 1


def test_apply_digits_saves_a_model_that_reloads(tmp_path):
    """The offline default end to end: compress the digits CNN, save it, reload it safely, same accuracy."""
    policy = tmp_path / "p.yaml"
    policy.write_text("default: {w_bits: 4, a_bits: 8}\nlayers:\n  conv2: {keep: 0.5}\n")
    out = run("apply", "digits", "--policy", str(policy), "--out", str(tmp_path / "m.pt"), "--json",
              "--target", "eyeriss")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["accuracy"] > 0.85 and rep["n_test"] == 400
    full = json.loads(run("cost", "digits", "--target", "eyeriss", "--json").stdout)["total"]["macs"]
    assert rep["macs"] < full  # conv2's group kept half its channels
    from picojoule.data import load_dataset
    from picojoule.models import load_compressed
    from picojoule.search.evaluate import accuracy

    model, loaded_policy = load_compressed(tmp_path / "m.pt")
    assert loaded_policy.for_layer("conv2").keep == 0.5
    assert accuracy(model, load_dataset("digits")) == pytest.approx(rep["accuracy"])


def test_apply_errors(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("layers: {layer9.conv: {keep: 0.5}}\n")
    out = run("apply", "digits", "--policy", str(policy))
    assert out.returncode == 2 and "layer9.conv" in out.stderr and out.stderr.count("\n") == 1
    policy.write_text("default: {w_bits: 8}\n")
    out = run("apply", "resnet20", "--policy", str(policy), "--data", str(tmp_path / "none.npz"))
    assert out.returncode == 2 and "none.npz" in out.stderr and "Traceback" not in out.stderr


def test_search_offers_every_strategy_and_backend():
    from picojoule.cli import build_parser
    from picojoule.search.config import STRATEGIES

    for strategy in STRATEGIES:
        assert build_parser().parse_args(["search", "--strategy", strategy]).strategy == strategy
    assert build_parser().parse_args(["search", "--backend", "ray-tune"]).backend == "ray-tune"


def test_the_default_search_finds_a_front_of_five_or_more(tmp_path):
    """`picojoule search` with no config, as the README's quick start runs it: at least 5 feasible policies on the
    front (6 with seed 0 on an Intel Xeon, in about 20 s on a 2-core machine), each shown with its bits and its
    saving."""
    out = run("search", "--out", str(tmp_path / "run"), "--quiet")
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    front = result["front"]
    assert len(front) >= 5 and f"{len(front)} on the feasible Pareto front" in out.stdout
    bound = result["bounds"]["energy <= 0.5 * uniform_int8"]
    winners = {w["objective"]: w["metrics"] for w in result["winners"]}
    assert winners["minimise energy"]["energy"] <= bound and winners["maximise accuracy"]["accuracy_drop"] <= 2
    assert out.stdout.count("x uniform_int8 energy): W 8/") == min(len(front), 8)  # the summary lists the front
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.count("x uniform_int8 energy | `W 8/") == len(front)


def test_strategy_override_drops_the_other_strategys_options(tmp_path):
    """The embedded default gives TPE its startup trials; --strategy ddpg/nsga2 must not inherit them."""
    for strategy in ("ddpg", "nsga2"):
        out = run("search", "--strategy", strategy, "--trials", "3", "--out", str(tmp_path / strategy), "--quiet")
        assert out.returncode == 0, out.stderr
        saved = yaml.safe_load((tmp_path / strategy / "config.yaml").read_text())
        assert saved["strategy"] == strategy and saved["strategy_options"] == {}


# ------------------------------------------------------------------------------------ a user's mistakes (issue 9)


def _npz(path: Path, x_shape: tuple[int, ...], labels: list[int] | None = None) -> Path:
    n = x_shape[0]
    y = np.asarray(labels if labels is not None else [i % 10 for i in range(n)], np.int64)
    np.savez(path, x_test=np.random.default_rng(0).integers(0, 256, x_shape, dtype=np.uint8), y_test=y,
             x_train=np.zeros((n, 32, 32, 3), np.uint8), y_train=np.zeros(n, np.int64))
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in this process: exit status 2 and one line of stderr, without a traceback."""
    from picojoule.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_non_utf8_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfedefault: {w_bits: 8}\n")
    for argv in (["cost", "resnet20", "--target", "a100", "--policy", str(bad)],  # Policy.load
                 ["cost", "resnet20", "--target", str(bad)],  # read_yaml: targets, configs, space overrides
                 ["space", "resnet20", "--target", "a100", "--overrides", str(bad)],
                 ["search", str(bad), "--out", str(tmp_path / "run")],
                 ["policy", str(bad), "--model", "resnet20", "--from", "haq"]):
        assert f"{bad}:" in _one_line_error(capsys, argv)
    assert "not UTF-8 text (byte 0xff at offset 0)" in _one_line_error(capsys, argv)


def test_search_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("a file\n")
    err = _one_line_error(capsys, ["search", "--out", str(out), "--quiet"])
    assert f"{out}: field 'out': expected a directory, found a file" in err
    err = _one_line_error(capsys, ["search", "--resume", str(out)])
    assert f"{out}: field 'resume': expected a directory, found a file" in err
    assert out.read_text() == "a file\n"


@pytest.mark.parametrize("label", [10, -1])
def test_labels_outside_the_models_classes(tmp_path, capsys, label):
    policy = tmp_path / "p.yaml"
    policy.write_text("default: {w_bits: 8, a_bits: 8}\n")
    data = _npz(tmp_path / "d.npz", (16, 32, 32, 3), [label] + [0] * 15)
    err = _one_line_error(capsys, ["apply", "resnet20", "--policy", str(policy), "--data", str(data)])
    assert f"{data}: field 'y_test': expected class ids " in err
    assert ("0..9 (the model has 10 outputs), got 10" if label == 10 else ">= 0, got -1") in err


def test_weights_file_errors_name_field_weights(tmp_path, capsys):
    data = _npz(tmp_path / "d.npz", (16, 32, 32, 3))
    config = tmp_path / "c.yaml"
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"not a torch file")
    for weights in (tmp_path / "missing.th", junk):
        config.write_text(yaml.safe_dump({"model": "resnet20", "weights": str(weights), "data": str(data),
                                          "target": "eyeriss", "trials": 2}))
        err = _one_line_error(capsys, ["search", str(config), "--out", str(tmp_path / "run"), "--quiet"])
        assert f"{config}: field 'weights': {weights}: " in err and "field 'model'" not in err


@pytest.mark.parametrize("shape", [(16, 28, 28), (16, 32, 32, 1)])
def test_image_shape_names_x_test(tmp_path, capsys, shape):
    policy = tmp_path / "p.yaml"
    policy.write_text("default: {w_bits: 8, a_bits: 8}\n")
    data = _npz(tmp_path / "d.npz", shape)
    err = _one_line_error(capsys, ["apply", "resnet20", "--policy", str(policy), "--data", str(data)])
    assert f"{data}: field 'x_test': expected images of shape (N, H, W, 3) or (N, 3, H, W)" in err
    assert f"got {shape}" in err


def test_image_channels_are_checked_against_the_model(tmp_path, capsys):
    """The digits CNN takes one channel: RGB images (which CIFAR's 3-value mean/std accept) do not fit it."""
    policy = tmp_path / "p.yaml"
    policy.write_text("default: {w_bits: 8, a_bits: 8}\n")
    data = _npz(tmp_path / "d.npz", (16, 8, 8, 3))
    err = _one_line_error(capsys, ["apply", "digits", "--policy", str(policy), "--data", str(data)])
    assert f"{data}: field 'x_test': expected images of shape (N, H, W, 1) or (N, 1, H, W)" in err
    assert "got (16, 8, 8, 3)" in err
