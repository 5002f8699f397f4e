"""Post-training compression of linear layers from calibration statistics, as LLM compression does it.

* **Group-wise weight quantization** (:func:`quantize_groups`): int ``bits`` with one scale and zero point per
  ``group_size`` consecutive input weights of each output row (asymmetric min/max; W4A16 g128 as in GPTQ and
  AWQ). Round-to-nearest (``method="rtn"``) or GPTQ's error-compensating rounding (``method="gptq"``,
  :func:`gptq`: Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
  Transformers"): columns are quantized in order and each one's rounding error is spread over the columns not
  yet quantized through the inverse Hessian ``H = 2 X^T X`` of the layer's calibration inputs.
* **SmoothQuant** (Xiao et al. 2023): for W8A8, a per-input-channel scale ``s_j = max|X_j|^a / max|W_j|^(1-a)``
  moves activation outliers into the weights (``X / s``, ``W * s``; deployed, ``1/s`` folds into the op that
  feeds the layer); then int8 weights per output channel and an int8 per-tensor static input range
  (:class:`SmoothedQuantLinear`).
* **Sparsity selection**: unstructured or N:M (2:4) pruning of each row by magnitude or by Wanda's score
  ``|W_ij| * ||X_j||_2`` (Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language Models").

Statistics come from one pass of the *uncompressed* model over the calibration inputs (every layer sees
float inputs: the one-shot variant, not GPTQ's layer-by-layer sequential one). :func:`compress_linears`
applies a :class:`LinearPlan` to a copy of a model.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.hwmodels.scales import rotation_block
from picojoule.spaces.quantize import (ActivationQuantizer, QuantLinear, _fake_quant_weight, _weight_clip_ratio,
                                       calibrate_activations, passthrough)


@dataclass(frozen=True)
class LinearPlan:
    """What to do to every selected nn.Linear. ``w_bits`` None keeps float weights; ``group_size`` None is one
    group per output row (per channel); ``a_bits`` 8 quantizes the inputs per tensor (W8A8), None keeps them
    float (W4A16); ``smooth`` the SmoothQuant migration strength (None: no smoothing); ``sparsity`` a fraction
    of each row (unstructured) or ``"2:4"``; ``select`` how pruned weights are chosen."""

    w_bits: int | None = None
    group_size: int | None = 128
    method: Literal["rtn", "gptq"] = "rtn"
    a_bits: int | None = None
    smooth: float | None = None
    sparsity: float | str | None = None
    select: Literal["magnitude", "wanda"] = "wanda"
    damp: float = 0.01  # GPTQ's dampening, a fraction of the Hessian's mean diagonal
    a_range: Literal["absmax", "mse"] = "absmax"  # the static input range: max |x| seen, or an MSE-optimal clip

    def __post_init__(self) -> None:
        if self.w_bits is not None and not 2 <= self.w_bits <= 8:
            raise PicojouleError(f"linear plan: field 'w_bits': expected 2..8 or None, got {self.w_bits!r}")
        if self.group_size is not None and (self.group_size < 1 or self.group_size & (self.group_size - 1)):
            raise PicojouleError(f"linear plan: field 'group_size': expected a power of two, got {self.group_size!r}")
        if self.method not in ("rtn", "gptq"):
            raise PicojouleError(f"linear plan: field 'method': expected 'rtn' or 'gptq', got {self.method!r}")
        if self.a_bits not in (None, 8):
            raise PicojouleError(f"linear plan: field 'a_bits': expected 8 or None, got {self.a_bits!r}")
        if self.smooth is not None and not 0.0 <= self.smooth <= 1.0:
            raise PicojouleError(f"linear plan: field 'smooth': expected 0..1, got {self.smooth!r}")
        if self.a_range not in ("absmax", "mse"):
            raise PicojouleError(f"linear plan: field 'a_range': expected 'absmax' or 'mse', got {self.a_range!r}")
        if self.select not in ("magnitude", "wanda"):
            raise PicojouleError(f"linear plan: field 'select': expected 'magnitude' or 'wanda', got {self.select!r}")
        if isinstance(self.sparsity, str):
            n_m(self.sparsity)
        elif self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise PicojouleError(f"linear plan: field 'sparsity': expected 0 <= s < 1 or 'N:M', got {self.sparsity!r}")

    @property
    def needs_hessian(self) -> bool:
        return self.w_bits is not None and self.method == "gptq"


def n_m(pattern: str) -> tuple[int, int]:
    """(N, M) of an 'N:M' pattern: N weights kept of every M consecutive ones."""
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise PicojouleError(f"linear plan: field 'sparsity': expected 'N:M' such as '2:4', got {pattern!r}") from None
    if not 0 < n < m:
        raise PicojouleError(f"linear plan: field 'sparsity': expected 0 < N < M in 'N:M', got {pattern!r}")
    return n, m


# ---------------------------------------------------------------------------------------------------------
# weight quantizers


def _group_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max scale and zero point of each row of ``w`` (rows x group)."""
    qmax = 2**bits - 1
    lo = w.amin(dim=1, keepdim=True).clamp(max=0.0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / qmax).clamp_min(1e-10)
    zero = torch.round(-lo / scale)
    return scale, zero


def _fake(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, ste: bool = False) -> torch.Tensor:
    """``w`` rounded onto the grid ``(q - zero) * scale``; ``ste``: the rounding's gradient taken as 1."""
    x = w / scale
    q = torch.clamp((x + (torch.round(x) - x).detach() if ste else torch.round(x)) + zero, 0, 2**bits - 1)
    return (q - zero) * scale


@dataclass(frozen=True)
class GroupGrid:
    """The grid of a group-quantized weight (out x in): ``value = (q - zero) * scale`` with ``q`` in
    ``0 .. 2^bits - 1``, one ``scale`` and ``zero`` (out x in/group) per ``group`` consecutive inputs of a row.
    What an int4 kernel (ONNX Runtime's MatMulNBits) needs to store the weight as integers."""

    bits: int
    group: int
    scale: torch.Tensor
    zero: torch.Tensor

    def fake(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``w`` (out x in) rounded onto this grid, straight-through (for QAT); ``scale`` in place of the grid's
        (trained ones)."""
        out_f, in_f = w.shape
        rows = w.reshape(out_f, in_f // self.group, self.group)
        s = (self.scale if scale is None else scale).to(rows)[..., None]
        return _fake(rows, s, self.zero.to(rows)[..., None], self.bits, ste=True).reshape(out_f, in_f)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """The integers ``q`` of ``w``, a weight on this grid (uint8, out x in)."""
        out_f, in_f = w.shape
        rows = w.detach().float().reshape(out_f, in_f // self.group, self.group)
        q = torch.round(rows / self.scale[..., None]) + self.zero[..., None]
        return q.clamp(0, 2**self.bits - 1).reshape(out_f, in_f).to(torch.uint8)


def quantize_groups(w: torch.Tensor, bits: int, group_size: int | None, return_grid: bool = False) -> Any:
    """Round-to-nearest fake quantization of ``w`` (out x in), one asymmetric range per group of inputs; with
    ``return_grid``, ``(w, GroupGrid)``."""
    out_f, in_f = w.shape
    g = in_f if group_size is None else min(group_size, in_f)
    if in_f % g:
        raise PicojouleError(f"group-wise quantization: {in_f} inputs are not a multiple of group_size {g}")
    rows = w.detach().float().reshape(out_f * (in_f // g), g)
    scale, zero = _group_params(rows, bits)
    out = _fake(rows, scale, zero, bits).reshape(out_f, in_f).to(w.dtype)
    if return_grid:
        return out, GroupGrid(bits, g, scale.reshape(out_f, in_f // g), zero.reshape(out_f, in_f // g))
    return out


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None, damp: float = 0.01,
         block: int = 128, mask: torch.Tensor | None = None, return_grid: bool = False) -> Any:
    """GPTQ's fake-quantized ``w`` (out x in) under the calibration Hessian ``2 X^T X / n`` (in x in): columns
    in order, in blocks of ``block`` with lazy updates, group ranges taken when a group starts. Weights where
    ``mask`` is False stay zero (GPTQ after pruning). With ``return_grid``, ``(w, GroupGrid)``."""
    w = w.detach().float().clone()
    out_f, in_f = w.shape
    g = in_f if group_size is None else min(group_size, in_f)
    if in_f % g:
        raise PicojouleError(f"GPTQ: {in_f} inputs are not a multiple of group_size {g}")
    block = max(g, block) if g < in_f else block
    block = block - block % g if g < in_f and block % g else block
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(in_f, dtype=h.dtype) * damp * torch.mean(torch.diag(h))
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except torch.linalg.LinAlgError:
        raise PicojouleError("GPTQ: the calibration Hessian is not positive definite even after dampening; "
                             "raise 'damp' or give more calibration data") from None
    q = torch.zeros_like(w)
    scale = zero = None
    scales, zeros = [], []
    if g == in_f:
        scale, zero = _group_params(w, bits)
        scales.append(scale)
        zeros.append(zero)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            if g < in_f and (i1 + i) % g == 0:
                scale, zero = _group_params(w1[:, i:i + g], bits)
                scales.append(scale)
                zeros.append(zero)
            col = w1[:, i]
            qcol = _fake(col[:, None], scale, zero, bits)[:, 0]
            if mask is not None:
                qcol = qcol * mask[:, i1 + i]
            q[:, i1 + i] = qcol
            e = (col - qcol) / h1[i, i]
            w1[:, i:] -= e[:, None] @ h1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if return_grid:
        return q, GroupGrid(bits, g, torch.cat(scales, dim=1), torch.cat(zeros, dim=1))
    return q


def prune_mask(w: torch.Tensor, sparsity: float | str, act_norm: torch.Tensor | None) -> torch.Tensor:
    """Keep-mask of ``w`` (out x in): per output row, the lowest-scoring ``sparsity`` fraction (or all but N of
    every M consecutive inputs, 'N:M') is dropped. Score: ``|W|``, times the input's L2 norm for Wanda."""
    score = w.detach().abs().float()
    if act_norm is not None:
        score = score * act_norm.float()[None, :]
    out_f, in_f = w.shape
    if isinstance(sparsity, str):
        n, m = n_m(sparsity)
        if in_f % m:
            raise PicojouleError(f"{sparsity} sparsity: {in_f} inputs are not a multiple of {m}")
        groups = score.reshape(out_f, in_f // m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(2, groups.topk(n, dim=2).indices, True)
        return keep.reshape(out_f, in_f)
    drop = int(round(sparsity * in_f))
    keep = torch.ones_like(score, dtype=torch.bool)
    if drop:
        keep.scatter_(1, score.topk(drop, dim=1, largest=False).indices, False)
    return keep


# ---------------------------------------------------------------------------------------------------------
# statistics and the compressed layer


class _Stats:
    """Per-layer input statistics from forward hooks: the Hessian, per-channel max |x| and sum of x^2."""

    def __init__(self, features: int, hessian: bool):
        self.n = 0
        self.absmax = torch.zeros(features)
        self.sq = torch.zeros(features, dtype=torch.float64)
        self.h = torch.zeros(features, features, dtype=torch.float64) if hessian else None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        self.sq += (x.double() ** 2).sum(0)
        if self.h is not None:
            self.h += 2.0 * x.double().T @ x.double()
        self.n += x.shape[0]


class AbsmaxQuantizer(nn.Module):
    """Symmetric per-tensor fake quantizer whose static range is the largest |x| seen while observing
    (SmoothQuant's calibration); the same observe/freeze protocol as :class:`ActivationQuantizer`."""

    def __init__(self, bits: int, layer_name: str):
        super().__init__()
        self.bits, self.layer_name, self.observing, self.seen = bits, layer_name, False, 0.0
        self.register_buffer("scale", torch.tensor(1.0))

    def start_observing(self) -> None:
        self.observing, self.seen = True, 0.0

    def freeze(self) -> bool:
        self.observing = False
        self.scale.fill_(max(self.seen, 1e-8) / (2 ** (self.bits - 1) - 1))
        return self.seen > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.seen = max(self.seen, float(x.detach().abs().max()))
            return x
        q = 2 ** (self.bits - 1) - 1
        return torch.clamp(torch.round(x / self.scale), -q - 1, q) * self.scale


class SmoothedQuantLinear(nn.Module):
    """``linear(q_a(x / s), q_w(W * s))``: SmoothQuant's W8A8 (``s`` = 1 without smoothing). Weights int8
    per output channel with an MSE clip; the input int8 per tensor, calibrated (``calibrate_wrapped``)."""

    def __init__(self, linear: nn.Linear, s: torch.Tensor, name: str, w_bits: int = 8, a_bits: int = 8,
                 a_range: str = "absmax"):
        super().__init__()
        self.register_buffer("inv_s", (1.0 / s).float())
        weight = linear.weight.detach() * s[None, :].to(linear.weight.dtype)
        ratio = _weight_clip_ratio(weight, w_bits)
        wq, w_scale = _fake_quant_weight(weight, ratio, w_bits)
        self.weight = nn.Parameter(wq, requires_grad=False)
        self.w_bits, self.layer_name = w_bits, name
        self.register_buffer("w_scale", w_scale.detach().float())  # per output channel: weight = q * w_scale
        self.bias = linear.bias
        self.input_quant = AbsmaxQuantizer(a_bits, name) if a_range == "absmax" else ActivationQuantizer(a_bits, name)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_quant(x * self.inv_s), self.weight, self.bias)


def _select(model: nn.Module, include: Callable[[str, nn.Linear], bool] | None) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and (include is None or include(n, m))]


@torch.no_grad()
def compress_linears(model: nn.Module, calibration: Iterable[tuple], plan: LinearPlan,
                     include: Callable[[str, nn.Linear], bool] | None = None) -> tuple[nn.Module, dict]:
    """A copy of ``model`` whose selected nn.Linear layers (``include(name, layer)``; default all) are
    compressed by ``plan``, from statistics of ``model(*args)`` over ``calibration`` (an iterable of argument
    tuples, such as (input_ids, attention_mask) batches). Returns (the copy, a summary)."""
    calibration = list(calibration)
    if not calibration:
        raise PicojouleError("compress_linears: expected at least one calibration batch")
    model = copy.deepcopy(model).eval()
    layers = _select(model, include)
    if not layers:
        raise PicojouleError("compress_linears: no nn.Linear layer selected")
    needs_stats = plan.needs_hessian or plan.smooth is not None or (plan.sparsity is not None and plan.select == "wanda")
    stats: dict[str, _Stats] = {}
    if needs_stats:
        hooks = []
        for name, layer in layers:
            stats[name] = _Stats(layer.in_features, plan.needs_hessian)
            hooks.append(layer.register_forward_hook(stats[name]))
        try:
            for args in calibration:
                model(*args)
        finally:
            for h in hooks:
                h.remove()
    zeros = total = 0
    for name, layer in layers:
        st = stats.get(name)
        w = layer.weight.data
        mask = None
        if plan.sparsity is not None:
            norm = torch.sqrt(st.sq / max(st.n, 1)).float() if st is not None and plan.select == "wanda" else None
            mask = prune_mask(w, plan.sparsity, norm)
            w = w * mask
        if plan.a_bits is not None:  # W8A8 (smoothed or not): a wrapper module with an input quantizer
            s = torch.ones(layer.in_features)
            if plan.smooth is not None:
                wmax = w.abs().amax(0).float().clamp_min(1e-5)
                s = (st.absmax.clamp_min(1e-5) ** plan.smooth / wmax ** (1 - plan.smooth)).clamp(1e-2, 1e2)
            layer.weight.data = w
            new = SmoothedQuantLinear(layer, s, name, plan.w_bits or 8, plan.a_bits, plan.a_range)
            model.set_submodule(name, new)
            w = new.weight.data
        elif plan.w_bits is not None:
            if plan.method == "gptq":
                h = st.h / max(st.n, 1)
                w, grid = gptq(w, h, plan.w_bits, plan.group_size, plan.damp, mask=mask, return_grid=True)
                w = w.to(layer.weight.dtype)
            else:
                w, grid = quantize_groups(w, plan.w_bits, plan.group_size, return_grid=True)
                if mask is not None:
                    w = w * mask
            layer.weight.data = w
            layer.group_grid = grid  # for the int4 export (MatMulNBits); a masked zero is on the grid too
        else:
            layer.weight.data = w
        zeros += int((w == 0).sum())
        total += w.numel()
    if plan.a_bits is not None:
        calibrate_wrapped(model, calibration)
    return model, {"layers": len(layers), "weights": total, "zero_weights": zeros,
                   "calibration_batches": len(calibration)}


@torch.no_grad()
def calibrate_wrapped(model: nn.Module, calibration: list[tuple]) -> None:
    """Calibrate every input quantizer of ``model`` on argument tuples (models with several inputs)."""
    quantizers = [m for m in model.modules()
                  if isinstance(m, (ActivationQuantizer, AbsmaxQuantizer)) and m.bits is not None]
    for q in quantizers:
        q.start_observing()
    for args in calibration:
        model(*args)
    for q in quantizers:
        q.freeze()


# ---------------------------------------------------------------------------------------------------------
# the search's recipe for linear layers: a policy's bits, applied the LLM way


@dataclass(frozen=True)
class LinearQuant:
    """How the quantize pass applies a policy's ``w_bits``/``a_bits`` to nn.Linear layers (convolutions keep the
    generic pass: per-channel MSE-clipped weights, per-tensor calibrated inputs).

    * ``weights``: ``"rtn"`` (round-to-nearest) or ``"gptq"`` (:func:`gptq`, from the calibration inputs'
      Hessian), asymmetric with one range per ``group_size`` inputs of a row (None: per output channel);
    * ``activations``: ``"tensor"`` (one static range, calibrated as the generic pass does) or ``"token"`` (an
      asymmetric range per token, taken at run time: the dynamic per-token scheme of LLM W8A8/W4A4 kernels);
    * ``rotate``: a block-diagonal Walsh-Hadamard rotation ``H`` of each linear's input space, ``W x = (W H^T)(H x)``
      (QuaRot, Ashkboos et al. 2024): an orthogonal map that spreads outlier channels over their block, so 4-bit
      activations and weights lose far less. ``H x`` is computed online (``log2(block)`` additions per input
      element); ``W H^T`` is folded offline. Blocks of ``rotate_block`` (a power of two dividing the width);
    * ``smooth``: SmoothQuant's migration strength (None: off), applied before the rotation;
    * ``act_clip``: per-token activations take ``act_clip`` times each token's range (QuaRot clips at 0.9): a
      little clipping of the outliers buys a finer step for the rest;
    * ``act_group``: per-token activations take one range per ``act_group`` consecutive inputs of a token (None:
      one per token), as Atom's W4A4 kernels do (Zhao et al. 2024); with ``rotate`` a group of the rotation's
      block holds one rotated block.

    A search prices what the recipe deploys (:mod:`picojoule.hwmodels.scales`, ``ScaleFormat.of(recipe)``): the
    weight and activation group scales (32 bits per group), the rescale of each group's integer partial sum on the
    vector pipe, the weight-only dequantization, the run-time ranges and the online rotation; the smoothing and the
    clip are folded offline and free."""

    weights: Literal["rtn", "gptq"] = "gptq"
    group_size: int | None = 128
    activations: Literal["tensor", "token"] = "token"
    rotate: bool = False
    rotate_block: int = 128
    smooth: float | None = None
    damp: float = 0.01
    act_clip: float = 1.0
    act_group: int | None = None

    def __post_init__(self) -> None:
        where = "evaluation.linear_quant"
        if self.weights not in ("rtn", "gptq"):
            raise PicojouleError(f"{where}: field 'weights': expected 'rtn' or 'gptq', got {self.weights!r}")
        if self.activations not in ("tensor", "token"):
            raise PicojouleError(f"{where}: field 'activations': expected 'tensor' or 'token', got {self.activations!r}")
        for name in ("group_size", "rotate_block", "act_group"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 2 or v & (v - 1)):
                raise PicojouleError(f"{where}: field '{name}': expected a power of two >= 2, got {v!r}")
        if self.smooth is not None and not 0.0 <= self.smooth <= 1.0:
            raise PicojouleError(f"{where}: field 'smooth': expected 0..1 or null, got {self.smooth!r}")
        if not 0.0 < self.damp < 1.0:
            raise PicojouleError(f"{where}: field 'damp': expected 0 < damp < 1, got {self.damp!r}")
        if not 0.0 < self.act_clip <= 1.0:
            raise PicojouleError(f"{where}: field 'act_clip': expected 0 < act_clip <= 1, got {self.act_clip!r}")


def hadamard(n: int) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard matrix of order ``n`` (a power of two), by Sylvester's construction."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def _rotation_block(width: int, block: int) -> int:
    """The largest power of two <= ``block`` that divides ``width`` (1: no rotation): the rule pricing uses."""
    return int(rotation_block(width, block))


class TokenQuantizer(nn.Module):
    """Asymmetric fake quantization with one range per row of the last dimension (per token), taken from the
    input itself at run time (``clip`` times its range; one range per ``group`` inputs of a token where the width
    divides into them); nothing to calibrate."""

    def __init__(self, bits: int, clip: float = 1.0, group: int | None = None):
        super().__init__()
        self.bits, self.clip, self.group = bits, clip, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group
        if g and x.shape[-1] > g and x.shape[-1] % g == 0:
            shape = x.shape
            return self._quant(x.reshape(*shape[:-1], shape[-1] // g, g)).reshape(shape)
        return self._quant(x)

    def _quant(self, x: torch.Tensor) -> torch.Tensor:
        qmax = 2**self.bits - 1
        lo = x.amin(-1, keepdim=True).clamp(max=0.0) * self.clip
        hi = x.amax(-1, keepdim=True).clamp(min=0.0) * self.clip
        scale = ((hi - lo) / qmax).clamp_min(1e-8)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
        if torch.is_grad_enabled():  # straight-through: the gradient of the rounding is 1
            return x + ((q - zero) * scale - x).detach()
        return (q - zero) * scale

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, per token" + (f" in groups of {self.group}" if self.group else "")
                + (f", clip {self.clip}" if self.clip != 1.0 else ""))


class RecipeLinear(nn.Linear):
    """An nn.Linear quantized by a :class:`LinearQuant`: ``linear(q_a(H (x / s)), W')`` with ``W'`` the fixed
    fake-quantized weight ``Q(W diag(s) H^T)`` (its values frozen: a fine-tune trains the rest of the model).
    ``w_bits``/``a_bits`` as the policy gave them; ``group_grid`` is the weight's integer grid when it has
    one (the int4 export)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, name: str, w_bits: int | None,
                 a_bits: int | None, activations: str, inv_s: torch.Tensor | None, block: int,
                 act_clip: float = 1.0, act_group: int | None = None):
        out_f, in_f = weight.shape
        super().__init__(in_f, out_f, bias is not None, device="meta")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.layer_name, self.w_bits, self.a_bits, self.block = name, w_bits, a_bits, block
        #: the weight's integer grid and sparsity mask (requantize_linears sets them), what QAT keeps it on
        self.weight_grid: GroupGrid | None = None
        self.sparse_mask: torch.Tensor | None = None
        self.qat, self.qat_scale = False, None
        self.register_buffer("inv_s", inv_s)
        self.register_buffer("rotation", hadamard(block) if block > 1 else None)
        if a_bits is None:
            self.input_quant: nn.Module = nn.Identity()
        elif activations == "token":
            self.input_quant = TokenQuantizer(a_bits, act_clip, act_group)
        else:
            self.input_quant = ActivationQuantizer(a_bits, name)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the rotated weight expects it: ``H (x / s)``, unquantized."""
        if self.inv_s is not None:
            x = x * self.inv_s
        if self.rotation is not None:
            shape = x.shape
            x = (x.reshape(*shape[:-1], shape[-1] // self.block, self.block) @ self.rotation.T).reshape(shape)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_quant(self.transform(x)), self.quantized_weight(), self.bias)

    def quantized_weight(self) -> torch.Tensor:
        """The weight the layer multiplies by: the fixed fake-quantized one, or under :meth:`enable_qat` the
        trainable latent weight rounded onto the layer's grid (straight-through: the rounding's gradient is 1)."""
        if not self.qat:
            return self.weight
        w = self.weight if self.weight_grid is None else self.weight_grid.fake(self.weight, self.qat_scale)
        return w if self.sparse_mask is None else w * self.sparse_mask.to(w)

    def enable_qat(self, scales: bool = False) -> None:
        """Quantization-aware fine-tuning: the weight (and the bias) become trainable, the weight kept on the
        layer's integer grid in the forward pass (its zero points fixed; its scales trainable with ``scales``,
        as LSQ). The output is unchanged until a step moves the weight. :meth:`freeze_qat` ends it."""
        self.qat = True
        self.weight.requires_grad_(True)
        self.trainable_bias()
        grid = self.weight_grid
        self.qat_scale = (nn.Parameter(grid.scale.detach().clone().to(self.weight.dtype))
                          if scales and grid is not None else None)

    def trainable_bias(self) -> None:
        """Make the bias (when there is one) a trainable parameter of this layer."""
        if isinstance(self.bias, torch.Tensor) and not isinstance(self.bias, nn.Parameter):
            self.bias = nn.Parameter(self.bias.detach().clone())
        if self.bias is not None:
            self.bias.requires_grad_(True)

    @torch.no_grad()
    def freeze_qat(self) -> None:
        """End :meth:`enable_qat`: the weight fixed at its rounded values (on the grid, with the trained scales),
        nothing of the layer trainable."""
        if not self.qat:
            return
        w = self.quantized_weight().detach().clone()
        grid = self.weight_grid
        if grid is not None and self.qat_scale is not None:
            grid = GroupGrid(grid.bits, grid.group, self.qat_scale.detach().float().clone(), grid.zero)
            self.weight_grid = grid
            if hasattr(self, "group_grid"):
                self.group_grid = grid
        self.qat, self.qat_scale = False, None
        self.weight = nn.Parameter(w, requires_grad=False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}, rotation block={self.block}, "
                f"smoothed={self.inv_s is not None}" + (", qat" if self.qat else ""))


def enable_qat(model: nn.Module, scales: bool = False) -> list[nn.Parameter]:
    """:meth:`RecipeLinear.enable_qat` on every recipe layer of ``model``; every other parameter stays as it was.
    Returns the parameters QAT made trainable."""
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, RecipeLinear):
            m.enable_qat(scales)
            params += [p for p in (m.weight, m.bias, m.qat_scale) if isinstance(p, nn.Parameter)]
    return params


def freeze_qat(model: nn.Module) -> int:
    """:meth:`RecipeLinear.freeze_qat` on every recipe layer of ``model``; returns the layers frozen."""
    layers = [m for m in model.modules() if isinstance(m, RecipeLinear) and m.qat]
    for m in layers:
        m.freeze_qat()
    return len(layers)


@torch.no_grad()
def requantize_linears(model: nn.Module, batches: Iterable[Any], recipe: LinearQuant) -> int:
    """Replace every fake-quantized linear of ``model`` (a QuantLinear from the quantize pass, holding the policy's
    bits over its float weight) by a :class:`RecipeLinear` under ``recipe``, from statistics of one pass over
    ``batches`` (input tensors, or tuples whose first item is the input) with every quantizer of the model let
    through and every weight float. Returns the layers replaced."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)
              and (m.w_bits is not None or m.input_quant.bits is not None)]
    if not layers:
        return 0
    batches = list(batches)
    if not batches:
        raise PicojouleError("evaluation.linear_quant: needs calibration batches (calib_data)")
    stats = {n: _Stats(m.in_features, recipe.weights == "gptq" and m.w_bits is not None) for n, m in layers}
    saved = {n: m.w_bits for n, m in layers}
    hooks = [m.register_forward_hook(stats[n]) for n, m in layers]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for _, m in layers:
            m.w_bits = None  # float weights while the statistics are taken
        with passthrough(model):
            device = next(model.parameters()).device
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        for n, m in layers:
            m.w_bits = saved[n]
        for m, training in modes.items():
            m.training = training
    for name, layer in layers:
        st, w_bits, a_bits = stats[name], layer.w_bits, layer.input_quant.bits
        w = layer.weight.detach().float()
        mask = w != 0
        mask = mask if not bool(mask.all()) else None  # keep a sparsified layer's zeros
        s = None
        if recipe.smooth is not None and a_bits is not None:
            wmax = w.abs().amax(0).clamp_min(1e-5)
            s = (st.absmax.clamp_min(1e-5) ** recipe.smooth / wmax ** (1 - recipe.smooth)).clamp(1e-2, 1e2)
            w = w * s[None, :]
        # a sparsified layer is not rotated: W H^T would be dense
        block = _rotation_block(layer.in_features, recipe.rotate_block) if recipe.rotate and mask is None else 1
        rot = torch.block_diag(*[hadamard(block)] * (layer.in_features // block)) if block > 1 else None
        if rot is not None:
            w = w @ rot.T
        grid = None
        if w_bits is not None:
            group = recipe.group_size if recipe.group_size and layer.in_features % recipe.group_size == 0 else None
            if recipe.weights == "gptq" and st.n and w_bits < 16:  # 16-bit rounding is exact enough
                h = (st.h / st.n).double()
                if s is not None:
                    h = h / s.double()[:, None] / s.double()[None, :]
                if rot is not None:
                    h = rot.double() @ h @ rot.double().T
                w, grid = _cached_gptq(w, h, w_bits, group, recipe.damp, mask)
            else:
                w, grid = quantize_groups(w, w_bits, group, return_grid=True)
                w = w if mask is None else w * mask
        new = RecipeLinear(w.to(layer.weight.dtype), layer.bias, name, w_bits, a_bits, recipe.activations,
                           None if s is None else (1.0 / s).to(layer.weight.device), block, recipe.act_clip,
                           recipe.act_group)
        new.weight_grid, new.sparse_mask = grid, mask
        if grid is not None and rot is None and s is None:
            new.group_grid = grid
        new.train(layer.training)
        model.set_submodule(name, new)
    return len(layers)


#: GPTQ's results by (weight, Hessian, bits, group, damp, mask): a search measures many policies of one model
#: whose statistics come from the float model, so a layer at the same bits is rounded the same way each time
_GPTQ_CACHE: OrderedDict[tuple, tuple[torch.Tensor, GroupGrid]] = OrderedDict()
_GPTQ_CACHE_SIZE = 160


def _digest(t: torch.Tensor | None) -> str:
    if t is None:
        return ""
    return hashlib.blake2b(t.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).hexdigest()


def _cached_gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group: int | None, damp: float,
                 mask: torch.Tensor | None) -> tuple[torch.Tensor, GroupGrid]:
    key = (tuple(w.shape), _digest(w), _digest(h), bits, group, damp, _digest(mask))
    hit = _GPTQ_CACHE.get(key)
    if hit is None:
        hit = gptq(w, h, bits, group, damp, mask=mask, return_grid=True)
        _GPTQ_CACHE[key] = hit
        while len(_GPTQ_CACHE) > _GPTQ_CACHE_SIZE:
            _GPTQ_CACHE.popitem(last=False)
    else:
        _GPTQ_CACHE.move_to_end(key)
    return hit[0].clone(), hit[1]


def recipe_shells(model: nn.Module, recipe: LinearQuant) -> int:
    """Replace every fake-quantized linear of ``model`` by a :class:`RecipeLinear` of the structure that
    :func:`requantize_linears` gives under ``recipe`` (a layer with zeros is taken as sparsified), its values to
    be loaded from a saved state (a fine-tuned winner): no statistics, no data. Returns the layers replaced."""
    n = 0
    for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)
                        and (m.w_bits is not None or m.input_quant.bits is not None)]:
        a_bits = layer.input_quant.bits
        sparse = not bool((layer.weight != 0).all())
        block = _rotation_block(layer.in_features, recipe.rotate_block) if recipe.rotate and not sparse else 1
        inv_s = torch.ones(layer.in_features) if recipe.smooth is not None and a_bits is not None else None
        new = RecipeLinear(layer.weight.detach().clone(), layer.bias, name, layer.w_bits, a_bits, recipe.activations,
                           inv_s, block, recipe.act_clip, recipe.act_group)
        new.train(layer.training)
        model.set_submodule(name, new)
        n += 1
    return n


def recipe_calibration(recipe: LinearQuant) -> Callable[[nn.Module, list], int]:
    """The ``calibrate(model, batches)`` callback of a search or ``compress`` under ``recipe``: the linear layers
    requantized (:func:`requantize_linears`), then every remaining activation range calibrated."""
    def calibrate(model: nn.Module, batches: list) -> int:
        requantize_linears(model, batches, recipe)
        calibrate_activations(model, batches)
        return len(batches)

    return calibrate


__all__ = ["GroupGrid", "LinearPlan", "enable_qat", "freeze_qat", "LinearQuant", "RecipeLinear", "TokenQuantizer", "hadamard",
           "recipe_calibration", "recipe_shells", "requantize_linears", "compress_linears", "gptq", "quantize_groups", "prune_mask", "SmoothedQuantLinear",
           "n_m"]
