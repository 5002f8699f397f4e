"""The digits default model and the evaluation pipeline (accuracy, BN re-estimation, KD fine-tune)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from picojoule.data import ArrayDataset
from picojoule.digits import CACHE_ENV, DigitsCNN, pretrained_digits_cnn
from picojoule.errors import PicojouleError
from picojoule.search.evaluate import accuracy, evaluate, finetune_kd, reestimate_batchnorm

Trained = tuple[nn.Module, ArrayDataset, ArrayDataset]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def first_call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Trained, float, Path]]:
    """The first pretrained_digits_cnn() call (it trains) into an empty cache, and how long it took."""
    cache = tmp_path_factory.mktemp("picojoule_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(cache))
        start = time.perf_counter()
        trained = pretrained_digits_cnn(progress=False)
        yield trained, time.perf_counter() - start, cache


@pytest.fixture
def digits(first_call: tuple[Trained, float, Path]) -> Trained:
    """A fresh copy of the trained model (tests may damage it) with the train and test sets."""
    (model, train, test), _, _ = first_call
    return copy.deepcopy(model), train, test


def damaged(model: nn.Module, scale: float, seed: int = 0) -> nn.Module:
    """A copy with Gaussian noise of ``scale`` x each conv/linear weight's std added to it."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in out.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                w += scale * w.std() * torch.randn(w.shape, generator=gen)
    return out


def test_digits_trains_caches_and_reloads(first_call: tuple[Trained, float, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (model, train, test), train_seconds, cache = first_call
    assert isinstance(model, DigitsCNN) and not model.training
    assert (len(train), len(test)) == (1397, 400)
    assert len(list(cache.glob("digits_cnn_*.pt"))) == 1
    first_acc = accuracy(model, test)
    assert first_acc >= 0.95
    monkeypatch.setenv(CACHE_ENV, str(cache))
    start = time.perf_counter()
    again, _, test2 = pretrained_digits_cnn(progress=False)
    assert time.perf_counter() - start < train_seconds
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert accuracy(again, test2) == first_acc


def test_accuracy_restores_mode_and_counts_correctly(digits: Trained) -> None:
    model, _, test = digits
    model.train()
    acc = accuracy(model, test, batch_size=64)
    assert model.training and 0.95 <= acc <= 1.0
    with torch.no_grad():
        model.eval()
        manual = (model(next(test.batches(len(test)))[0]).argmax(1) == torch.from_numpy(test.y)).float().mean()
    assert acc == pytest.approx(float(manual))


def test_reestimate_batchnorm_recomputes_stats(digits: Trained) -> None:
    model, train, test = digits
    bn1 = model.bn1
    bn1.running_mean.fill_(5.0)
    bn1.running_var.fill_(0.01)
    assert accuracy(model, test) < 0.5
    seen = reestimate_batchnorm(model, train, batches=4, batch_size=128, seed=3)
    assert seen == 512 and not model.training and bn1.momentum == 0.1
    inputs = torch.cat([xb for _, (xb, _) in zip(range(4), train.batches(128, shuffle=True, seed=3))])
    with torch.no_grad():
        expected_mean = model.conv1(inputs).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn1.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    assert accuracy(model, test) >= 0.9


@pytest.mark.parametrize("with_teacher", [True, False])
def test_finetune_repairs_a_damaged_model(digits: Trained, with_teacher: bool) -> None:
    teacher, train, test = digits
    student = damaged(teacher, scale=0.8)
    before = accuracy(student, test)
    report = finetune_kd(student, teacher if with_teacher else None, train, steps=40, lr=0.02, progress=False)
    after = accuracy(student, test)
    assert before < 0.8 and after > before + 0.1, (before, after)
    assert report["steps"] == 40 and report["final_loss"] > 0 and not student.training


def test_evaluate_is_deterministic_under_the_seed(digits: Trained) -> None:
    teacher, train, test = digits
    calls: list[list[torch.Tensor]] = []

    def run(seed: int) -> tuple[dict, nn.Module]:
        model = damaged(teacher, scale=0.5)
        result = evaluate(model, test, calibrate=lambda m, b: calls.append(list(b)), bn_reestimate=True,
                          finetune_steps=15, teacher=teacher, train_data=train, seed=seed)
        return result, model

    (r1, m1), (r2, m2), (_, m3) = run(0), run(0), run(1)
    assert r1["accuracy"] == r2["accuracy"] and r1["finetune"]["steps"] == 15 and r1["bn_images"] > 0
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not torch.equal(m1.conv1.weight, m3.conv1.weight)
    assert len(calls[0]) == 8 and calls[0][0].shape == (128, 1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(calls[0], calls[1]))


def test_evaluate_plain_matches_accuracy(digits: Trained) -> None:
    model, _, test = digits
    result = evaluate(model, test)
    assert result["accuracy"] == accuracy(model, test) and result["finetune"] is None and result["n_test"] == 400


def test_finetune_budgets(digits: Trained) -> None:
    teacher, train, _ = digits
    both = finetune_kd(copy.deepcopy(teacher), teacher, train, steps=3, seconds=60, progress=False)
    assert both["steps"] == 3
    timed = finetune_kd(copy.deepcopy(teacher), teacher, train, seconds=0.3, progress=False)
    assert timed["steps"] >= 1 and 0.3 <= timed["seconds"] < 3
    assert finetune_kd(copy.deepcopy(teacher), None, train, steps=0, progress=False)["steps"] == 0


def test_missing_budget_or_data_give_one_line_errors(digits: Trained) -> None:
    model, train, test = digits
    cases = [
        (lambda: finetune_kd(model, None, train, progress=False), "expected a budget"),
        (lambda: evaluate(model, test, bn_reestimate=True), "bn_reestimate: calib_data or train_data"),
        (lambda: evaluate(model, test, finetune_steps=5), "fine-tune: train_data"),
    ]
    for call, message in cases:
        with pytest.raises(PicojouleError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
