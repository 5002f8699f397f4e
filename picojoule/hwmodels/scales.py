"""What quantization scales cost: the pricing stage of a scale format (how quantized linear layers carry their
scales, e.g. the LLM recipe of :class:`picojoule.spaces.linear_ptq.LinearQuant`).

Without a format the cost model prices a layer's bits alone: per-channel weight scales and one static range per
input tensor, whose cost is negligible beside the layer's MACs. The LLM recipes are finer, and their scales are
not free (QServe, Lin et al. 2024, measure 20-90% of the runtime of W4A4 and W4A16 GPU kernels spent on
dequantization; APEX4, Guo et al. 2026, find Atom-style W4A4 with groups of 128 at 0.43-0.47x the speed of FP16 on
A100 in compute-bound GEMMs). This stage charges, for each quantized linear layer:

* **scale traffic**: a scale and a zero point (``scale_bits`` together) per ``weight_group`` weights, and per
  token or per ``act_group`` inputs of a token for activations whose ranges are taken at run time: the layer's
  weight and activation widths grow by ``scale_bits / group`` bits per element (which also makes model size count
  the scales);
* **vector work** on the target's widest mode (the CUDA cores of a GPU, the vector unit of a CPU), at the layer's
  op-kind efficiency, added to the layer's compute time and energy (not overlapped with the MACs: the measured
  overheads above are what overlap leaves):

  - an integer GEMM (both operands 8 bits or fewer) rescales each output's partial sum once per group of its
    inputs, ``min(weight_group, act_group)``, inside its main loop: ``compute.rescale_ops`` vector ops each (the
    target's figure: convert, two scale multiplies, accumulate is 4; A100's is calibrated to APEX4's
    measurement); where neither operand is grouped, once per output in the epilogue, ``EPILOGUE_OPS``;
  - a weight-only layer (weights 8 bits or fewer, activations 16 or more) dequantizes each weight once per tile of
    ``TILE_ROWS`` rows (tokens) of the GEMM, ``DEQUANT_OPS`` each;
  - ranges taken at run time cost ``RANGE_OPS`` per input element (the min and max of its token or group);
  - an online block Walsh-Hadamard rotation (QuaRot) costs ``log2(block)`` additions per input element, where
    ``block`` is the largest power of two up to ``rotate_block`` that divides the layer's input width (a
    sparsified layer is not rotated, as the recipe does).

  Ranges and rotations run in fp16, ``compute.vector_fp16_factor`` of them per fp32 op (4 on A100); rescales
  and dequantization run in fp32.

SmoothQuant's migration and the clip ratio are folded offline and cost nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from picojoule.hwmodels.target import OP_KINDS

#: rows (tokens) of a GEMM that share one dequantized copy of a weight tile (CUTLASS/Marlin thread-block tiles)
TILE_ROWS = 128
#: vector ops to dequantize one weight element of a weight-only kernel: convert int -> float, fused multiply-add
DEQUANT_OPS = 2
#: vector ops per output to rescale an integer GEMM's result by its per-token and per-channel scales (epilogue)
EPILOGUE_OPS = 2
#: vector ops per input element to take a run-time range: its share of the min and max reductions
RANGE_OPS = 2


@dataclass(frozen=True)
class ScaleFormat:
    """How quantized linear layers carry their scales (see the module doc); pure data, hashable."""

    weight_group: int | None = None  # inputs per weight scale (None: one per output channel)
    dynamic: bool = False  # activation ranges taken at run time (per token, or per act_group inputs of a token)
    act_group: int | None = None  # with dynamic: inputs per activation scale (None: one per token)
    rotate_block: int | None = None  # the online rotation's largest block (None: no rotation)
    scale_bits: int = 32  # one scale and one zero point, fp16 each

    @classmethod
    def of(cls, recipe: Any) -> ScaleFormat:
        """The format of a linear-layer recipe (a :class:`~picojoule.spaces.linear_ptq.LinearQuant`, or its
        configuration: anything with its fields)."""
        dynamic = recipe.activations == "token"
        return cls(weight_group=recipe.group_size, dynamic=dynamic,
                   act_group=recipe.act_group if dynamic else None,
                   rotate_block=recipe.rotate_block if recipe.rotate else None)


def rotation_block(width: Any, block: int) -> Any:
    """The largest power of two up to ``block`` (a power of two) that divides ``width`` (1: no rotation); ``width``
    an int or an integer array."""
    return np.minimum(width & -width, block)


def _vector_rate(target: Any) -> tuple[float, float]:
    """(peak ops/s, pJ per op) of the target's widest mode: where scales and rotations are computed."""
    mode = target.compute.modes[-1]
    return mode.peak_macs_per_s, mode.mac_energy_pj


def price_scales(fmt: ScaleFormat, st: Any, ga: Any) -> np.ndarray:
    """Apply ``fmt`` to the pricing state ``st`` of graph arrays ``ga`` (after every pass's stage): widen the
    quantized linear layers' ``w_bits``/``a_bits`` by their scales and return the (N, L) vector ops they add."""
    linear = ga.has_weights & (ga.kind == 2)  # nn.Linear layers (OP_KINDS[2] == "linear"): what the recipe governs
    w_q = linear & (st.w_bits <= 8)
    a_q = linear & (st.a_bits <= 8)
    k = np.maximum(st.cin, 1.0) * ga.k_area  # inputs per output (the first half's, for a low-rank split)
    macs = np.asarray(st.macs, dtype=np.float64)
    out = ga.out_elems * st.k_out * st.batch + st.mid  # outputs of both halves of a split layer
    ins = (ga.in_a * st.k_a) * st.batch + st.mid  # inputs of both halves
    w_bits, a_bits = st.w_bits, st.a_bits
    a0 = a_bits
    if fmt.weight_group:
        w_bits = np.where(w_q, w_bits + fmt.scale_bits / fmt.weight_group, w_bits)
    if fmt.dynamic:
        per = np.full_like(k, float(fmt.act_group)) if fmt.act_group else k
        a_bits = np.where(a_q, a_bits + fmt.scale_bits / np.minimum(per, k), a_bits)
    st.w_bits, st.a_bits = w_bits, a_bits
    # partial-sum rescales of integer GEMMs: once per group of inputs, or once per output where nothing is grouped
    groups = [g for g in (fmt.weight_group, fmt.act_group if fmt.dynamic else None) if g]
    rescales = macs / min(groups) if groups else out
    compute = st.target.compute
    per_rescale = compute.rescale_ops if groups else EPILOGUE_OPS
    ops = np.where(w_q & a_q, rescales * per_rescale, 0.0)
    # weight-only layers dequantize each weight once per tile of rows
    weights = st.parts[0][0] * st.parts[0][1] + (st.parts[1][0] * st.parts[1][1] if len(st.parts) > 1 else 0.0)
    rows = np.divide(macs, np.maximum(weights, 1.0))  # GEMM rows (tokens): MACs per weight
    ops = ops + np.where(w_q & (a0 >= 16), weights * np.ceil(rows / TILE_ROWS) * DEQUANT_OPS, 0.0)
    half = 1.0 / compute.vector_fp16_factor  # ranges and rotations run in fp16 (QuaRot's kernels)
    if fmt.dynamic:
        ops = ops + np.where(a_q, ins * (RANGE_OPS * half), 0.0)
    if fmt.rotate_block:
        width = np.maximum(st.cin * ga.k_area, 1.0).astype(np.int64)
        block = rotation_block(width, fmt.rotate_block)
        rotated = linear & ((w_q | a_q) & (np.asarray(st.zeros) <= 0))
        ops = ops + np.where(rotated, ins * (np.log2(block) * half), 0.0)
    return ops


def vector_time(ga: Any, target: Any, wl: Any) -> np.ndarray | float:
    """Seconds of the workload's vector ops per layer (0.0 without any), at the widest mode and the op kind's
    efficiency."""
    if wl.vector_ops is None:
        return 0.0
    peak, _ = _vector_rate(target)
    eff = np.asarray([target.compute.efficiency[kind] for kind in OP_KINDS])[ga.kind]
    return wl.vector_ops / (peak * eff)


def vector_energy(target: Any, wl: Any) -> np.ndarray | float:
    """Joules of the workload's vector ops per layer (0.0 without any)."""
    if wl.vector_ops is None:
        return 0.0
    return wl.vector_ops * _vector_rate(target)[1] * 1e-12
