"""Per-layer sensitivity: loss increase and KL per knob choice, Hutchinson Hessian traces, the cache, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import picojoule as pj
from picojoule.cli import main
from picojoule.sensitivity import _Replay, converged, hutchinson_trace, sensitivity, weights_fingerprint


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


# --------------------------------------------------------------------------------------------- a tiny model

def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():  # non-trivial BN statistics
        model.train()(torch.randn(64, 3, 8, 8))
    return model.eval()


def tiny_data(seed: int = 0, n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


TINY_SPACE = {"pin_first_last": False, "defaults": {"w_bits": [2, 8], "a_bits": [4, 32], "keep": [0.5, 1.0],
                                                     "rank_fractions": [0.25], "sparsity": [0, 0.5]}}


def tiny_sensitivity(model=None, data=None, space=TINY_SPACE, **kw):
    model = model if model is not None else tiny_model()
    return sensitivity(model, torch.zeros(1, 3, 8, 8), "eyeriss", data if data is not None else tiny_data(),
                       overrides=space, images=48, calib_images=48, hessian_iters=3, progress=False, **kw)


def test_replay_equals_the_whole_compressed_model(monkeypatch):
    """Swapping one compressed module into the float graph and rerunning from it gives what applying the one-knob
    policy, repairing and running the whole model gives."""
    fast = tiny_sensitivity()
    assert fast.info["replayed"]
    monkeypatch.setattr(_Replay, "trace", classmethod(lambda cls, model, names: None))
    slow = tiny_sensitivity()
    assert not slow.info["replayed"]
    assert [(r["knob"], r["choice"]) for r in fast.table] == [(r["knob"], r["choice"]) for r in slow.table]
    for a, b in zip(fast.table, slow.table):
        assert a["loss_increase"] == pytest.approx(b["loss_increase"], abs=1e-5), a["knob"]
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5), a["knob"]
    kinds = {r["kind"] for r in fast.table if r["loss_increase"] != 0}
    assert kinds == {"w_bits", "a_bits", "keep", "rank", "sparsity"}


def test_object_api():
    sens = pj.sensitivity(tiny_model(), torch.zeros(1, 3, 8, 8), "eyeriss", tiny_data(), overrides=TINY_SPACE,
                          images=48, calib_images=48, hessian_iters=2, progress=False)
    assert isinstance(sens, pj.Sensitivity)
    layer = sens.table[0]["layer"]
    assert sens.loss(layer, "w_bits", 2) == sens._row(layer, "w_bits", 2)["loss_increase"]
    assert sens.loss(layer, "a_bits", 32) == 0.0 and sens.kl(layer, "a_bits", 32) == 0.0
    assert sens.trace(layer) == sens.traces[layer]["trace"]
    frame = sens.to_dataframe()
    assert {"layer", "kind", "choice", "loss_increase", "kl", "trace", "avg_trace", "hawq_v3"} <= set(frame.columns)
    assert len(frame) == len(sens.table)
    w = frame[frame.kind == "w_bits"]
    assert (abs(w.hawq_v3[w.choice == 2].to_numpy()) > abs(w.hawq_v3[w.choice == 8].to_numpy())).all()
    assert repr(sens).startswith("Sensitivity(") and "rows" in repr(sens)
    with pytest.raises(KeyError):
        sens.loss(layer, "w_bits", 5)


# --------------------------------------------------------------------------------------------- Hutchinson

def test_hutchinson_matches_the_exact_trace():
    """A 2-layer MLP with CE loss: the per-layer Hutchinson trace is within 10% of the exact Hessian block trace."""
    torch.manual_seed(0)
    w1, w2 = torch.randn(6, 5) * 0.7, torch.randn(3, 6) * 0.7
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))

    def loss_of(a, b):
        return nn.functional.cross_entropy(torch.tanh(x @ a.T) @ b.T, y)

    exact = torch.autograd.functional.hessian(loss_of, (w1, w2))
    traces_exact = [float(torch.einsum("ijij->", exact[0][0])), float(torch.einsum("ijij->", exact[1][1]))]
    p1, p2 = w1.clone().requires_grad_(True), w2.clone().requires_grad_(True)
    traces, iterations = hutchinson_trace(loss_of(p1, p2), [p1, p2], max_iters=2000, tol=1e-4, seed=0)
    assert iterations > 10
    for est, ref in zip(traces, traces_exact):
        assert est == pytest.approx(ref, rel=0.1)


def test_convergence_uses_the_absolute_change():
    """A falling estimate (10 -> 5) has a signed relative change of -0.5 < tol: that is not convergence."""
    assert not converged([10.0], [5.0], tol=1e-3)
    assert not converged([10.0, 1.0], [10.0, 0.5], tol=1e-3)  # every estimate must settle
    assert converged([10.0], [10.001], tol=1e-3)
    assert converged([-4.0], [-4.0001], tol=1e-3)


def test_hutchinson_does_not_stop_on_a_falling_estimate():
    """H = diag(100, 0, ..., 0) plus a large off-diagonal part: v^T H v swings, and the loop goes on while the
    running mean falls (a signed test stops at the first fall)."""
    torch.manual_seed(1)
    a = torch.randn(8, 8)
    h = a @ a.T - 5 * torch.eye(8)  # indefinite: single estimates swing both ways
    w = torch.zeros(8, requires_grad=True)
    traces, iterations = hutchinson_trace(0.5 * w @ h @ w + 0 * w.sum(), [w], max_iters=400, tol=1e-3, seed=3)
    assert iterations > 20
    assert traces[0] == pytest.approx(float(h.trace()), rel=0.25)


# --------------------------------------------------------------------------------------------- cache

def test_cache_reused_and_recomputed_for_other_inputs(tmp_path, capsys):
    first = tiny_sensitivity(cache_dir=tmp_path)
    doc = json.loads((tmp_path / "sensitivity.json").read_text())
    assert doc["info"]["key"]["weights"] == weights_fingerprint(tiny_model())
    assert not first.cached
    again = tiny_sensitivity(cache_dir=tmp_path)
    assert again.cached and again.table == first.table
    assert capsys.readouterr().err == ""

    other_model = tiny_sensitivity(model=tiny_model(seed=1), cache_dir=tmp_path)
    assert not other_model.cached and "weights differs" in other_model.note
    assert "weights differs" in capsys.readouterr().err
    tiny_sensitivity(cache_dir=tmp_path)  # back to the first
    other_data = tiny_sensitivity(data=tiny_data(seed=1), cache_dir=tmp_path)
    assert not other_data.cached and "data differs" in other_data.note
    tiny_sensitivity(cache_dir=tmp_path)
    narrower = {**TINY_SPACE, "defaults": {**TINY_SPACE["defaults"], "w_bits": [2, 4, 8]}}
    other_space = tiny_sensitivity(space=narrower, cache_dir=tmp_path)
    assert not other_space.cached and "space differs" in other_space.note
    other_settings = tiny_sensitivity(space=narrower, cache_dir=tmp_path, seed=1)
    assert not other_settings.cached and other_settings.note  # the seed draws another sample
    (tmp_path / "sensitivity.json").write_text("{not json")
    broken = tiny_sensitivity(cache_dir=tmp_path)
    assert not broken.cached and "unreadable" in broken.note


def test_bad_data_is_one_line():
    with pytest.raises(pj.PicojouleError, match="labels"):
        tiny_sensitivity(data=(torch.randn(64, 3, 8, 8), torch.full((64,), 7)))
    with pytest.raises(pj.PicojouleError, match="data"):
        tiny_sensitivity(data=42)


# --------------------------------------------------------------------------------------------- ResNet-20

R20_SPACE = {
    "pin_first_last": False,
    "defaults": {"w_bits": [2, 8], "a_bits": [8], "keep": [0.25, 0.875, 1.0], "rank": [0], "sparsity": [0]},
    "layers": {pattern: {"exclude": True} for pattern in
               ("layer1.*", "layer2.0.*", "layer2.2.*", "layer3.0.*", "layer3.1.*", "layer3.2.conv1", "linear")},
}


@pytest.fixture(scope="module")
def r20(shared_data, resnet20_state):
    from picojoule.data import load_dataset
    from picojoule.zoo import build_model

    torch.set_num_threads(1)
    model, example = build_model("resnet20")
    model.load_state_dict(resnet20_state)
    train = load_dataset({"source": str(shared_data / "cifar10" / "lossless_subset.npz"), "split": "train"})
    return sensitivity(model.eval(), example, "eyeriss", train, overrides=R20_SPACE, images=512, hessian_iters=0,
                       progress=False)


@pytest.mark.slow
def test_resnet20_sensitivities_are_sane(r20):
    """On the pretrained ResNet-20 and real CIFAR-10 training images: 2-bit weights hurt more than 8-bit on every
    layer; the first conv at 2 bits hurts more than middle layers at 2 bits; keeping a quarter of a group's
    channels hurts more than keeping seven eighths."""
    for layer in ("conv1", "layer2.1.conv1", "layer2.1.conv2", "layer3.2.conv2"):
        assert r20.loss(layer, "w_bits", 2) > r20.loss(layer, "w_bits", 8) + 1e-3, layer
        assert r20.kl(layer, "w_bits", 2) > r20.kl(layer, "w_bits", 8), layer
    assert abs(r20.loss("conv1", "w_bits", 8)) < 2e-3
    for middle in ("layer2.1.conv2", "layer3.2.conv2"):
        assert r20.loss("conv1", "w_bits", 2) > 2 * r20.loss(middle, "w_bits", 2), middle
    assert r20.loss("layer2.1.conv1", "keep", 0.25) > r20.loss("layer2.1.conv1", "keep", 0.875) + 1e-2


# --------------------------------------------------------------------------------------------- the CLI

@pytest.mark.slow
def test_cli_writes_json_and_png_and_prints_the_table(shared_data, tmp_path, capsys):
    import yaml

    overrides = tmp_path / "space.yaml"
    overrides.write_text(yaml.safe_dump({**R20_SPACE, "defaults": {**R20_SPACE["defaults"], "keep": [0.5, 1.0]}}))
    out = tmp_path / "sens"
    args = ["sensitivity", "resnet20", "--weights", str(shared_data / "models" / "resnet20_cifar10.th"),
            "--data", str(shared_data / "cifar10" / "lossless_subset.npz"), "--target", "eyeriss",
            "--overrides", str(overrides), "--images", "64", "--hessian-iters", "2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "loss incr." in printed and "Hessian tr" in printed and "layer2.1.conv1" in printed
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "sensitivity.json").read_text())
    assert doc["model"] == "resnet20" and doc["target"] == "eyeriss" and doc["info"]["hessian_iterations"] == 2
    assert len(printed.splitlines()) == len(doc["table"]) + 3
    assert main([*args, "--json"]) == 0  # from the cache
    assert json.loads(capsys.readouterr().out)["table"] == doc["table"]


def test_cli_bad_data_path_is_one_line(tmp_path, capsys):
    code = main(["sensitivity", "digits", "--data", str(tmp_path / "missing.npz"), "--target", "eyeriss",
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.npz" in err
