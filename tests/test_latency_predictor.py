"""The learned latency predictor: features from the cost model's workload, (mean, std) from the shared regressor,
and the held-out comparison with the roofline, raw and calibrated."""

from __future__ import annotations

import numpy as np
import pytest

from picojoule.compilers.calibrate import integer_or_float, predict_latency, sample_policies
from picojoule.compilers.latency_predictor import FEATURES, LatencyPredictor, compare_on_holdout, latency_features
from picojoule.errors import PicojouleError
from picojoule.graph import build_graph
from picojoule.hwmodels.target import load_target
from picojoule.zoo import build_model


@pytest.fixture(scope="module")
def setting():
    model, example = build_model("resnet20")
    graph = build_graph(model, example, name="resnet20")
    target = load_target("cpu-avx512")
    policies = [integer_or_float(p) for p in sample_policies(graph, target, 48, seed=3)]
    return graph, target, policies


def test_features_count_integer_and_float_work_and_the_transitions(setting):
    graph, target, policies = setting
    x = latency_features(graph, target, policies[:2])  # fp32, then uniform w8a8
    assert x.shape == (2, len(FEATURES))
    f = dict(zip(FEATURES, x.T))
    assert f["int_layers"][0] == 0 and f["float_layers"][0] == 20 and f["int_conv_mmacs"][0] == 0
    assert f["int_layers"][1] == 20 and f["float_conv_mmacs"][1] == 0 and f["transitions"].tolist() == [0, 0]
    mixed = latency_features(graph, target, policies[5:])
    assert (dict(zip(FEATURES, mixed.T))["transitions"] > 0).any()


def test_a_runtime_that_pays_for_transitions_is_learned_where_the_roofline_cannot_follow(setting):
    """Synthetic truth: the roofline's latency, 3x slower in float, plus 20 us per precision transition, with 3%
    noise. The roofline calibrated on the same folds misses what the features see."""
    graph, target, policies = setting
    f = dict(zip(FEATURES, latency_features(graph, target, policies).T))
    roof = predict_latency(graph, target, policies)
    rng = np.random.default_rng(0)
    share_float = f["float_layers"] / 20
    truth = (roof * (1 + 2 * share_float) + 20e-6 * f["transitions"]) * rng.lognormal(0, 0.03, len(policies))
    result = compare_on_holdout(graph, target, policies, truth, folds=4, seed=0)
    assert result["n"] == 48 and min(result["held_out_per_fold"]) >= 8
    learned, calibrated = result["methods"]["gbr"], result["methods"]["calibrated roofline"]
    assert learned["mape"] < 0.25 and learned["spearman"] > 0.9  # measured: gbr 0.15, gp 0.06 (n = 48)
    assert result["methods"]["gp"]["mape"] < 0.12
    assert learned["mape"] < calibrated["mape"]
    assert result["methods"]["gp"]["within_2std"] > 0.6
    predictor = LatencyPredictor(graph, target, "gp").fit(policies, truth)
    mean, std = predictor.predict(policies[:3])
    assert mean.shape == std.shape == (3,) and (std > 0).all()
    with pytest.raises(PicojouleError, match="at least 4"):
        LatencyPredictor(graph, target).fit(policies[:2], truth[:2])
    with pytest.raises(PicojouleError, match="model: expected one of"):
        LatencyPredictor(graph, target, "forest")
    with pytest.raises(PicojouleError, match="need at least 2 per fold"):
        compare_on_holdout(graph, target, policies[:6], truth[:6], folds=4)


def test_readme_latency_predictor_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(from picojoule.compilers.calibrate import integer_or_float.*?)```", readme,
                     re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    assert scope["latency_s"].shape == (4,) and (scope["latency_s"] > 0).all() and (scope["std_log"] > 0).all()
    assert all(m.measured_s > 0 for m in scope["timed"])
