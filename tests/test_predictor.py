"""The accuracy predictor: policy features, fitting and screening, held-out rank correlation (synthetic accuracies
on a real space, and measured ones on the digits CNN)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import picojoule as pj
from picojoule.digits import DigitsCNN
from picojoule.errors import PicojouleError
from picojoule.search.predictor import AccuracyPredictor, feature_names, holdout_rank_correlation, policy_features
from picojoule.search.projection import knob_capacity
from picojoule.sensitivity import Sensitivity

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = torch.zeros(1, 1, 8, 8)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def space() -> pj.Space:
    """The digits CNN's space on Eyeriss (10 knobs: two of each kind); the weights do not matter to it."""
    torch.manual_seed(0)
    return pj.Space(pj.LayerGraph.from_torch(DigitsCNN().eval(), EXAMPLE), "eyeriss")


def extremes(space: pj.Space) -> tuple[np.ndarray, np.ndarray]:
    """The vectors with every knob at its least and at its greatest capacity."""
    caps = [knob_capacity(k, space) for k in space.knobs]
    return (np.asarray([np.argmin(c) for c in caps], dtype=np.int64),
            np.asarray([np.argmax(c) for c in caps], dtype=np.int64))


WEIGHTS = np.asarray([3.0, 2.0, 1.5, 1.0, 0.5, 2.5, 1.5, 1.0, 0.8, 0.4])


def synthetic(space: pj.Space, vecs: np.ndarray, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """A known monotone function of the capacity features, plus Gaussian noise: a logistic curve of their weighted
    sum between 0.1 and 0.95."""
    caps = policy_features(space, vecs)[:, :space.dim]
    score = caps @ WEIGHTS[:space.dim] / WEIGHTS[:space.dim].sum()
    return 0.1 + 0.85 / (1 + np.exp(-10 * (score - 0.5))) + np.random.default_rng(seed).normal(0, noise, len(vecs))


def fake_sensitivity(space: pj.Space, knobs: list[str] | None = None) -> Sensitivity:
    """A Sensitivity whose loss increase, KL and HAWQ-V3 (w_bits only) are known functions of knob and choice."""
    table = []
    for d, knob in enumerate(space.knobs):
        for i, choice in enumerate(knob.choices):
            row = {"layer": knob.layer, "kind": knob.kind, "choice": choice,
                   "knob": knob.name if knobs is None else knobs[d], "loss_increase": 0.1 * d + 0.01 * i,
                   "kl": 0.2 * d + 0.03 * i, "trace": 1.0, "avg_trace": 1.0}
            if knob.kind == "w_bits" and i > 0:  # a row without hawq_v3 counts 0
                row["hawq_v3"] = 1.0 + 10 * d + i
            table.append(row)
    return Sensitivity("digitscnn", "eyeriss", table, {})


# --------------------------------------------------------------------------------------------- features

def test_features_shape_range_and_aggregates(space):
    vecs = space.sample(np.random.default_rng(0), 500)
    x = policy_features(space, vecs)
    kinds = sorted({k.kind for k in space.knobs})
    assert x.shape == (500, space.dim + len(kinds)) == (500, len(feature_names(space)))
    caps = x[:, :space.dim]
    assert ((caps >= 0) & (caps <= 1)).all()
    low, high = extremes(space)
    assert (policy_features(space, low[None])[0] == 0).all() and (policy_features(space, high[None])[0] == 1).all()
    for d, knob in enumerate(space.knobs):  # the greater the capacity, the greater the feature
        cap = knob_capacity(knob, space)
        order = np.argsort(cap)
        column = [policy_features(space, np.where(np.arange(space.dim) == d, i, high)[None])[0, d] for i in order]
        assert np.all(np.diff(column) > 0), knob.name
    rank = next(d for d, k in enumerate(space.knobs) if k.kind == "rank")
    assert space.knobs[rank].choices[0] == 0  # 0 = no split = full rank, the greatest capacity
    assert policy_features(space, np.where(np.arange(space.dim) == rank, 0, low)[None])[0, rank] == 1
    names = feature_names(space)
    for kind in kinds:
        dims = [d for d, k in enumerate(space.knobs) if k.kind == kind]
        np.testing.assert_allclose(x[:, names.index(f"mean_{kind}_capacity")], caps[:, dims].mean(1))


def test_sensitivity_features_are_the_chosen_rows_summed(space):
    sens = fake_sensitivity(space)
    vecs = space.sample(np.random.default_rng(1), 50)
    x = policy_features(space, vecs, sens)
    assert x.shape == (50, len(feature_names(space)) + 3) and feature_names(space, sens)[-3:] == [
        "sum_loss_increase", "sum_kl", "sum_hawq_v3"]
    for vec, row in zip(vecs, x):
        loss = sum(0.1 * d + 0.01 * i for d, i in enumerate(vec))
        kl = sum(0.2 * d + 0.03 * i for d, i in enumerate(vec))
        hawq = sum(1.0 + 10 * d + i for d, i in enumerate(vec) if space.knobs[d].kind == "w_bits" and i > 0)
        np.testing.assert_allclose(row[-3:], [loss, kl, hawq])
    np.testing.assert_array_equal(x[:, :-3], policy_features(space, vecs))


def test_a_sensitivity_of_another_space_is_a_one_line_error(space):
    names = [k.name for k in space.knobs]
    names[3], names[6] = "ghost.rank", "phantom.a_bits"
    with pytest.raises(PicojouleError, match="knob 'ghost.rank' is not a knob of the space") as err:
        policy_features(space, space.sample(np.random.default_rng(0), 3), fake_sensitivity(space, names))
    assert "\n" not in str(err.value) and "phantom" not in str(err.value)
    with pytest.raises(PicojouleError, match="ghost.rank"):
        AccuracyPredictor(space, fake_sensitivity(space, names))
    partial = fake_sensitivity(space)
    partial.table = [r for r in partial.table if not (r["knob"] == space.knobs[2].name and r["choice"] == 0.5)]
    with pytest.raises(PicojouleError, match=f"no row for knob '{space.knobs[2].name}' at choice 0.5"):
        policy_features(space, space.sample(np.random.default_rng(0), 3), partial)


def test_bad_vectors_are_refused(space):
    with pytest.raises(ValueError, match="choice index out of range"):
        policy_features(space, np.full((2, space.dim), 99))
    with pytest.raises(ValueError, match="columns"):
        policy_features(space, np.zeros((2, space.dim + 1), dtype=np.int64))


# --------------------------------------------------------------------------------------------- fitting

@pytest.mark.parametrize("model", ["gbr", "gp"])
def test_synthetic_accuracy_is_ranked_on_held_out_policies(space, model):
    vecs = space.sample(np.random.default_rng(2), 120)
    result = holdout_rank_correlation(space, vecs, synthetic(space, vecs), model=model, folds=5)
    print(f"synthetic, {model}: held-out Spearman {result['spearman']:.3f}, Kendall {result['kendall']:.3f}, "
          f"n = {result['n']}, {result['folds']} folds")
    assert (result["n"], result["folds"], result["model"]) == (120, 5, model)
    assert result["spearman"] > 0.8 and result["kendall"] > 0.6 and result["spearman_p"] < 1e-6
    assert "proxy_spearman" not in result


def test_scrambled_accuracy_is_not_ranked(space):
    """The same check on accuracies shuffled against their policies finds nothing: it measures, it can fail."""
    vecs = space.sample(np.random.default_rng(2), 120)
    acc = np.random.default_rng(3).permutation(synthetic(space, vecs))
    assert abs(holdout_rank_correlation(space, vecs, acc, model="gbr")["spearman"]) < 0.3


def test_proxy_baseline_carries_its_count(space):
    sens = fake_sensitivity(space)
    vecs = space.sample(np.random.default_rng(4), 40)
    proxy = policy_features(space, vecs, sens)[:, -3]
    acc = 0.9 - 0.1 * proxy + np.random.default_rng(0).normal(0, 1e-6, 40)  # falls as the summed loss rises
    acc[[5, 17]] = np.nan  # failed trials: left out
    result = holdout_rank_correlation(space, vecs, acc, sens, folds=4)
    assert result["n"] == result["proxy_n"] == 38 and result["folds"] == 4
    assert result["proxy_spearman"] > 0.99


def test_gp_is_less_certain_far_from_its_data(space):
    """Fitted on policies of high capacity only, the GP's posterior std at the all-minimum policy exceeds its std
    at the policies it saw."""
    low, high = extremes(space)
    caps = [knob_capacity(k, space) for k in space.knobs]
    top = [np.flatnonzero(c >= np.median(c)) for c in caps]  # each knob's upper half of choices
    rng = np.random.default_rng(5)
    vecs = np.stack([rng.choice(t, 40) for t in top], axis=1)
    predictor = AccuracyPredictor(space, model="gp").fit(vecs, synthetic(space, vecs))
    assert predictor.fitted
    _, at_data = predictor.predict(vecs)
    _, far = predictor.predict(low[None])
    assert far[0] > 2 * at_data.max()
    assert (at_data >= 0).all()


def test_gbr_std_is_the_ensemble_spread_and_the_out_of_bag_error(space):
    vecs = space.sample(np.random.default_rng(6), 60)
    predictor = AccuracyPredictor(space, model="gbr", seed=1).fit(vecs, synthetic(space, vecs))
    mean, std = predictor.predict(vecs[:10])
    regressor = predictor._regressor
    members = np.stack([r.predict(policy_features(space, vecs[:10])) for r in regressor._regressors])
    assert len(members) == predictor.members > 1
    np.testing.assert_allclose(mean, members.mean(0))
    assert 0 < regressor._oob_var < 0.05
    np.testing.assert_allclose(std ** 2, members.var(0) + regressor._oob_var)


@pytest.mark.parametrize("model", ["gbr", "gp"])
def test_two_std_covers_most_held_out_truths(space, model):
    rng = np.random.default_rng(10)
    vecs, fresh = space.sample(rng, 80), space.sample(rng, 300)
    mean, std = AccuracyPredictor(space, model=model).fit(vecs, synthetic(space, vecs)).predict(fresh)
    covered = np.mean(np.abs(synthetic(space, fresh, noise=0.0) - mean) <= 2 * std)
    print(f"{model}: mean +- 2 std covers {covered:.0%} of n = {len(fresh)} held-out noiseless truths")
    assert covered > 0.85


def test_too_few_distinct_policies_is_refused(space):
    vecs = np.repeat(space.sample(np.random.default_rng(7), 7), 3, axis=0)
    predictor = AccuracyPredictor(space).fit(vecs, synthetic(space, vecs))
    assert not predictor.fitted and "7 distinct" in predictor.reason
    assert predictor.screen(vecs, best_so_far=0.9, margin=0.0).all()
    with pytest.raises(PicojouleError, match="not fitted"):
        predictor.predict(vecs)
    more = np.concatenate([vecs, space.sample(np.random.default_rng(8), 1)])
    assert predictor.fit(more, synthetic(space, more)).fitted and predictor.reason is None
    assert not predictor.fit(vecs, synthetic(space, vecs)).fitted  # a refused refit forgets the old fit
    nan = synthetic(space, more)
    nan[-1] = np.nan  # the eighth policy failed: seven measured
    assert not predictor.fit(more, nan).fitted
    with pytest.raises(PicojouleError, match="model: expected one of gbr, gp"):
        AccuracyPredictor(space, model="forest")


@pytest.mark.parametrize("model", ["gbr", "gp"])
def test_screen_keeps_promising_and_rejects_clearly_bad_policies(space, model):
    rng = np.random.default_rng(9)
    vecs = space.sample(rng, 80)
    acc = synthetic(space, vecs)
    predictor = AccuracyPredictor(space, model=model)
    candidates = space.sample(rng, 300)
    assert predictor.screen(candidates, best_so_far=acc.max(), margin=0.02).all()  # not fitted: measure all
    predictor.fit(vecs, acc)
    truth = synthetic(space, candidates, noise=0.0)
    best, margin = acc.max(), 0.05
    mask = predictor.screen(candidates, best_so_far=best, margin=margin)
    assert mask.dtype == bool and mask.shape == (300,)
    bad, good = truth < best - 0.4, truth >= best - margin
    assert bad.sum() > 50 and good.sum() > 5
    print(f"screen, {model}: rejected {np.mean(~mask[bad]):.0%} of {bad.sum()} clearly bad, "
          f"kept {np.mean(mask[good]):.0%} of {good.sum()} good, kept {mask.mean():.0%} overall")
    assert np.mean(~mask[bad]) > 0.9 and np.mean(mask[good]) > 0.9
    low, _ = extremes(space)
    assert not predictor.screen(low[None], best, margin)[0]
    assert predictor.screen(vecs[[np.argmax(acc)]], best, margin)[0]
    assert predictor.screen(candidates, best_so_far=float("nan"), margin=margin).all()  # nothing measured yet
    k0 = predictor.screen(candidates, best, margin, k=0.0)
    assert (k0 <= mask).all()  # the optimism only adds candidates


# --------------------------------------------------------------------------------------------- measured accuracy

def test_measured_digits_accuracy_is_ranked_on_held_out_policies():
    """60 random policies of the trained digits CNN, each applied, repaired and measured on the test split (tens
    of ms each): the predictor, given the measured sensitivity, ranks held-out ones well."""
    from picojoule.digits import pretrained_digits_cnn
    from picojoule.search.evaluate import evaluate_policy

    model, train, test = pretrained_digits_cnn(progress=False)
    graph = pj.LayerGraph.from_torch(model, EXAMPLE)
    space = pj.Space(graph, "eyeriss")
    vecs = space.sample(np.random.default_rng(1), 60)
    acc = np.asarray([evaluate_policy(model, EXAMPLE, space.decode(v), test, graph=graph, calib_data=train)[1]
                      ["accuracy"] for v in vecs])
    assert acc.max() - acc.min() > 0.3  # random policies span a wide range: a ranking is worth having
    sens = pj.sensitivity(model, EXAMPLE, space, train, hessian_iters=0, progress=False)
    for model_kind in ("gbr", "gp"):
        r = holdout_rank_correlation(space, vecs, acc, sens, model=model_kind)
        print(f"digits, {model_kind} + sensitivity: held-out Spearman {r['spearman']:.3f}, Kendall "
              f"{r['kendall']:.3f}, n = {r['n']}; the proxy alone {r['proxy_spearman']:.3f}, n = {r['proxy_n']}")
        assert r["n"] == r["proxy_n"] == 60 and r["spearman"] > 0.5 and r["proxy_spearman"] > 0.3


def test_importing_the_predictor_imports_neither_torch_nor_sklearn():
    probe = ("import json, sys; import picojoule.search.predictor as p; "
             "print(json.dumps([p.__file__, [m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path, loaded = json.loads(out.stdout.splitlines()[-1])
    assert Path(path).resolve().parent == ROOT / "picojoule" / "search"
    assert loaded == []
