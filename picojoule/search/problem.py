"""The things a search works on -- model, layer graph, target, space, data and the evaluator -- built from objects
(:func:`make_problem`, what :func:`picojoule.search` calls) or loaded from a config (:func:`build_problem`, which
loads them and then calls :func:`make_problem`).

Every loading error is re-raised as one line naming the config file and the field it came from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from picojoule.data import ArrayDataset, load_dataset
from picojoule.errors import PicojouleError, WeightsError
from picojoule.graph import LayerGraph, build_graph
from picojoule.hwmodels.common import CostResult
from picojoule.hwmodels.costs import price
from picojoule.hwmodels.target import Target, load_target
from picojoule.policy import PolicyBatch
from picojoule.search.config import DIGITS, EvaluationConfig, Objective, SearchConfig, SearchSettings
from picojoule.search.constraints import ConstraintProgram
from picojoule.search.evaluate import InputBatches, Metric, check_data, evaluate_policy
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
    test: ArrayDataset | None  # None: a metric callable measures the model
    calibration: ArrayDataset | InputBatches | None
    train: ArrayDataset | None = None


def load_data(config: SearchConfig, source: str = "config") -> Datasets:
    """The test, calibration and train splits the config names."""
    data = config.data_config
    if data is None:
        raise PicojouleError(f"{source}: field 'data': required to measure accuracy")
    loaded: dict[str, ArrayDataset | None] = {}
    for split in ("test", "calibration", "train"):
        spec = getattr(data, split)
        if spec is None:
            loaded[split] = None
            continue
        cached = next((loaded[s] for s in loaded if getattr(data, s) == spec), None)
        with _field(source, f"data.{split}"):
            loaded[split] = cached if cached is not None else load_dataset(spec)
    return Datasets(**loaded)  # type: ignore[arg-type]


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
    if pruned, calibrate activations, optionally fine-tune, then ``metric(compressed model)`` or else top-1 on the
    test split). Holds the model and data once (a Ray actor wraps it). Deterministic under ``seed``: the
    activation observers sample with torch's global RNG, so it is forked and seeded around each evaluation."""

    def __init__(self, model: nn.Module, example: torch.Tensor, graph: LayerGraph, data: Datasets,
                 evaluation: EvaluationConfig, seed: int = 0, metric: Metric | None = None):
        self.model, self.example, self.graph, self.cfg, self.seed = model, example, graph, evaluation, seed
        self.metric = metric
        test = data.test
        self.test = test.subset(evaluation.test_images) if test is not None and evaluation.test_images else test
        self.calib, self.train = data.calibration, data.train

    def __repr__(self) -> str:
        return f"Evaluator({type(self.model).__name__}, metric={getattr(self.metric, '__name__', 'top-1')})"

    def __call__(self, policy: Policy) -> dict[str, Any]:
        """``{"accuracy", "seconds", ...}`` of ``policy``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            _, result = evaluate_policy(
                self.model, self.example, policy, self.test, metric=self.metric, graph=self.graph,
                calib_data=self.calib, train_data=self.train,
                calib_batches=math.ceil(self.cfg.calibration_images / CALIB_BATCH),
                finetune_steps=self.cfg.finetune_steps, seed=self.seed)
        return {"accuracy": result["accuracy"], "seconds": result["seconds"]}


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
    metric: Metric | None = None  # measures a compressed model (reported as accuracy); None: top-1 on data.test

    def __repr__(self) -> str:
        return (f"Problem({self.graph.name} on {self.target.name}, {self.space.dim} knobs, "
                f"objectives={[str(o) for o in self.objectives]})")

    def priced(self, policies: PolicyBatch | Sequence[Policy]) -> tuple[dict[str, np.ndarray], CostResult]:
        """(the hardware metrics of N policies, each an (N,) array; the per-layer CostResult), vectorised."""
        pb = policies if isinstance(policies, PolicyBatch) else list(policies)
        result = price(self.graph, self.target, pb, model=self.config.cost_model, batch=self.config.batch)
        return cost_metrics(result, self.config.carbon.pue, self.config.carbon.grid_g_per_kwh), result

    def cost(self, policies: PolicyBatch | Sequence[Policy]) -> dict[str, np.ndarray]:
        """The hardware metrics of N policies (vectorised), each an (N,) array."""
        return self.priced(policies)[0]

    def evaluator(self) -> Evaluator:
        if self.model is None or self.data is None:
            raise PicojouleError(f"{self.source}: this search measures no accuracy")
        return Evaluator(self.model, self.example, self.graph, self.data, self.config.evaluation, self.config.seed,
                         self.metric)


def make_problem(settings: SearchSettings, source: str, graph: LayerGraph, target: Target,
                 model: nn.Module | None = None, example: torch.Tensor | None = None, data: Datasets | None = None,
                 metric: Metric | None = None) -> Problem:
    """The problem of searching ``graph`` on ``target`` as ``settings`` say, with the space they override."""
    space = Space.build(graph, target, settings.space, source=f"{source}: field 'space'")
    if space.dim == 0:
        raise PicojouleError(f"{source}: field 'space': nothing to search: every knob of '{graph.name}' is fixed")
    return Problem(settings, source, graph, target, space, settings.program, settings.objective_list, model,
                   example, data, metric)


def build_problem(config: SearchConfig, source: str = "config") -> Problem:
    """Load the model, its graph, the target and (if accuracy matters) the data the config names; top-1 on the
    test split measures accuracy."""
    data = load_data(config, source) if config.needs_accuracy else None
    model, example = load_model(config, source)
    if model is not None and data is not None:
        check_data(model, example, data.test, data.calibration, data.train)
    with _field(source, "model"):
        if model is None:
            graph = build_graph(config.model)
        else:
            name = "digits_cnn" if config.model == DIGITS else config.model.split(":")[-1]
            graph = build_graph(model, example, name=name)
    return make_problem(config, source, graph, load_target(config.target), model, example, data)
