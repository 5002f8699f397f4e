"""Accuracy of a (compressed) model, with the repairs that usually precede it: observer calibration,
BatchNorm re-estimation and a short knowledge-distillation fine-tune."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from picojoule.data import ArrayDataset
from picojoule.errors import PicojouleError
from picojoule.passes import PASSES
from picojoule.spaces.quantize import passthrough

Calibrate = Callable[[nn.Module, Sequence[torch.Tensor]], Any]
#: ``metric(model) -> float``, higher is better (top-1, F1, -perplexity, ...), called in eval mode without gradients
Metric = Callable[[nn.Module], float]
#: test batch: 64 keeps a CIFAR ResNet's activations near the core's L2 cache: ResNet-20 W4A4 on 1017 images took
#: 0.73 s at 64 vs 1.23-1.39 s at 256 on one thread, and two evaluations side by side contend less for memory
TEST_BATCH = 64
"""``calibrate(model, batches)``: ``batches`` is a list of normalised input tensors on the model's device."""


class InputBatches:
    """Model inputs held in memory for calibration and BatchNorm re-estimation, from any iterable of batches: a
    torch ``DataLoader``, a list of tensors, or of ``(x, y, ...)`` tuples (only ``x`` is used). Batches are
    concatenated along dim 0 (at most ``limit`` samples are read) and served like :meth:`ArrayDataset.batches`
    (labels None)."""

    def __init__(self, batches: Any, limit: int = 2048, name: str = "calib_data"):
        xs, n = [], 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                raise PicojouleError(f"{name}: expected batches of tensors (x or (x, y)), got {type(x).__name__}")
            xs.append(x.detach().cpu())
            n += len(x)
            if n >= limit:
                break
        if not xs:
            raise PicojouleError(f"{name}: expected a non-empty iterable of batches")
        try:
            self.x = torch.cat(xs)[:limit]
        except RuntimeError as e:
            raise PicojouleError(f"{name}: batches of different shapes ({str(e).splitlines()[0]})") from None
        self.name = name

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int | Sequence[int] = 0,
                **_: Any) -> Iterator[tuple[torch.Tensor, None]]:
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield self.x[torch.from_numpy(order[start:start + batch_size])], None


def as_calibration(data: Any, limit: int = 2048) -> ArrayDataset | InputBatches | None:
    """``data`` as :func:`evaluate` takes calibration data: an ArrayDataset (or None) as it is, any other iterable
    of batches as :class:`InputBatches`."""
    if data is None or isinstance(data, (ArrayDataset, InputBatches)):
        return data
    return InputBatches(data, limit)


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _require_data(data: ArrayDataset | None, what: str) -> ArrayDataset:
    if data is None or len(data) == 0:
        raise PicojouleError(f"{what}: expected a non-empty dataset")
    return data


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore each module's train flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (e.g. for dropout) without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def check_data(model: nn.Module, example_input: torch.Tensor, *datasets: ArrayDataset | None) -> None:
    """A one-line error naming the data file and field unless each dataset's images have the example input's
    channels and its labels are below the model's number of outputs."""
    with _eval_mode(model), torch.no_grad():
        out = model(example_input.to(_device(model)))
    channels = example_input.shape[1] if example_input.dim() == 4 else None
    classes = out.shape[1] if out.dim() == 2 else None
    for data in datasets:
        if data is not None:
            data.check_fits(channels, classes)


def accuracy(model: nn.Module, data: ArrayDataset, batch_size: int = TEST_BATCH, progress: bool = False) -> float:
    """Top-1 accuracy in [0, 1], computed in eval mode without gradients (the model's mode is restored)."""
    data = _require_data(data, "accuracy")
    device, correct = _device(model), 0
    batches = data.batches(batch_size)
    total = math.ceil(len(data) / batch_size)
    with _eval_mode(model), torch.no_grad():
        for i, (xb, yb) in enumerate(tqdm(batches, total=total, desc="accuracy", disable=not progress,
                                          file=sys.stderr)):
            logits = model(xb.to(device))
            if i == 0:  # a label the model cannot output would silently count as wrong
                data.check_fits(classes=logits.shape[1])
            correct += int((logits.argmax(1).cpu() == yb).sum())
    return correct / len(data)


def reestimate_batchnorm(
    model: nn.Module, data: ArrayDataset, *, batches: int = 16, batch_size: int = 128, seed: int = 0,
    progress: bool = False,
) -> int:
    """Recompute every BatchNorm's running mean/var as a plain average over ``batches`` shuffled batches.

    Only the BatchNorm layers run in train mode (dropout and observers stay in eval mode); no gradients.
    The model is left in eval mode. Returns the number of images used (0 if the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    if not bns:
        return 0
    data = _require_data(data, "reestimate_batchnorm")
    device, momenta, seen = _device(model), [bn.momentum for bn in bns], 0
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
        bn.train()
    try:
        stream = data.batches(batch_size, shuffle=True, seed=seed)
        with torch.no_grad():
            for _, (xb, _) in zip(tqdm(range(batches), desc="BN re-estimation", disable=not progress,
                                       file=sys.stderr), stream):
                model(xb.to(device))
                seen += len(xb)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    return seen


def _kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
             temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student) on softened logits + (1 - alpha) * CE; plain CE without a teacher."""
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None:
        return ce
    kl = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                  reduction="batchmean", log_target=True)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


#: the fine-tune's losses: ``kl`` (softened logits against the teacher's, plus CE on the labels), ``cosine`` (one
#: minus the cosine similarity of the student's outputs to the teacher's: embeddings, no labels needed)
FINETUNE_LOSSES = ("kl", "cosine")
FINETUNE_OPTIMIZERS = ("sgd", "adamw")
#: the learning rate when none is given, per optimizer
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}


def _cosine_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """The mean of 1 - cos(student, teacher) over the vectors of the last dimension."""
    return (1.0 - F.cosine_similarity(student_out.float(), teacher_out.float().detach(), dim=-1)).mean()


class _FeatureTaps:
    """Forward hooks on the same-named modules of a student and its teacher, keeping each call's output (the
    first tensor of a tuple) until :meth:`loss` reads them."""

    def __init__(self, pairs: list[tuple[str, nn.Module, nn.Module]]):
        self.names = [name for name, _, _ in pairs]
        self.out: dict[tuple[str, str], torch.Tensor] = {}
        self.hooks = [m.register_forward_hook(self._keep(side, name)) for name, s, t in pairs
                      for side, m in (("student", s), ("teacher", t))]

    def _keep(self, side: str, name: str) -> Callable[..., None]:
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            self.out[side, name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def loss(self) -> torch.Tensor:
        """The mean over the modules of 1 - cos(student, teacher) per position (the last dimension)."""
        return torch.stack([_cosine_loss(self.out.pop(("student", name)), self.out.pop(("teacher", name)))
                            for name in self.names]).mean()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.out.clear()


def _feature_taps(student: nn.Module, teacher: nn.Module | None, patterns: Sequence[str]) -> _FeatureTaps:
    from fnmatch import fnmatchcase

    if teacher is None:
        raise PicojouleError("finetune: features: need a teacher")
    if isinstance(patterns, str):
        patterns = [patterns]
    theirs = dict(teacher.named_modules())
    pairs: dict[str, tuple[str, nn.Module, nn.Module]] = {}
    for pattern in patterns:
        found = [(n, m) for n, m in student.named_modules() if n and fnmatchcase(n, pattern)]
        if not found:
            raise PicojouleError(f"finetune: features: {pattern!r} names no module of the model")
        for name, module in found:
            if name not in theirs:
                raise PicojouleError(f"finetune: features: {name!r} is not a module of the teacher")
            pairs.setdefault(name, (name, module, theirs[name]))
    return _FeatureTaps(list(pairs.values()))


def finetune_kd(
    student: nn.Module, teacher: nn.Module | None, data: ArrayDataset | InputBatches, *, steps: int | None = None,
    seconds: float | None = None, lr: float | None = None, momentum: float = 0.9, weight_decay: float | None = None,
    temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, batch_size: int = 128, augment: bool = False,
    progress: bool = True, loss: str = "kl", optimizer: str = "sgd", qat: bool = False, qat_scales: bool = False,
    weight_lr: float | None = None, only_linear: bool = False, features: Sequence[str] = (),
) -> dict[str, Any]:
    """Fine-tune ``student`` in place, distilling from ``teacher`` (plain CE on labels when it is None).

    ``loss``: ``kl`` (the default: softened logits against the teacher's, ``alpha`` of it, plus CE on the labels;
    the student in train mode) or ``cosine`` (1 - the cosine similarity of the outputs to the teacher's, for an
    embedding model; no labels, so ``data`` may be :class:`InputBatches`; the student in eval mode, no dropout).
    ``optimizer``: ``sgd`` with momentum (``lr`` 0.01, weight decay 5e-4 unless given) or ``adamw`` (``lr`` 1e-4,
    weight decay 0). ``qat``: quantization-aware, every recipe linear layer (a
    :class:`~picojoule.spaces.linear_ptq.RecipeLinear`) trains its weight on its integer grid and its bias
    (``qat_scales``: the grid's scales too), and is frozen on the grid at the end, so the model stays what the
    recipe deploys; ``weight_lr`` (default ``lr``) is the learning rate of those weights and scales, every other
    parameter (biases, norms, embeddings) trains at ``lr``; ``only_linear``: only the recipe's linear layers train
    (their weights under ``qat``, and biases), every norm and embedding stays as it is. ``features`` (with the
    ``cosine`` loss): module names or ``fnmatch`` patterns (``module.encoder.encoder.layer.*.output``) whose
    outputs are distilled too, by the cosine of each position's vector (the last dimension) to the teacher's at
    the same module; their mean is added to the output's loss. The learning rate follows a cosine from ``lr`` to
    0 over the budget, ``steps`` and/or ``seconds`` (the first reached stops it). Deterministic under ``seed`` when the budget is ``steps``.
    ``augment`` applies the CIFAR crop+flip augmentation. Leaves the student in eval mode. Returns
    ``{"steps", "seconds", "final_loss", "loss", "optimizer", "lr", "weight_lr", "qat_layers"}`` (``final_loss``: the mean
    loss over the last 10 steps; NaN if no step ran).
    """
    if steps is None and seconds is None:
        raise PicojouleError("finetune: expected a budget: steps or seconds")
    if (steps is not None and steps < 0) or (seconds is not None and seconds < 0):
        raise PicojouleError(f"finetune: expected a budget >= 0, got steps={steps}, seconds={seconds}")
    if loss not in FINETUNE_LOSSES:
        raise PicojouleError(f"finetune: loss: expected one of {', '.join(FINETUNE_LOSSES)}, got {loss!r}")
    if optimizer not in FINETUNE_OPTIMIZERS:
        raise PicojouleError(f"finetune: optimizer: expected one of {', '.join(FINETUNE_OPTIMIZERS)}, got "
                             f"{optimizer!r}")
    if loss == "cosine" and teacher is None:
        raise PicojouleError("finetune: loss 'cosine' needs a teacher (the uncompressed model)")
    if features and loss != "cosine":
        raise PicojouleError("finetune: features: distilled by cosine, so they need loss 'cosine'")
    taps = _feature_taps(student, teacher, features) if features else None
    data = _require_data(data, "finetune_kd")
    if loss == "kl" and isinstance(data, InputBatches):
        raise PicojouleError(f"finetune: loss 'kl' needs labelled data ({data.name} has inputs only): give an "
                             "ArrayDataset, or use loss 'cosine'")
    qat_layers, on_grid, linear = 0, set(), None  # linear: the parameters only_linear trains
    if qat or only_linear:
        from picojoule.spaces.linear_ptq import RecipeLinear, enable_qat

        recipe = [m for m in student.modules() if isinstance(m, RecipeLinear)]
        if not recipe:
            raise PicojouleError(f"finetune: {'qat' if qat else 'only_linear'}: the model has no recipe linear layer "
                                 "(evaluation.linear_quant)")
        if qat:
            qat_layers = len(recipe)
            enable_qat(student, qat_scales)
            on_grid = {id(p) for m in recipe for p in (m.weight, m.qat_scale) if p is not None}
        if only_linear:
            for m in recipe:
                m.trainable_bias()
            linear = {id(p) for m in recipe for p in m.parameters()}
    # what only_linear leaves out computes no gradient meanwhile (the flags are restored at the end)
    held = [] if linear is None else [p for p in student.parameters() if p.requires_grad and id(p) not in linear]
    for p in held:
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        for p in held:
            p.requires_grad_(True)
        raise PicojouleError("finetune: the student has no trainable parameters")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    rates = {"rest": lr, "grid": lr if weight_lr is None else weight_lr}
    groups = [{"params": ps, "lr": rates[k], "name": k} for k, ps in
              (("grid", [p for p in params if id(p) in on_grid]), ("rest", [p for p in params if id(p) not in on_grid]))
              if ps]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum,
                                                     weight_decay=5e-4 if weight_decay is None else weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0 if weight_decay is None else weight_decay)
    device, done, losses, epoch = _device(student), 0, [], 0
    start = time.perf_counter()

    def fraction() -> float:
        by_steps = done / steps if steps else (1.0 if steps == 0 else 0.0)
        by_time = (time.perf_counter() - start) / seconds if seconds else (1.0 if seconds == 0 else 0.0)
        return max(by_steps, by_time)

    bar = tqdm(total=steps, desc="fine-tune" if teacher is None else "fine-tune (KD)", disable=not progress,
               file=sys.stderr)
    try:
        with _seeded(seed, device), _eval_mode(teacher if teacher is not None else nn.Identity()):
            student.train(loss == "kl")
            while fraction() < 1.0:
                for xb, yb in data.batches(batch_size, shuffle=True, seed=(seed, epoch), augment=augment,
                                           drop_last=len(data) >= batch_size):
                    if (frac := fraction()) >= 1.0:
                        break
                    for group in opt.param_groups:
                        group["lr"] = rates[group["name"]] * 0.5 * (1.0 + math.cos(math.pi * frac))
                    xb = xb.to(device)
                    with torch.no_grad():
                        teacher_out = teacher(xb) if teacher is not None else None
                    if loss == "cosine":  # each sample's output as one vector
                        value = _cosine_loss(student(xb).flatten(1), teacher_out.flatten(1))
                        if taps is not None:
                            value = value + taps.loss()
                    else:
                        value = _kd_loss(student(xb), teacher_out, yb.to(device), temperature, alpha)
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    opt.step()
                    for p in PASSES:  # what a step may undo (zeroed weights of a sparsity pass)
                        p.after_step(student)
                    losses.append(value.detach().item())
                    done += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                epoch += 1
    finally:
        bar.close()
        if taps is not None:
            taps.remove()
        for p in held:
            p.requires_grad_(True)
        if qat:
            from picojoule.spaces.linear_ptq import freeze_qat

            freeze_qat(student)
    student.eval()
    tail = losses[-10:]
    return {"steps": done, "seconds": time.perf_counter() - start,
            "final_loss": sum(tail) / len(tail) if tail else math.nan, "loss": loss, "optimizer": optimizer,
            "lr": lr, "weight_lr": rates["grid"] if qat else None, "qat_layers": qat_layers}


def repair(model: nn.Module, data: ArrayDataset | InputBatches | None, *, calibrate: Calibrate | None = None,
           calib_batches: int = 8, bn_reestimate: bool = False, seed: int = 0, progress: bool = False) -> int:
    """What a freshly compressed model needs before use, on ``data``: BatchNorm re-estimation (after pruning;
    activation quantizers let inputs through meanwhile), then the ``calibrate(model, batches)`` callback on
    ``calib_batches`` batches of 128 inputs. Returns the images BatchNorm saw."""
    bn_images = 0
    if bn_reestimate:
        with passthrough(model) if calibrate is not None else nullcontext():
            bn_images = reestimate_batchnorm(model, _require_data(data, "bn_reestimate: calib_data or train_data"),
                                             seed=seed, progress=progress)
    if calibrate is not None:
        device = _device(model)
        stream = _require_data(data, "calibrate: calib_data or train_data").batches(128, shuffle=True, seed=seed)
        inputs = [xb.to(device) for _, (xb, _) in zip(range(calib_batches), stream)]
        with torch.no_grad():
            calibrate(model, inputs)
    return bn_images


def evaluate(
    model: nn.Module, test_data: ArrayDataset | None = None, *, metric: Metric | None = None,
    calib_data: ArrayDataset | InputBatches | None = None, calibrate: Calibrate | None = None, calib_batches: int = 8,
    bn_reestimate: bool = False, finetune_steps: int = 0, finetune_seconds: float | None = None,
    teacher: nn.Module | None = None, train_data: ArrayDataset | InputBatches | None = None, augment: bool = False,
    seed: int = 0, batch_size: int = TEST_BATCH, progress: bool = False, finetune_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Repair ``model`` in place, then measure it: ``metric(model)`` if given, else top-1 accuracy on ``test_data``.

    In order: BatchNorm re-estimation (``bn_reestimate``, on ``calib_data`` or else ``train_data``), the
    ``calibrate(model, batches)`` callback (``calib_batches`` batches of 128 inputs from the same data), a
    fine-tune on ``train_data`` distilled from ``teacher`` (``finetune_steps``/``finetune_seconds``; ``augment``:
    CIFAR crop+flip; ``finetune_options``: more of :func:`finetune_kd`'s keywords: loss, optimizer, qat, ...), the
    measurement (reported as ``accuracy`` whatever the metric is).
    Returns ``{"accuracy", "seconds", "n_test", "bn_images", "calibrated", "finetune"}``.
    """
    start = time.perf_counter()
    bn_images = repair(model, calib_data if calib_data is not None else train_data, calibrate=calibrate,
                       calib_batches=calib_batches, bn_reestimate=bn_reestimate, seed=seed, progress=progress)
    finetune = None
    if finetune_steps or finetune_seconds:
        finetune = finetune_kd(model, teacher, _require_data(train_data, "fine-tune: train_data"),
                               steps=finetune_steps or None, seconds=finetune_seconds, seed=seed,
                               augment=augment, progress=progress, **(finetune_options or {}))
    if metric is None:
        value = accuracy(model, test_data, batch_size, progress)
    else:
        with _eval_mode(model), torch.no_grad():
            value = float(metric(model))
    return {"accuracy": value, "seconds": time.perf_counter() - start,
            "n_test": len(test_data) if test_data is not None else None, "bn_images": bn_images,
            "calibrated": calibrate is not None, "finetune": finetune}


def evaluate_policy(
    model: nn.Module, example_input: torch.Tensor, policy: Any, test_data: ArrayDataset | None = None, *,
    metric: Metric | None = None, graph: Any = None, calib_data: ArrayDataset | InputBatches | None = None,
    train_data: ArrayDataset | InputBatches | None = None, calib_batches: int = 2,
    finetune_steps: int = 0, finetune_seconds: float | None = None, augment: bool = False, seed: int = 0,
    progress: bool = False, linear_quant: Any = None, finetune_options: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Compress ``model`` with ``policy`` and measure it: apply (prune, low rank, fake-quantize), re-estimate
    BatchNorm after pruning, calibrate activation ranges, optionally fine-tune distilled from ``model``,
    then ``metric(compressed)`` or else top-1 on ``test_data``. ``linear_quant`` (a
    :class:`picojoule.spaces.linear_ptq.LinearQuant`) quantizes the linear layers its way (GPTQ, groups, per-token
    activations, rotation) from the calibration data. Returns the compressed model and ``evaluate``'s dict plus the
    real MACs and parameters and what was applied."""
    from picojoule.spaces.apply import apply_policy
    from picojoule.spaces.quantize import calibrate_activations

    start = time.perf_counter()
    compressed, info = apply_policy(model, example_input, policy, graph=graph)
    calibrate = calibrate_activations if info.needs_calibration else None
    if linear_quant is not None:
        from picojoule.spaces.linear_ptq import recipe_calibration

        calibrate = recipe_calibration(linear_quant)
    result = evaluate(
        compressed, test_data, metric=metric, calib_data=calib_data, train_data=train_data, seed=seed,
        progress=progress,
        calibrate=calibrate, calib_batches=calib_batches,
        bn_reestimate=bool(info.channels), finetune_steps=finetune_steps, finetune_seconds=finetune_seconds,
        augment=augment, finetune_options=finetune_options,
        teacher=model if (finetune_steps or finetune_seconds) else None,
    )
    result.update(seconds=time.perf_counter() - start, macs=info.macs, params=info.params,
                  pruned=info.channels, ranks=info.ranks, retained_energy=info.energy)
    return compressed, result
