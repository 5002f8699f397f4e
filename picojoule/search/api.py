"""The Python API of the search: objects in, a :class:`~picojoule.search.engine.SearchResult` out, storage optional.

::

    import picojoule as pj
    result = pj.search(model, example, "eyeriss", evaluate=my_metric, calib_data=loader,
                       constraints=["energy <= 0.5 * uniform_int8"], trials=200)
    result.best("accuracy").policy

It builds the same :class:`~picojoule.search.problem.Problem` that a config file names and runs the same core
(:func:`~picojoule.search.engine.run_problem`) as ``picojoule search``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from picojoule.errors import PicojouleError
from picojoule.search.config import SearchSettings, config_from_dict
from picojoule.search.engine import Callback, SearchResult, check_run, run_problem

SOURCE = "picojoule.search"
#: images (or samples) of calib_data read into memory: BatchNorm re-estimation uses 16 batches of 128
CALIB_LIMIT = 2048


def search(
    model: Any, example: Any = None, target: Any = "eyeriss", *,
    evaluate: Callable[[Any], float] | None = None,
    test_evaluate: Callable[[Any], float] | None = None,
    calib_data: Iterable[Any] | None = None,
    train_data: Any = None,
    objectives: Sequence[str] | None = None,
    constraints: Sequence[str] = (),
    trials: int = 100,
    repair: bool = False,
    storage: str | Path | None = None,
    resume: bool = False,
    cost_model: str = "roofline",
    strategy: str = "nsga2",
    strategy_options: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
    warm_start: Sequence[str] = (),
    seed: int = 0,
    workers: int = 0,
    ray_address: str | None = None,
    evaluation: dict[str, Any] | None = None,
    final_finetune: dict[str, Any] | None = None,
    batch: int = 1,
    carbon: dict[str, float] | None = None,
    metric_name: str = "accuracy",
    sensitivity: Any = None,
    name: str | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> SearchResult:
    """Search per-layer bits, pruning and rank of ``model`` on ``target``; returns the result.

    ``model``: a torch ``nn.Module`` with ``example`` (an input of batch 1), or a LayerGraph or a zoo name /
    .onnx path (cost only). ``target``: a target name, a target .yaml path or a
    :class:`~picojoule.hwmodels.target.Target`.

    ``evaluate(compressed_model) -> float`` (higher is better: top-1, F1, -perplexity, ...) measures each
    feasible policy after it is applied, BatchNorm re-estimated (if it prunes) and activations calibrated on
    ``calib_data`` (a DataLoader or any iterable of batches ``x`` or ``(x, y)``, or an ArrayDataset); it is
    called in eval mode without gradients. Its value is reported as ``accuracy``: objectives and constraints
    name it so (``maximise accuracy``, ``accuracy_drop <= 1``, the drop being 100 x (the fp32 model's value -
    the policy's), i.e. percentage points for a metric in [0, 1]); ``metric_name`` names it in the summary.
    ``train_data`` (an ArrayDataset) feeds ``evaluation={"finetune_steps": N}`` (or ``"finetune_seconds"``) and
    ``final_finetune={"seconds": S}``: after the search each winner is fine-tuned with knowledge distillation
    from ``model`` (``final_finetune={"loss": "cosine", "optimizer": "adamw", "qat": True, ...}`` for an embedding
    model: then ``train_data`` may be any iterable of input batches without labels) and measured again
    (``finetuned_accuracy`` with ``evaluate``, ``finetuned_test_accuracy`` with ``test_evaluate``; see
    :class:`~picojoule.search.config.FinalFinetuneConfig`). ``evaluate`` is what selects: give it validation data, not the data you report on. ``test_evaluate(compressed_model) -> float``, if given,
    measures the Pareto front (so every winner) and the baselines once each after the search, on your test data,
    as ``test_accuracy`` (in the summary, ``to_dataframe()`` and result.json); it never steers the search.

    ``objectives`` default to maximise accuracy and minimise energy with ``evaluate``, minimise energy without.
    ``storage`` None runs in memory (an Optuna in-memory study: no files, no lock); a path is a run directory
    as ``picojoule search --out`` writes it (journal, trials.csv, pareto/, result.json, report.md, plots),
    resumable with the same arguments and ``resume=True`` (only trials, workers and ray_address may change).
    ``sensitivity`` (a :func:`picojoule.sensitivity` result for this model and space) guides ``strategy="ilp"``,
    ``warm_start=["ilp"]`` and ``strategy_options={"prior": "sensitivity"}``; without it they measure one on
    ``train_data`` (an ArrayDataset with labels).
    The remaining arguments are the config fields of the same names (see :mod:`picojoule.search.config`).
    """
    settings = _settings(
        objectives=list(objectives) if objectives is not None
        else ["maximise accuracy", "minimise energy"] if evaluate is not None else ["minimise energy"],
        constraints=list(constraints), trials=trials, repair=repair, cost_model=cost_model, strategy=strategy,
        strategy_options=strategy_options or {}, space=space, warm_start=list(warm_start), seed=seed,
        workers=workers, ray_address=ray_address, evaluation=evaluation or {}, final_finetune=final_finetune,
        batch=batch, carbon=carbon or {})
    run_dir = Path(storage) if storage is not None else None
    check_run(settings, SOURCE, run_dir, resume)
    problem = _problem(settings, model, example, target, evaluate, calib_data, train_data, name, test_evaluate)
    problem.given_sensitivity = sensitivity
    return run_problem(problem, run_dir, resume, progress, callbacks, metric_name)


def _settings(**fields: Any) -> SearchSettings:
    return config_from_dict({k: v for k, v in fields.items() if v is not None}, SOURCE, SearchSettings)


def _problem(settings: SearchSettings, model: Any, example: Any, target: Any, evaluate: Any, calib_data: Any,
             train_data: Any, name: str | None, test_evaluate: Any = None) -> Any:
    """The Problem of the given objects (imports torch)."""
    from torch import nn

    from picojoule.data import ArrayDataset
    from picojoule.graph import LayerGraph, build_graph
    from picojoule.hwmodels.target import Target, load_target
    from picojoule.search.evaluate import InputBatches, as_calibration
    from picojoule.search.problem import Datasets, make_problem

    module = model if isinstance(model, nn.Module) else None
    if module is not None:
        if example is None:
            raise PicojouleError(f"{SOURCE}: example: an input of batch 1 is needed to trace the model")
        graph = build_graph(module, example, name=name or type(module).__name__)
    elif isinstance(model, LayerGraph):
        graph = model
    elif isinstance(model, (str, Path)):
        graph = build_graph(str(model))
    else:
        raise PicojouleError(f"{SOURCE}: model: expected a torch nn.Module (with example), a LayerGraph, a zoo "
                             f"name or an .onnx path, got {type(model).__name__}")
    if not isinstance(target, Target):
        target = load_target(str(target))
    data = None
    if settings.needs_accuracy:
        if evaluate is None or not callable(evaluate):
            raise PicojouleError(f"{SOURCE}: evaluate: the objectives or constraints name accuracy: give "
                                 "evaluate=callable(model) -> float (higher is better)")
        if module is None:
            raise PicojouleError(f"{SOURCE}: model: measuring accuracy needs the torch nn.Module itself")
        if calib_data is None:
            raise PicojouleError(f"{SOURCE}: calib_data: needed to calibrate activations and re-estimate BatchNorm "
                                 "(a DataLoader, an iterable of batches x or (x, y), or an ArrayDataset)")
        if test_evaluate is not None and not callable(test_evaluate):
            raise PicojouleError(f"{SOURCE}: test_evaluate: expected a callable(model) -> float")
        if settings.evaluation.fine_tunes and train_data is None:
            raise PicojouleError(f"{SOURCE}: train_data: required to fine-tune candidates (evaluation finetune_steps, "
                                 "finetune_seconds or a fidelity rung's)")
        if train_data is None and settings.final_finetune is not None:
            raise PicojouleError(f"{SOURCE}: field 'final_finetune': needs training data to fine-tune on: give "
                                 "train_data (an ArrayDataset of labelled images, or batches of inputs with "
                                 "loss 'cosine')")
        if train_data is not None and not isinstance(train_data, ArrayDataset):
            # inputs without labels (token ids of a sentence model): only the cosine loss fine-tunes on them
            final = settings.final_finetune
            if settings.evaluation.fine_tunes or final is None or final.loss != "cosine":
                raise PicojouleError(f"{SOURCE}: train_data: batches of inputs without labels fine-tune only with "
                                     "final_finetune loss 'cosine' (and no evaluation fine-tune): give an "
                                     "ArrayDataset of labelled images, or set final_finetune.loss: cosine")
            train_data = InputBatches(train_data, limit=10**9, name="train_data")
        limit = max(CALIB_LIMIT, settings.evaluation.calibration_images)
        data = Datasets(None, as_calibration(calib_data, limit), train_data)
    return make_problem(settings, SOURCE, graph, target, module, example, data, evaluate if data else None,
                        test_evaluate if data else None)


def codesign(model: Any, example: Any = None, target: Any = "eyeriss-codesign", *,
             codesign: dict[str, Any] | None = None, storage: str | Path | None = None, resume: bool = False,
             progress: bool = True, **search: Any) -> Any:
    """Search ``target``'s hardware parameters (a target with a ``parameters`` section) and ``model``'s per-layer
    policy together; returns a :class:`~picojoule.search.codesign.CodesignResult` (``.front``: the joint Pareto
    front of (policy, hardware) pairs over the objectives plus area; ``.points``: every hardware point with its
    search's front). ``codesign`` holds the :class:`~picojoule.search.codesign.CodesignOptions` (strategy grid |
    random | tpe, points, grid_values, trials_per_point, warm_start); ``storage`` a run directory as
    ``picojoule codesign --out`` writes it (resumable with ``resume=True``); every other keyword is
    :func:`search`'s (evaluate, calib_data, objectives, constraints such as ``"area <= 2 mm2"``, trials, ...)."""
    from picojoule.search.codesign import CodesignOptions, _prepare, codesign_problem
    from picojoule.yamlfile import validated

    options = validated(CodesignOptions, codesign or {}, SOURCE, "co-design options",
                        lambda src, e: f"{src}: field 'codesign.{'.'.join(map(str, e.errors()[0]['loc']))}': "
                                       f"{e.errors()[0]['msg']}")
    evaluate = search.pop("evaluate", None)
    test_evaluate = search.pop("test_evaluate", None)
    calib_data = search.pop("calib_data", None)
    train_data = search.pop("train_data", None)
    sensitivity = search.pop("sensitivity", None)
    name = search.pop("name", None)
    objectives = search.pop("objectives", None)
    settings = _settings(objectives=list(objectives) if objectives is not None
                         else ["maximise accuracy", "minimise energy"] if evaluate is not None else ["minimise energy"],
                         **{k: (list(v) if isinstance(v, tuple) else v) for k, v in search.items()})
    problem = _problem(settings, model, example, target, evaluate, calib_data, train_data, name, test_evaluate)
    problem.given_sensitivity = sensitivity
    run_dir = _prepare(Path(storage) if storage is not None else None, resume)
    return codesign_problem(problem, options, run_dir, progress)
