"""The things a search works on -- model, layer graph, target, space, data and the evaluator -- built from objects
(:func:`make_problem`, what :func:`picojoule.search` calls) or loaded from a config (:func:`build_problem`, which
loads them and then calls :func:`make_problem`).

Every loading error is re-raised as one line naming the config file and the field it came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from picojoule.data import ArrayDataset, load_dataset
from picojoule.errors import PicojouleError, WeightsError
from picojoule.graph import LayerGraph, build_graph
from picojoule.hwmodels.common import CostResult
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.scales import ScaleFormat
from picojoule.hwmodels.target import Target, load_target
from picojoule.policy import PolicyBatch
from picojoule.search.config import (DIGITS, VALIDATION_IMAGES, CarveConfig, EvaluationConfig, Objective,
                                      SearchConfig, SearchSettings)
from picojoule.search.constraints import ConstraintProgram
from picojoule.search.evaluate import InputBatches, Metric, check_data, evaluate, evaluate_policy
from picojoule.search.metrics import cost_metrics
from picojoule.policy import Policy
from picojoule.spaces.space import Space

CALIB_BATCH = 128  # evaluate() draws activation-calibration batches of this size


@contextmanager
def _field(source: str, field: str) -> Iterator[None]:
    """Prefix a PicojouleError raised inside with the config file and field."""
    try:
        yield
    except PicojouleError as e:
        raise PicojouleError(f"{source}: field '{field}': {e}") from None


@dataclass
class Datasets:
    test: ArrayDataset | None  # None: a metric callable measures the model (test_metric, if any, reports)
    calibration: ArrayDataset | InputBatches | None
    train: ArrayDataset | None = None
    validation: ArrayDataset | None = None  # what selects; None: a metric callable measures the model
    #: how the validation split was made: {"from": split, "indices": drawn indices into it, "seed"}; None: given
    carved: dict[str, Any] | None = None


def carve_indices(n: int, images: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation indices, the rest), both sorted: ``images`` (default min(1000, n // 2)) of ``n`` drawn at
    random under ``seed``."""
    take = min(VALIDATION_IMAGES, n // 2) if images is None else images
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:take]), np.sort(order[take:])


def load_data(config: SearchConfig, source: str = "config") -> Datasets:
    """The test, validation, calibration and train splits the config names; a carved validation split is drawn
    with the config's seed and removed from every split loaded from the same spec as the one it is drawn from."""
    data = config.data_config
    if data is None:
        raise PicojouleError(f"{source}: field 'data': required to measure accuracy")
    carve = data.validation if isinstance(data.validation, CarveConfig) else None
    names = ("test", "calibration", "train") if carve else ("test", "calibration", "train", "validation")
    loaded: dict[str, ArrayDataset | None] = {}
    for split in names:
        spec = getattr(data, split)
        if spec is None:
            loaded[split] = None
            continue
        cached = next((loaded[s] for s in loaded if getattr(data, s) == spec), None)
        with _field(source, f"data.{split}"):
            loaded[split] = cached if cached is not None else load_dataset(spec)
    if carve is None:
        return Datasets(**loaded)  # type: ignore[arg-type]
    origin = "calibration" if carve.carve == "train" and data.train is None else carve.carve
    pool = loaded[origin]
    assert pool is not None
    if carve.images is not None and carve.images >= len(pool):
        raise PicojouleError(f"{source}: field 'data.validation.images': {carve.images} images would leave none "
                             f"of the {len(pool)} in data.{origin}")
    drawn, rest = carve_indices(len(pool), carve.images, config.seed)
    for split in names:  # every split read from the origin's spec loses the drawn images
        if loaded[split] is not None and getattr(data, split) == getattr(data, origin):
            loaded[split] = loaded[split].subset(rest)
    return Datasets(**loaded, validation=pool.subset(drawn),  # type: ignore[arg-type]
                    carved={"from": origin, "indices": drawn, "seed": config.seed})


def load_model(config: SearchConfig, source: str = "config") -> tuple[nn.Module | None, torch.Tensor | None]:
    """(model in eval mode, example input of batch 1); (None, None) for an .onnx model (cost only)."""
    if config.model.endswith(".onnx"):
        return None, None
    from picojoule.models import load_torch_model

    try:
        return load_torch_model(config.model, config.weights)
    except WeightsError as e:
        raise PicojouleError(f"{source}: field 'weights': {e}") from None
    except PicojouleError as e:
        raise PicojouleError(f"{source}: field 'model': {e}") from None


class Evaluator:
    """Accuracy of a policy, by :func:`picojoule.search.evaluate.evaluate_policy` (apply, re-estimate BatchNorm
    if pruned, calibrate activations, optionally fine-tune, then measure). ``split="validation"`` (what the search
    selects on) measures ``metric(compressed model)`` or else top-1 on the validation split; ``split="test"`` (the
    report, after the search) ``test_metric`` or else top-1 on the test split. Holds the model and data once (a
    Ray actor wraps it). Deterministic under ``seed``: the activation observers sample with torch's global RNG,
    so it is forked and seeded around each evaluation (both splits see the same compressed model)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, graph: LayerGraph, data: Datasets,
                 evaluation: EvaluationConfig, seed: int = 0, metric: Metric | None = None,
                 test_metric: Metric | None = None, cache: dict | None = None):
        self.model, self.example, self.graph, self.cfg, self.seed = model, example, graph, evaluation, seed
        #: measurements kept across searches of one model (co-design: the accuracy of a policy does not depend on
        #: the hardware it is priced on), keyed by the policy's layers, the split and the rung
        self.cache = cache
        self.metric, self.test_metric = metric, test_metric
        test = data.test
        self.test = test.subset(evaluation.test_images) if test is not None and evaluation.test_images else test
        self.validation, self.calib, self.train = data.validation, data.calibration, data.train

    def __repr__(self) -> str:
        return f"Evaluator({type(self.model).__name__}, metric={getattr(self.metric, '__name__', 'top-1')})"

    @property
    def has_test(self) -> bool:
        """Whether a test measurement exists (a test split, or a test metric)."""
        return self.test_metric is not None or self.test is not None

    def _split(self, split: str) -> tuple[ArrayDataset | None, Metric | None]:
        data, metric = (self.test, self.test_metric) if split == "test" else (self.validation, self.metric)
        if data is None and metric is None:
            raise PicojouleError(f"no {split} data or metric to measure accuracy on")
        return data, metric

    def _compressed(self, policy: Policy, split: str, finetune_steps: int, finetune_seconds: float | None,
                    augment: bool = False, progress: bool = False, images: int | None = None,
                    finetune_options: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """evaluate_policy's (compressed model, result) of ``policy`` measured on ``split`` (its first ``images``
        when given and the split is data), under the seed."""
        data, metric = self._split(split)
        if images is not None and metric is None and data is not None:
            data = data.subset(images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return evaluate_policy(
                self.model, self.example, policy, data, metric=metric, graph=self.graph,
                calib_data=self.calib, train_data=self.train,
                calib_batches=math.ceil(self.cfg.calibration_images / CALIB_BATCH),
                finetune_steps=finetune_steps, finetune_seconds=finetune_seconds, augment=augment, seed=self.seed,
                progress=progress, finetune_options=finetune_options,
                linear_quant=self.cfg.linear_quant.recipe() if self.cfg.linear_quant is not None else None)

    def __call__(self, policy: Policy, split: str = "validation", rung: int = -1) -> dict[str, Any]:
        """``{"accuracy", "seconds", "images", "finetune_steps"}`` of ``policy`` on ``split`` (validation or test) at
        fidelity ``rung`` (an index into ``evaluation.rungs``; -1: the full measurement). A rung's ``images`` take
        the first N validation images (the test split is always measured whole); its fine-tune is repeated as it
        was for the validation measurement (same steps, same seed), so both splits see the same model."""
        key = None
        if self.cache is not None:
            layers = policy.to_dict()
            key = json.dumps([layers["default"], layers["layers"], split, rung], sort_keys=True)
            if key in self.cache:  # measured for another hardware point: no images, no time spent
                return {**self.cache[key], "seconds": 0.0, "images": 0, "cached": True}
        step = self.cfg.rungs[rung]
        _, result = self._compressed(policy, split, step.finetune_steps, step.finetune_seconds,
                                     images=step.images if split != "test" else None)
        steps = (result.get("finetune") or {}).get("steps", 0)
        out = {"accuracy": result["accuracy"], "seconds": result["seconds"],
               "images": result.get("n_test"),
               "finetune_steps": steps}
        if key is not None:
            self.cache[key] = out
        return out

    def finetuned(self, policy: Policy, steps: int | None, seconds: float | None, augment: bool = False,
                  progress: bool = False, options: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """The final fine-tune of a winner: ``policy`` applied again, repaired, fine-tuned on the train split with
        knowledge distillation from the uncompressed model (``steps`` and/or ``seconds``), then measured on the
        validation split and (where there is one) the test split; ``options``: more of :func:`finetune_kd`'s
        keywords (:meth:`~picojoule.search.config.FinalFinetuneConfig.options`). Returns (the fine-tuned model,
        ``{"accuracy", "test_accuracy" (None: no test split), "steps", "seconds"}``)."""
        if self.train is None or len(self.train) == 0:
            raise PicojouleError("field 'final_finetune': needs training data to fine-tune on (data.train, or "
                                 "train_data in picojoule.search)")
        compressed, result = self._compressed(policy, "validation", steps or 0, seconds, augment, progress,
                                              finetune_options=options)
        test = None
        if self.has_test:
            data, metric = self._split("test")
            test = evaluate(compressed, data, metric=metric)["accuracy"]
        tuned = result["finetune"]
        return compressed, {"accuracy": result["accuracy"], "test_accuracy": test, "steps": tuned["steps"],
                            "seconds": tuned["seconds"]}


@dataclass(frozen=True)
class Job:
    """One accuracy measurement the search hands an executor: a policy at a fidelity rung."""

    policy: Policy
    rung: int = -1

    def __call__(self, evaluator: Evaluator) -> dict[str, Any]:
        return evaluator(self.policy, rung=self.rung)


@dataclass(repr=False)
class Problem:
    """Everything one search needs, loaded once."""

    config: SearchSettings  # a SearchConfig when the problem came from a config file or mapping
    source: str
    graph: LayerGraph
    target: Target
    space: Space
    program: ConstraintProgram
    objectives: list[Objective]
    model: nn.Module | None = None
    example: torch.Tensor | None = None
    data: Datasets | None = None
    metric: Metric | None = None  # measures a compressed model (reported as accuracy); None: top-1 on validation
    test_metric: Metric | None = None  # reports the front on test data after the search; None: top-1 on data.test
    given_sensitivity: Any = None  # a Sensitivity of the model on this space, passed in (else measured when needed)
    #: policies from elsewhere to start from (co-design: earlier hardware points' fronts), each with a label
    warm_policies: list = field(default_factory=list)
    evaluation_cache: dict | None = None  # shared by the evaluators of several searches of one model (co-design)

    def __repr__(self) -> str:
        return (f"Problem({self.graph.name} on {self.target.name}, {self.space.dim} knobs, "
                f"objectives={[str(o) for o in self.objectives]})")

    @cached_property
    def scales(self) -> ScaleFormat | None:
        """How the evaluation's linear-layer recipe carries its scales, which pricing charges (None: no recipe)."""
        recipe = self.config.evaluation.linear_quant
        return ScaleFormat.of(recipe) if recipe is not None else None

    def priced(self, policies: PolicyBatch | Sequence[Policy]) -> tuple[dict[str, np.ndarray], CostResult]:
        """(the hardware metrics of N policies, each an (N,) array; the per-layer CostResult), vectorised."""
        pb = policies if isinstance(policies, PolicyBatch) else list(policies)
        result = price(self.graph, self.target, pb, model=self.config.cost_model, batch=self.config.batch,
                       scales=self.scales)
        return cost_metrics(result, self.config.carbon.pue, self.config.carbon.grid_g_per_kwh), result

    def cost(self, policies: PolicyBatch | Sequence[Policy]) -> dict[str, np.ndarray]:
        """The hardware metrics of N policies (vectorised), each an (N,) array."""
        return self.priced(policies)[0]

    def sensitivity_source(self, cache_dir: Path | None = None, progress: bool = True) -> Callable[[], Any] | None:
        """A callable that returns the model's per-layer sensitivity on this space (computed on the first call,
        on labelled training data, cached as sensitivity.json in ``config.sensitivity.cache`` or else ``cache_dir``);
        None when there is neither a given sensitivity nor a model with labelled training data."""
        if self.given_sensitivity is not None:
            return lambda: self.given_sensitivity
        labelled = self._labelled()
        if self.model is None or labelled is None:
            return None
        memo: list[Any] = []

        def measure() -> Any:
            if not memo:
                from picojoule.sensitivity import sensitivity

                cfg = self.config.sensitivity
                where = cfg.cache or cache_dir
                memo.append(sensitivity(self.model, self.example, self.space, labelled,
                                        calib_data=self.data.calibration if self.data else None, images=cfg.images,
                                        calib_images=cfg.calib_images, hessian_iters=cfg.hessian_iters,
                                        seed=self.config.seed, cache_dir=where, progress=progress))
            return memo[0]

        return measure

    def _labelled(self) -> ArrayDataset | None:
        """Labelled training data for the sensitivity: the train split, else a labelled calibration split."""
        data = self.data
        if data is None:
            return None
        for split in (data.train, data.calibration):
            if isinstance(split, ArrayDataset) and len(split):
                return split
        return None

    def evaluator(self) -> Evaluator:
        if self.model is None or self.data is None:
            raise PicojouleError(f"{self.source}: this search measures no accuracy")
        return Evaluator(self.model, self.example, self.graph, self.data, self.config.evaluation, self.config.seed,
                         self.metric, self.test_metric, self.evaluation_cache)

    def splits(self) -> dict[str, dict[str, Any]]:
        """What the validation (selects) and test (reports) accuracies are measured on: per split its ``images``
        (None: a metric callable) and a ``source`` in words."""
        data = self.data
        if data is None:
            return {}
        n_test = self.config.evaluation.test_images
        test = None if data.test is None else min(len(data.test), n_test or len(data.test))
        if data.carved:
            where = f"{len(data.validation)} images drawn from data.{data.carved['from']} with seed {data.carved['seed']}"
        else:
            where = "data.validation" if data.validation is not None else "the evaluate callable"
        return {"validation": {"images": None if data.validation is None else len(data.validation), "source": where},
                "test": {"images": test, "source": f"{test} images of data.test" if test is not None
                         else "the test_evaluate callable" if self.test_metric is not None else "not measured"}}


def make_problem(settings: SearchSettings, source: str, graph: LayerGraph, target: Target,
                 model: nn.Module | None = None, example: torch.Tensor | None = None, data: Datasets | None = None,
                 metric: Metric | None = None, test_metric: Metric | None = None) -> Problem:
    """The problem of searching ``graph`` on ``target`` as ``settings`` say, with the space they override."""
    space = Space.build(graph, target, settings.space, source=f"{source}: field 'space'")
    if space.dim == 0:
        raise PicojouleError(f"{source}: field 'space': nothing to search: every knob of '{graph.name}' is fixed")
    return Problem(settings, source, graph, target, space, settings.program, settings.objective_list, model,
                   example, data, metric, test_metric)


def build_problem(config: SearchConfig, source: str = "config") -> Problem:
    """Load the model, its graph, the target and (if accuracy matters) the data the config names; top-1 on the
    validation split selects, top-1 on the test split reports."""
    data = load_data(config, source) if config.needs_accuracy else None
    model, example = load_model(config, source)
    if model is not None and data is not None:
        check_data(model, example, data.test, data.validation, data.calibration, data.train)
    with _field(source, "model"):
        if model is None:
            graph = build_graph(config.model)
        else:
            name = "digits_cnn" if config.model == DIGITS else config.model.split(":")[-1]
            graph = build_graph(model, example, name=name)
    return make_problem(config, source, graph, load_target(config.target), model, example, data)
