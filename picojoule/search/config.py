"""The problem a user states: a YAML file validated on load, every mistake one line naming the file and field.

::

    model: digits                 # 'digits' (the offline default), a zoo name, an .onnx path (cost only) or
                                  # package.module:function returning (model, example input)
    weights: null                 # a state_dict file (zoo), or the argument a module:function is called with
    data: digits                  # per split, {test: <spec>, validation: <spec>, calibration: <spec>, train: <spec>}
    #   (train only to fine-tune), each a picojoule.data.load_dataset spec; 'digits' or an .npz path alone means
    #   its test split for test and its train split for calibration and train. validation (what selects) is a
    #   spec, or by default {carve: train, images: null}: a seeded random draw of min(1000, half) of that split's
    #   images, removed from calibration and train
    target: eyeriss               # a bundled target name or a target .yaml
    cost_model: eyeriss           # roofline | eyeriss | hierarchy (target schema v2)
    objectives: [maximise accuracy, minimise energy]     # accuracy, energy, latency, size, co2e, macs, params, area, power
    constraints: ["energy <= 0.5 * uniform_int8", "accuracy_drop <= 1"]   # see picojoule.search.constraints
    space: {defaults: {keep: [0.5, 0.75, 1.0]}}          # overrides, see picojoule.spaces.space
    strategy: nsga2               # nsga2 | tpe | gp | random | ddpg | ilp
    strategy_options: {population_size: 16}              # keyword arguments of the Optuna sampler (ddpg: DDPGOptions,
                                                         # ilp: ILPOptions)
    sensitivity: {images: 256, calib_images: 256, hessian_iters: 0, cache: null}   # what ilp and guided strategies use
    trials: 200
    evaluation: {calibration_images: 256, finetune_steps: 0, finetune_seconds: null, test_images: null,
                 fidelity: {rungs: [{images: 256}, {images: null, finetune_steps: 30}], promote: 0.25}}
    final_finetune: {seconds: 120, steps: null, augment: false, winners: all}   # after the search: each winner
    #   fine-tuned (KD from the uncompressed model, on data.train) and measured again on validation and test
    warm_start: [uniform_int8]    # baselines tried first (lowered onto the bounds); ilp: the ILP's solutions at
                                  # 1.0, 0.9 and 0.8 of the bounds
    seed: 0
    workers: 0                    # 0: evaluate in this process; N: N Ray actors
    ray_address: null             # a Ray cluster to join (default: start a local one)
    backend: picojoule            # picojoule (this engine) | ray-tune (ray.tune.Tuner + OptunaSearch)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from picojoule.errors import PicojouleError
from picojoule.hwmodels.carbon import DEFAULT_GRID_G_PER_KWH, DEFAULT_PUE
from picojoule.hwmodels.costs import COST_MODELS
from picojoule.search.baselines import baseline_bits
from picojoule.search.constraints import ConstraintProgram
from picojoule.search.metrics import METRICS, OBJECTIVE_METRICS
from picojoule.search.strategies import STRATEGIES as _STRATEGY_REGISTRY
from picojoule.yamlfile import read_yaml, validated

DIGITS = "digits"
#: the warm start that stands for the ILP's solutions (picojoule.search.strategies.ilp.seed_solutions)
ILP_WARM_START = "ilp"
#: the registered names (the registries are picojoule.search.strategies.STRATEGIES and hwmodels.costs.COST_MODELS)
STRATEGIES = tuple(_STRATEGY_REGISTRY)
COST_MODEL_NAMES = tuple(COST_MODELS)
_HOOK_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_DIRECTIONS = {"maximise": True, "maximize": True, "max": True, "minimise": False, "minimize": False, "min": False}
#: fields a resumed run may change; every other field must match the run's saved config
RESUMABLE_FIELDS = ("trials", "workers", "ray_address")

DatasetSpec = str | dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: images a carved validation split takes at most by default (and at most half of the split it is carved from)
VALIDATION_IMAGES = 1000


class CarveConfig(_Strict):
    """A validation split drawn from another split with the config's seed; the drawn images leave every split
    loaded from the same dataset spec (calibration and train in the shorthand), so they stay unseen."""

    carve: Literal["train", "calibration", "test"] = Field(
        "train", description="the split to draw from ('train' falls back to calibration when there is no train)")
    images: int | None = Field(None, ge=1, description=f"images drawn (default: min({VALIDATION_IMAGES}, half))")


class DataConfig(_Strict):
    """The dataset of each split: ``validation`` measures every candidate's accuracy (what selects), ``test``
    measures the Pareto front, winners and baselines once after the search (what is reported), ``calibration``
    sets activation ranges and BatchNorm statistics, ``train`` feeds the fine-tune (relative paths are from the
    working directory)."""

    test: DatasetSpec
    calibration: DatasetSpec
    train: DatasetSpec | None = None
    validation: CarveConfig | DatasetSpec = Field(default_factory=CarveConfig, union_mode="left_to_right")

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        """``digits`` or an .npz (a string, or a mapping with 'source') stands for its test and train splits."""
        if isinstance(data, str) or (isinstance(data, dict) and "source" in data):
            base = {"source": data} if isinstance(data, str) else dict(data)
            validation = base.pop("validation", None)
            if "split" in base or not (base["source"] == DIGITS or str(base["source"]).endswith(".npz")):
                raise ValueError("one dataset spec stands for all splits only for 'digits' or an .npz file with "
                                 "x_test/x_train: give {test: <spec>, calibration: <spec>, train: <spec>}")
            splits = {"test": {**base, "split": "test"}, "calibration": {**base, "split": "train"},
                      "train": {**base, "split": "train"}}
            return splits if validation is None else {**splits, "validation": validation}
        return data


class Rung(_Strict):
    """One fidelity of the accuracy stage: how many validation images a candidate is measured on, after how many
    steps of KD fine-tuning."""

    images: int | None = Field(None, ge=1, description="the first N validation images (null: all)")
    finetune_steps: int = Field(0, ge=0, description="KD fine-tune steps before measuring (deterministic under seed)")
    finetune_seconds: float | None = Field(None, gt=0, description="or seconds of it (not reproducible step for step)")


class FidelityConfig(_Strict):
    """Successive halving over rungs, decided as each result arrives (ASHA's rule): a candidate measured at rung k
    goes on to rung k+1 if its accuracy is in the top ``promote`` fraction of every result at rung k so far and the
    rung has promoted fewer than ``max(1, floor(promote x results))`` (a result above every earlier one goes on
    regardless). Only candidates that reach the last rung can be on
    the Pareto front; every candidate's last measured accuracy is what its strategy is told."""

    rungs: list[Rung] = Field(min_length=1, description="from cheapest to the full measurement")
    promote: float = Field(0.25, gt=0, le=1, description="fraction of each rung's results that go on")


class PredictorConfig(_Strict):
    """An accuracy predictor (:mod:`picojoule.search.predictor`) fitted on the first-rung accuracies measured so
    far pre-screens every candidate that meets the hardware bounds: one whose optimistic prediction (mean + ``k``
    std) is dominated by a measured policy (no costlier in every other objective and at least ``margin`` more
    accurate at the first rung) is not measured (``screened``), and its strategy is told the predicted accuracy."""

    model: Literal["gbr", "gp"] = "gbr"
    after: int = Field(20, ge=8, description="first-rung measurements before it screens")
    k: float = Field(1.0, ge=0, description="standard deviations of optimism")
    margin: float = Field(0.0, ge=0, description="accuracy (a fraction) a dominating policy must lead by")
    refit_every: int = Field(5, ge=1, description="new measurements between refits")


class LinearQuantConfig(_Strict):
    """How a policy's bits are applied to linear layers (see :class:`picojoule.spaces.linear_ptq.LinearQuant`):
    the LLM recipe instead of per-channel round-to-nearest weights and per-tensor activations."""

    weights: Literal["rtn", "gptq"] = Field("gptq", description="weight rounding: round-to-nearest or GPTQ")
    group_size: int | None = Field(128, description="inputs per weight scale (a power of two; null: per channel)")
    activations: Literal["tensor", "token"] = Field("token", description="one static input range, or one per token "
                                                                        "taken at run time")
    rotate: bool = Field(False, description="a block Walsh-Hadamard rotation of each linear's inputs (QuaRot)")
    rotate_block: int = Field(128, description="the rotation's block (a power of two)")
    smooth: float | None = Field(None, ge=0, le=1, description="SmoothQuant's migration strength (null: off)")
    damp: float = Field(0.01, gt=0, lt=1, description="GPTQ's dampening, a fraction of the Hessian's mean diagonal")
    act_clip: float = Field(1.0, gt=0, le=1, description="per-token activations take this fraction of each "
                                                          "token's range (QuaRot: 0.9)")
    act_group: int | None = Field(None, description="per-token activations: one range per this many inputs "
                                                    "(a power of two; null: one per token), as Atom's W4A4")

    @field_validator("group_size", "rotate_block", "act_group")
    @classmethod
    def _power_of_two(cls, v: int | None) -> int | None:
        if v is not None and (v < 2 or v & (v - 1)):
            raise ValueError(f"expected a power of two >= 2, got {v}")
        return v

    def recipe(self) -> Any:
        from picojoule.spaces.linear_ptq import LinearQuant

        return LinearQuant(**self.model_dump())


class EvaluationConfig(_Strict):
    """The accuracy stage's budget per feasible policy (BatchNorm is re-estimated whenever a policy prunes)."""

    calibration_images: int = Field(256, ge=1, description="images that set activation ranges (in batches of 128)")
    finetune_steps: int = Field(0, ge=0, description="steps of fine-tuning distilled from the uncompressed model")
    finetune_seconds: float | None = Field(None, gt=0, description="seconds of that fine-tune (with steps: the first "
                                                                   "budget reached stops it)")
    test_images: int | None = Field(None, ge=1, description="the first N test images (default: all)")
    fidelity: FidelityConfig | None = Field(None, description="multi-fidelity rungs (default: one rung, all "
                                            "validation images after finetune_steps)")
    predictor: PredictorConfig | None = Field(None, description="pre-screening by an accuracy predictor")
    linear_quant: LinearQuantConfig | None = Field(None, description="the LLM recipe for linear layers (GPTQ, "
                                                   "group-wise scales, per-token activations, rotation)")

    @model_validator(mode="after")
    def _one_fine_tune_setting(self) -> EvaluationConfig:
        if self.fidelity is not None and (self.finetune_steps or self.finetune_seconds):
            raise ValueError("the fine-tune budget is set per rung when fidelity is given: move finetune_steps / "
                             "finetune_seconds into fidelity.rungs")
        return self

    @property
    def rungs(self) -> list[Rung]:
        """The fidelity ladder (one rung without ``fidelity``)."""
        return list(self.fidelity.rungs) if self.fidelity else [
            Rung(finetune_steps=self.finetune_steps, finetune_seconds=self.finetune_seconds)]

    @property
    def fine_tunes(self) -> bool:
        return any(r.finetune_steps or r.finetune_seconds for r in self.rungs)


class SensitivityConfig(_Strict):
    """How the per-layer sensitivity that guides ``ilp`` (and ``warm_start: [ilp]``) is measured: on ``images`` of the
    training split (never the validation or test split), see :func:`picojoule.sensitivity.sensitivity`."""

    images: int = Field(256, ge=1, description="training images the loss increase is measured on")
    calib_images: int = Field(256, ge=1, description="images that calibrate activations / re-estimate BatchNorm")
    hessian_iters: int = Field(0, ge=0, description="Hutchinson iterations of the Hessian trace (0: skip; hawq needs it)")
    cache: str | None = Field(None, description="a directory for sensitivity.json (default: the run directory)")


class FinalFinetuneConfig(_Strict):
    """The search's last stage: each winner (the front's best per objective; a trial that wins twice once) is
    compressed again, fine-tuned with knowledge distillation from the uncompressed model on the train split, and
    measured on the validation and test splits; the figures are kept in the study (a resumed run does not
    fine-tune again) and the weights beside the policy in ``pareto/``."""

    seconds: float | None = Field(None, gt=0, description="fine-tune time per winner")
    steps: int | None = Field(None, ge=1, description="fine-tune steps per winner (with seconds: the first budget "
                                                      "reached stops it)")
    augment: bool = Field(False, description="CIFAR crop+flip augmentation of the training images")
    winners: Literal["all"] | list[str] = Field(
        "all", description="'all', or the metrics of the objectives whose winners are fine-tuned ([accuracy])")
    loss: Literal["kl", "cosine"] = Field(
        "kl", description="kl: softened logits against the uncompressed model's plus CE on the labels; cosine: one "
                          "minus the cosine similarity of the outputs (an embedding model; unlabelled train data)")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd with momentum 0.9, or adamw")
    lr: float | None = Field(None, gt=0, description="peak learning rate (cosine decay to 0); default 0.01 for sgd, "
                                                     "1e-4 for adamw")
    batch_size: int = Field(128, ge=1, description="samples per step")
    qat: bool = Field(False, description="quantization-aware: the recipe's linear layers (evaluation.linear_quant) "
                                         "train their weights on their integer grid, and end on it")
    qat_scales: bool = Field(False, description="with qat, the grid's scales train too (as LSQ)")
    weight_lr: float | None = Field(None, gt=0, description="with qat, the peak learning rate of the weights on "
                                                            "the grid (and their scales); default lr")
    only_linear: bool = Field(False, description="train only the recipe's linear layers (weights under qat, biases); "
                                                 "norms and embeddings stay as they are")
    features: list[str] = Field(default_factory=list, description="with loss cosine: module names or fnmatch "
                                "patterns whose outputs are distilled too, per position by cosine")

    @model_validator(mode="after")
    def _budget(self) -> FinalFinetuneConfig:
        if self.seconds is None and self.steps is None:
            raise ValueError("expected a budget: seconds and/or steps")
        if (self.qat_scales or self.weight_lr is not None) and not self.qat:
            raise ValueError("qat_scales and weight_lr need qat: true")
        if self.features and self.loss != "cosine":
            raise ValueError("features need loss: cosine")
        return self

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~picojoule.search.evaluate.finetune_kd` these settings give."""
        return {"loss": self.loss, "optimizer": self.optimizer, "lr": self.lr, "batch_size": self.batch_size,
                "qat": self.qat, "qat_scales": self.qat_scales, "weight_lr": self.weight_lr,
                "only_linear": self.only_linear, "features": list(self.features)}

    def chooses(self, objective: str) -> bool:
        """Whether the winner of ``objective`` (``"maximise accuracy"``) is fine-tuned."""
        return self.winners == "all" or objective.split()[-1] in self.winners


class CarbonConfig(_Strict):
    pue: float = Field(DEFAULT_PUE, ge=1.0)
    grid_g_per_kwh: float = Field(DEFAULT_GRID_G_PER_KWH, ge=0.0)


class Objective(_Strict):
    metric: str
    maximise: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximise else "minimize"

    def __str__(self) -> str:
        return f"{'maximise' if self.maximise else 'minimise'} {self.metric}"


def parse_objective(text: Any) -> Objective:
    """``"maximise accuracy"``, ``"minimise energy"`` or just ``"energy"`` (the metric's natural direction)."""
    if not isinstance(text, str) or not text.split():
        raise ValueError(f"expected a string like 'minimise energy', got {text!r}")
    words = text.split()
    if len(words) > 2 or (len(words) == 2 and words[0].lower() not in _DIRECTIONS):
        raise ValueError(f"'{text}': expected '[maximise|minimise] <metric>'")
    metric = words[-1]
    if metric not in OBJECTIVE_METRICS:
        raise ValueError(f"'{text}': unknown metric '{metric}' (expected one of {', '.join(OBJECTIVE_METRICS)})")
    natural = METRICS[metric].maximise
    if len(words) == 2 and _DIRECTIONS[words[0].lower()] != natural:
        raise ValueError(f"'{text}': {metric} can only be {'maximised' if natural else 'minimised'}")
    return Objective(metric=metric, maximise=natural)


def _checked(check: Any, value: str) -> None:
    """``check(value)``, its PicojouleError raised as the ValueError a validator reports."""
    try:
        check(value)
    except PicojouleError as e:
        raise ValueError(str(e)) from None


class SearchSettings(_Strict):
    """How to search: everything of a search problem but the model, its data and the target (which the Python
    API, :func:`picojoule.search`, takes as objects)."""

    cost_model: Literal[COST_MODEL_NAMES] = "roofline"  # type: ignore[valid-type]
    batch: int = Field(1, ge=1, description="inference batch the cost model prices")
    objectives: list[str] = Field(default_factory=lambda: ["maximise accuracy", "minimise energy"], min_length=1)
    constraints: list[str] = Field(default_factory=list)
    space: dict[str, Any] | None = None
    strategy: Literal[STRATEGIES] = "nsga2"  # type: ignore[valid-type]
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    trials: int = Field(100, ge=1)
    repair: bool = Field(False, description="lower each proposal that breaks a hardware bound onto the bounds (HAQ's "
                                            "budget adjustment) and measure that policy instead; the proposal is "
                                            "told infeasible and not counted")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    final_finetune: FinalFinetuneConfig | None = None
    carbon: CarbonConfig = Field(default_factory=CarbonConfig)
    warm_start: list[str] = Field(default_factory=list)
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    seed: int = Field(0, ge=0)
    workers: int = Field(0, ge=0)
    ray_address: str | None = None
    backend: Literal["picojoule", "ray-tune"] = "picojoule"

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        parsed = [str(parse_objective(t)) for t in v]
        dup = [o for i, o in enumerate(parsed) if o in parsed[:i]]
        if dup:
            raise ValueError(f"'{dup[0]}' is given twice")
        return parsed

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: list[str]) -> list[str]:
        try:
            return [c.text for c in ConstraintProgram.parse(v, "")]
        except PicojouleError as e:
            raise ValueError(str(e).removeprefix(": ")) from None

    @field_validator("warm_start")
    @classmethod
    def _warm_start(cls, v: list[str]) -> list[str]:
        for name in v:
            if name != ILP_WARM_START:
                _checked(baseline_bits, name)
        return v

    @model_validator(mode="after")
    def _settings_consistent(self) -> SearchSettings:
        if self.backend == "ray-tune" and self.strategy in ("ddpg", "ilp"):
            raise ValueError(f"backend: ray-tune drives Optuna samplers (nsga2, tpe, gp, random), not {self.strategy}; "
                             f"use backend: picojoule for {self.strategy}")
        if self.strategy_options.get("measure") == "hawq" and self.strategy == "ilp" and not self.sensitivity.hessian_iters:
            raise ValueError("sensitivity: ilp's measure 'hawq' needs the Hessian trace: set sensitivity.hessian_iters")
        if self.final_finetune is not None:
            if not self.needs_accuracy:
                raise ValueError("final_finetune: the search measures no accuracy (no objective or constraint names "
                                 "it): there is nothing to fine-tune for")
            metrics = [o.metric for o in self.objective_list]
            other = [w for w in self.final_finetune.winners if w not in metrics] \
                if self.final_finetune.winners != "all" else []
            if other:
                raise ValueError(f"final_finetune.winners: '{other[0]}' is not an objective's metric (expected 'all' "
                                 f"or some of {', '.join(metrics)})")
        return self

    # -- derived -----------------------------------------------------------------------------------

    @property
    def objective_list(self) -> list[Objective]:
        return [parse_objective(t) for t in self.objectives]

    @property
    def program(self) -> ConstraintProgram:
        return ConstraintProgram.parse(self.constraints)

    @property
    def needs_accuracy(self) -> bool:
        return any(METRICS[o.metric].needs_accuracy for o in self.objective_list) or self.program.needs_accuracy

    def dump(self) -> dict[str, Any]:
        """A plain dict that validates back to an equal object."""
        return self.model_dump(mode="json")


#: the fields of a SearchConfig that name what is searched (the rest are SearchSettings)
SOURCE_FIELDS = ("model", "weights", "data", "target")


class SearchConfig(SearchSettings):
    """A search problem as a file states it: the settings plus the model, data and target by name. Build it with
    :func:`load_config` (a YAML file) or :func:`config_from_dict`."""

    model: str = DIGITS
    weights: str | None = None
    data: DataConfig | None = None
    target: str

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from picojoule.zoo import ZOO_NAMES

        if v == DIGITS or v in ZOO_NAMES or v.endswith(".onnx") or _HOOK_RE.match(v):
            return v
        raise ValueError(f"'{v}' is not 'digits', a zoo model ({', '.join(ZOO_NAMES)}), an .onnx path or "
                         "'package.module:function'")

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        from picojoule.hwmodels.target import load_target

        _checked(load_target, v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.needs_accuracy:
            if self.model.endswith(".onnx"):
                raise ValueError("model: an .onnx model can be costed but not evaluated for accuracy: use a zoo "
                                 "name or package.module:function, or drop accuracy from objectives and constraints")
            if self.data is None and self.model != DIGITS:
                raise ValueError("data: required to measure accuracy (a dataset spec or {test, calibration, train})")
        if self.data is not None and self.data.train is None:
            if self.evaluation.fine_tunes:
                raise ValueError("data.train: required to fine-tune candidates (evaluation.finetune_steps, "
                                 "finetune_seconds or a rung's)")
            if self.final_finetune is not None:
                raise ValueError("final_finetune: needs training data to fine-tune on: give data.train")
        return self

    @property
    def data_config(self) -> DataConfig | None:
        """The data, with digits as the default for the digits model."""
        if self.data is None and self.model == DIGITS:
            return DataConfig.model_validate(DIGITS)
        return self.data

    def dump(self) -> dict[str, Any]:
        """A plain dict that :func:`config_from_dict` reads back to an equal config (what is searched first)."""
        out = super().dump()
        return {**{k: out.pop(k) for k in SOURCE_FIELDS}, **out}


#: fields a whole-config check names at the start of its message
_WHOLE_CONFIG_FIELDS = ("model", "data", "data.train", "backend", "final_finetune", "final_finetune.winners",
                        "sensitivity")


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "required field is missing"
    if (item := re.match(r"^\[(\d+)\]: ", msg)) and loc:
        loc, msg = f"{loc}[{item.group(1)}]", msg[item.end():]
    if not loc and msg.split(":")[0] in _WHOLE_CONFIG_FIELDS:  # a whole-config check names its field
        loc, msg = msg.split(":", 1)[0], msg.split(":", 1)[1].strip()
    return f"{source}: field '{loc or '(top level)'}': {msg}".replace("\n", " ")


def config_from_dict(data: Any, source: str = "config", cls: type[SearchSettings] = SearchConfig) -> SearchConfig:
    """Validate a mapping as ``cls`` (a SearchConfig, or the SearchSettings of the Python API); a one-line
    PicojouleError naming ``source`` and the field otherwise."""
    return validated(cls, data, source, "search settings", _format_error)


def load_config(path: str | Path) -> SearchConfig:
    """Read and validate a search config YAML file."""
    path = Path(path)
    return config_from_dict(read_yaml(path, "search config"), str(path))


def resolve_config(config: SearchConfig | dict[str, Any] | str | Path, **overrides: Any) -> tuple[SearchConfig, str]:
    """A validated config from a path, a mapping or a config, with ``overrides`` applied; and its source name.
    Overriding ``strategy`` (``--strategy``) drops the config's ``strategy_options`` unless they are overridden too."""
    if isinstance(config, SearchConfig):
        base, source = config.dump(), "config"
    elif isinstance(config, dict):
        base, source = dict(config), "config"
    else:
        loaded = load_config(config)
        base, source = loaded.dump(), str(config)
    unknown = [k for k in overrides if k not in SearchConfig.model_fields]
    if unknown:
        raise PicojouleError(f"run_search: unknown override '{unknown[0]}' (expected a config field)")
    if overrides.get("strategy") not in (None, base.get("strategy")) and "strategy_options" not in overrides:
        base.pop("strategy_options", None)  # the config's options belong to its own strategy
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        elif value is not None:
            base[key] = value
    return config_from_dict(base, source), source
