"""The measured kernel table: pricing from it (pure), the target YAML section, and a real table measured in ONNX
Runtime on this CPU (design policies built, their kernels profiled in context, the whole-model terms fitted)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.kernel_table import KernelEntry, KernelTable, layer_keys
from picojoule.hwmodels.target import load_target
from picojoule.hwmodels.workload import graph_arrays, policy_batch, workload
from picojoule.policy import Policy
from picojoule.zoo import build_model

W8A8 = {"default": {"w_bits": 8, "a_bits": 8}}
CONV1_FLOAT = {"default": {"w_bits": 8, "a_bits": 8}, "layers": {"conv1": {"w_bits": 32, "a_bits": 32}}}


@pytest.fixture(scope="module")
def resnet20():
    model, example = build_model("resnet20")
    return build_graph(model, example, name="resnet20"), example


def _table_for(graph, target, policies, **terms) -> KernelTable:
    """A table with an entry (a distinct, known time) for every kernel key of ``policies``."""
    ga = graph_arrays(graph)
    keys, _ = layer_keys(ga, workload(ga, target, policy_batch(graph, policies)))
    entries = {}
    for key in {k for k in keys.ravel() if k is not None}:
        kind, cin, cout, area, stride, rows, cols, batch, is_int, after = key
        entries[key] = KernelEntry(op=("conv", "depthwise", "linear")[kind], cin=cin, cout=cout, kernel=area,
                                   stride=stride, rows=rows, cols=cols, batch=batch,
                                   precision="int8" if is_int else "float", after="int8" if after else "float",
                                   latency_s=1e-6 * (cin + cout / 10 + (5 if is_int else 0) + (0.5 if after else 0)))
    return KernelTable(runtime="test", measured_on="test", source="made by the test",
                       entries=list(entries.values()), **terms)


def test_covered_layers_take_the_tables_time_and_the_rest_the_models(resnet20):
    graph, _ = resnet20
    host = load_target("cpu-avx512")
    policies = [Policy(), Policy.from_dict(W8A8), Policy.from_dict(CONV1_FLOAT)]
    table = _table_for(graph, host, policies, other_scale=0.5, transition_s=3e-6, offset_s=20e-6)
    bare, priced = price(graph, host, policies), price(graph, host.model_copy(update={"kernels": table}), policies)
    mac = np.array([layer.kind in ("conv", "depthwise", "linear") for layer in graph.layers])
    ga = graph_arrays(graph)
    keys, _ = layer_keys(ga, workload(ga, host, policy_batch(graph, policies)))
    index = table._lookup()
    for i in range(len(policies)):
        expected = np.where(mac, [index.get(k, 0.0) for k in keys[i]], bare.latency_s[i] * 0.5)
        expected[0] += 20e-6
        if i == 2:  # conv1 float, then int8: one transition, charged to the first int8 layer
            expected[np.flatnonzero(mac)[1]] += 3e-6
        np.testing.assert_allclose(priced.latency_s[i], expected, rtol=1e-12)
    # the context is part of the key: layer1.0.conv1 after an int8 conv1 differs from after a float one
    j = [layer.name for layer in graph.layers].index("layer1.0.conv1")
    assert keys[1, j][-1] is True and keys[2, j][-1] is False
    assert priced.latency_s[1, j] != priced.latency_s[2, j] - 3e-6


def test_emulated_widths_are_the_float_kernel_plus_a_transition_and_low_rank_falls_back(resnet20):
    graph, _ = resnet20
    host = load_target("cpu-avx512")
    fp32 = Policy()
    table = _table_for(graph, host, [fp32], transition_s=4e-6)
    t = host.model_copy(update={"kernels": table})
    j = [layer.name for layer in graph.layers].index("layer2.1.conv1")
    emulated = Policy.from_dict({"default": {}, "layers": {"layer2.1.conv1": {"w_bits": 8}}})  # int8 w, float a
    split = Policy.from_dict({"default": {}, "layers": {"layer2.1.conv1": {"rank": 8}}})
    base, emu, low = price(graph, t, [fp32, emulated, split]).latency_s
    # its own quantize-dequantize around a float kernel; its neighbours stay float, so no other transition
    assert emu[j] == pytest.approx(base[j] + 4e-6)
    assert emu.sum() == pytest.approx(base.sum() + 4e-6)
    assert low[j] == pytest.approx(price(graph, host, [split]).latency_s[0, j])  # not in the table: the model


def test_kernel_section_round_trips_through_yaml_and_bad_entries_get_one_line(resnet20, tmp_path):
    from picojoule.compilers.calibrate import write_target_yaml

    graph, _ = resnet20
    host = load_target("cpu-avx512")
    table = _table_for(graph, host, [Policy.from_dict(W8A8)], offset_s=1e-5)
    path = write_target_yaml(host.model_copy(update={"kernels": table, "name": "with-kernels"}),
                             tmp_path / "with-kernels.yaml")
    loaded = load_target(path)
    assert loaded.kernels == table
    np.testing.assert_allclose(price(graph, loaded, [Policy.from_dict(W8A8)]).total_latency_s,
                               price(graph, host.model_copy(update={"kernels": table}),
                                     [Policy.from_dict(W8A8)]).total_latency_s)
    data = yaml.safe_load(path.read_text())
    data["kernels"]["entries"][0]["cin"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(PicojouleError) as err:
        load_target(bad)
    message = str(err.value)
    assert "\n" not in message and "bad.yaml" in message and "kernels" in message and "cin" in message


def test_a_real_table_measured_in_onnxruntime(resnet20, tmp_path):
    """Design policies built as compile builds them and profiled in ORT: every MAC kernel of every build maps to a
    layer, the table covers the design policies whole, and the fit predicts them (out of fold) within 50%."""
    pytest.importorskip("onnxruntime")
    from picojoule.compilers.calibrate import measure_policies
    from picojoule.compilers.kernel_bench import design_policies, fit_kernel_table, measure_kernel_table

    graph, example = resnet20
    host = load_target("host")
    design = design_policies(graph, host, 8, keeps=(1.0, 0.5), seed=1)
    assert [p.meta["name"] for p in design[:4]] == ["int8-keep1", "float-keep1", "int8-keep0.5", "float-keep0.5"]
    built = measure_policies("resnet20", None, host, design, tmp_path, repeat=3, number=2, rounds=1, progress=False,
                             runtime="onnxruntime")
    assert all(m.measured_s for m in built)
    table, info = measure_kernel_table(graph, host, [(m.policy, m.onnx) for m in built], example, (1.0, 0.5),
                                       runs=20, rounds=1, progress=False)
    assert info["policies_profiled"] == 8 and info["observations"] == 8 * 20
    assert all(e.latency_s > 0 for e in table.entries)
    fitted, fit = fit_kernel_table(graph, host, table, [m.policy for m in built], [m.measured_s for m in built],
                                   folds=2)
    assert fit.coverage == 1.0 and fit.n_policies == 8
    assert np.isfinite(fit.mape) and fit.mape < 0.5  # a sanity bound: measured within 4-10% on quiet cores
    assert fitted.offset_s >= 0 and fitted.transition_s >= 0 and len(fitted.entries) == len(table.entries)
    with pytest.raises(PicojouleError, match="at least 4"):
        fit_kernel_table(graph, host, table, [m.policy for m in built[:3]], [m.measured_s for m in built[:3]], folds=2)


def test_calibrate_onnxruntime_writes_a_kernel_table_the_target_prices_with(tmp_path, capsys):
    from picojoule.cli import main

    out = tmp_path / "host-ort.yaml"
    assert main(["calibrate", "--target", "host", "--model", "resnet20", "--runtime", "onnxruntime", "--policies",
                 "6", "--kernel-policies", "8", "--keeps", "1,0.5", "--rounds", "1", "--holdout", "0.5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kernel table:" in printed and "out-of-fold on the 8 design policies" in printed
    target = load_target(out)
    assert target.kernels is not None and "onnxruntime" in target.kernels.runtime
    assert {e.after for e in target.kernels.entries} == {"int8", "float"}
    assert main(["calibrate", "--target", "host", "--model", "resnet20", "--runtime", "onnxruntime",
                 "--keeps", "1,1.5", "--out", str(out)]) != 0
    assert "--keeps: expected comma-separated fractions in (0, 1]" in capsys.readouterr().err
