"""Rewrite picojoule's QDQ export so that ONNX Runtime runs it with integer kernels (QLinearConv, QGemm,
QLinearAdd ...), as its own ``quantize_static`` output runs.

The fake-quantized model quantizes only each layer's *input* and *weight*. That graph is exact but slow in ONNX
Runtime: its QDQ fusions turn ``DQ(x), DQ(w) -> Conv -> Q`` into one QLinearConv only when the convolution's
output is quantized too, and only when nothing but an optional Relu stands between them. Left as exported, a
ResNet runs every convolution in float after dequantizing its weights at every call (2.3x slower than FP32 here).

The rewrite, in order (each a small pass over the graph; the ONNX file stays a plain QDQ model):

1. **BatchNorm folding into quantized weights.** ``Conv(DQ(q, s)) -> BatchNormalization`` becomes
   ``Conv(DQ(q', s'), bias')`` with ``k = gamma / sqrt(var + eps)`` per output channel, ``s' = s |k|`` and
   ``q' = sign(k) q``. Per-channel weight scales make this exact (the integers do not change), except a weight
   at -128 in a channel with negative ``k``: it becomes 127 (one step; counted in the report).
2. **Sub-8-bit clipping after the quantizer.** ``Clip(x, lo s, hi s) -> Q(s)`` becomes ``Q(s) -> Clip(lo, hi)``
   on the 8-bit integers: the same values, and the Clip no longer stands between a convolution and its output Q.
3. **Integer bias.** A float bias of a quantized convolution becomes ``DQ(int32 round(b / (s_x s_w)))``.
4. **8-bit quantizers where the fake-quant model has none** (the only approximation): at every quantized
   convolution's output (after its Relu, if one follows) that does not feed a quantizer already, and at every
   float input of an Add that joins quantized branches. An input that already has an 8-bit quantizer (no
   integer Clip after it) reuses it, as ``quantize_static`` gives a tensor one scale. Their ranges are the
   largest magnitudes seen on the given batches (these tensors are float in the fake-quant model).

``integer_onnx(model, batches)`` returns the new model and an :class:`IntegerReport` (what was folded, inserted,
and which ops ONNX Runtime then runs as integer kernels).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from picojoule.compilers.export import _drop_unused
from picojoule.errors import PicojouleError

__all__ = ["IntegerReport", "integer_onnx", "ort_kernel_counts"]

#: the ops whose quantized form ONNX Runtime runs with integer kernels on CPU (after its QDQ fusions)
INTEGER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "QLinearAdd", "QLinearMul",
                   "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "MatMulIntegerToFloat",
                   "DynamicQuantizeMatMul", "ConvInteger", "MatMulNBits", "QLinearSigmoid", "QLinearLeakyRelu")


@dataclass
class IntegerReport:
    """What :func:`integer_onnx` changed, and what ONNX Runtime makes of the result."""

    bn_folded: int = 0
    weights_saturated: int = 0  # weights at -128 in a channel whose BatchNorm scale is negative (now 127)
    clips_moved: int = 0
    biases_quantized: int = 0
    quantizers_inserted: int = 0
    quantizers_reused: int = 0
    relus_dropped: int = 0
    moves_on_integers: int = 0  # Slice/Pad/Gather moved onto the integers, before their DequantizeLinear
    quantizers_dropped: int = 0  # the quantizers after them, which only requantized
    calibration_batches: int = 0
    kernels: dict[str, int] = field(default_factory=dict)  # op type -> count in ORT's optimized graph

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        ints = {k: v for k, v in self.kernels.items() if k in INTEGER_KERNELS}
        floats = {k: v for k, v in self.kernels.items() if k in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm",
                                                                  "NchwcConv", "FusedMatMul")}
        return (f"integer kernels {sum(ints.values())} ({', '.join(f'{k} {v}' for k, v in sorted(ints.items()))}); "
                f"float MAC kernels {sum(floats.values())}"
                + (f" ({', '.join(f'{k} {v}' for k, v in sorted(floats.items()))})" if floats else "")
                + f"; BatchNorms folded {self.bn_folded}, quantizers added {self.quantizers_inserted} "
                f"(reused {self.quantizers_reused})")


class _Graph:
    """Index of an ONNX graph: producers, consumers and initializers, with fresh names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.graph = model, model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self._names = Counter[str]()
        self.reindex()

    def reindex(self) -> None:
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.graph.output}

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def fresh(self, stem: str) -> str:
        self._names[stem] += 1
        return f"{stem}__int{self._names[stem]}"

    def add_init(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def op(self, node: onnx.NodeProto | None, op_type: str) -> bool:
        return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")

    def dq_of_const(self, tensor: str) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray, np.ndarray] | None:
        """(DQ node, integers, scale, zero point) when ``tensor`` is a DequantizeLinear of an integer initializer."""
        node = self.producer.get(tensor)
        if not self.op(node, "DequantizeLinear"):
            return None
        q = self.const(node.input[0])
        scale = self.const(node.input[1])
        zp = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros_like(q, shape=())
        if q is None or scale is None or zp is None:
            return None
        return node, q, scale, zp

    def quantized_mac(self, node: onnx.NodeProto) -> bool:
        """A Conv/Gemm/MatMul whose input and weight both come from DequantizeLinear."""
        return (node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) >= 2
                and self.op(self.producer.get(node.input[0]), "DequantizeLinear")
                and self.dq_of_const(node.input[1]) is not None)

    def topo_sort(self) -> None:
        known = {i.name for i in self.graph.input} | set(self.inits) | {""}
        nodes, done = list(self.graph.node), []
        while nodes:
            ready = [n for n in nodes if all(i in known for i in n.input)]
            if not ready:
                raise PicojouleError("integer ONNX rewrite: the graph has a cycle or an undefined input")
            for n in ready:
                known.update(n.output)
                done.append(n)
            nodes = [n for n in nodes if n not in ready]
        del self.graph.node[:]
        self.graph.node.extend(done)
        self.reindex()


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fold_batchnorm(g: _Graph, report: IntegerReport) -> None:
    for bn in [n for n in g.graph.node if g.op(n, "BatchNormalization")]:
        conv = g.producer.get(bn.input[0])
        if not g.op(conv, "Conv") or len(g.consumers.get(conv.output[0], [])) != 1 or conv.output[0] in g.outputs:
            continue
        dq = g.dq_of_const(conv.input[1])
        params = [g.const(i) for i in bn.input[1:5]]
        if dq is None or any(p is None for p in params) or len(g.consumers.get(conv.input[1], [])) != 1:
            continue
        dq_node, q, scale, zp = dq
        if q.dtype != np.int8 or np.any(zp != 0) or _attr(dq_node, "axis", 1) != 0 or scale.size not in (1, q.shape[0]):
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        k = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        flip = np.where(k < 0, -1, 1).reshape(-1, *[1] * (q.ndim - 1))
        wide = q.astype(np.int32) * flip
        report.weights_saturated += int((wide > 127).sum())
        new_q = np.clip(wide, -128, 127).astype(np.int8)
        new_scale = (np.broadcast_to(scale.astype(np.float64), k.shape) * np.abs(k)).astype(np.float32)
        bias = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(k.shape)
        if bias is None:
            continue
        new_bias = ((bias.astype(np.float64) - mean) * k + beta).astype(np.float32)
        dq_node.input[0] = g.add_init(dq_node.input[0], new_q)
        dq_node.input[1] = g.add_init(dq_node.input[1], new_scale)
        dq_node.input[2:] = [g.add_init(dq_node.input[1] + "_zp", np.zeros(k.shape, np.int8))]
        conv.input[2:] = [g.add_init(f"{conv.name or 'conv'}_bias", new_bias)]
        conv.output[0] = bn.output[0]
        g.graph.node.remove(bn)
        report.bn_folded += 1
        g.reindex()


def _move_clips(g: _Graph, report: IntegerReport) -> None:
    """``Clip(x, a, b) -> Q(s, zp)`` (the Clip feeding only Qs) becomes ``Q(s, zp) -> Clip_int``."""
    for clip in [n for n in g.graph.node if g.op(n, "Clip")]:
        users = g.consumers.get(clip.output[0], [])
        if not users or not all(g.op(u, "QuantizeLinear") for u in users) or clip.output[0] in g.outputs:
            continue
        lo = g.const(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
        hi = g.const(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        if lo is None or hi is None:
            continue
        for q in users:
            scale, zp = g.const(q.input[1]), g.const(q.input[2]) if len(q.input) > 2 else None
            if scale is None or zp is None or scale.size != 1:
                break
            info = np.iinfo(zp.dtype)
            ilo = np.clip(np.round(float(lo) / float(scale)) + int(zp), info.min, info.max).astype(zp.dtype)
            ihi = np.clip(np.round(float(hi) / float(scale)) + int(zp), info.min, info.max).astype(zp.dtype)
            q.input[0] = clip.input[0]
            q_out = q.output[0]
            clipped = g.fresh(q_out + "_clip")
            for user in g.consumers.get(q_out, []):
                user.input[:] = [clipped if i == q_out else i for i in user.input]
            g.graph.node.append(helper.make_node("Clip", [q_out, g.add_init(q_out + "_lo", ilo),
                                                          g.add_init(q_out + "_hi", ihi)], [clipped],
                                                 name=g.fresh("int_clip")))
            report.clips_moved += 1
        else:
            g.graph.node.remove(clip)
        g.topo_sort()


def _quantize_biases(g: _Graph, report: IntegerReport) -> None:
    for conv in [n for n in g.graph.node if g.op(n, "Conv") and g.quantized_mac(n)]:
        if len(conv.input) < 3 or not conv.input[2] or g.const(conv.input[2]) is None:
            continue
        x_dq = g.producer[conv.input[0]]
        x_scale = g.const(x_dq.input[1])
        _, _, w_scale, _ = g.dq_of_const(conv.input[1])  # type: ignore[misc]
        if x_scale is None or x_scale.size != 1:
            continue
        scale = (float(x_scale) * w_scale.astype(np.float64)).reshape(-1)
        bias = g.const(conv.input[2]).astype(np.float64)
        scale = np.broadcast_to(scale, bias.shape)
        q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        out = g.fresh(conv.input[2] + "_dq")
        g.graph.node.append(helper.make_node(
            "DequantizeLinear", [g.add_init(conv.input[2] + "_q", q), g.add_init(conv.input[2] + "_scale",
                                                                                 scale.astype(np.float32)),
                                 g.add_init(conv.input[2] + "_zp", np.zeros(bias.shape, np.int32))],
            [out], axis=0, name=g.fresh("bias_dq")))
        conv.input[2] = out
        report.biases_quantized += 1
    g.topo_sort()


def _points(g: _Graph) -> list[tuple[str, list[onnx.NodeProto]]]:
    """(tensor, the consumers that should read it through a new Q/DQ) for the quantizers to add."""
    wanted: dict[str, list[onnx.NodeProto]] = {}

    def after_relu(tensor: str) -> str:
        users = g.consumers.get(tensor, [])
        if len(users) == 1 and g.op(users[0], "Relu") and tensor not in g.outputs:
            return users[0].output[0]
        return tensor

    def want(tensor: str, users: list[onnx.NodeProto]) -> None:
        if tensor in g.outputs or tensor in g.inits:
            return
        wanted.setdefault(tensor, [])
        wanted[tensor].extend(u for u in users if u not in wanted[tensor])

    integer = set()  # tensors computed by integer kernels once the rewrite is done
    for node in g.graph.node:
        if g.quantized_mac(node) and node.op_type == "Conv":
            integer.add(node.output[0])
            integer.add(after_relu(node.output[0]))
    for node in g.graph.node:  # Adds joining quantized branches: each float input through a Q/DQ
        if g.op(node, "Add") and any(i in integer or g.op(g.producer.get(i), "DequantizeLinear") for i in node.input):
            for i in node.input:
                if not g.op(g.producer.get(i), "DequantizeLinear"):
                    want(i, [node])
            integer.add(node.output[0])
            integer.add(after_relu(node.output[0]))
    for node in list(g.graph.node):  # quantized convs' and Adds' outputs that reach no quantizer
        if node.output[0] in integer and (g.op(node, "Add") or (g.op(node, "Conv") and g.quantized_mac(node))):
            out = after_relu(node.output[0])
            users = g.consumers.get(out, [])
            others = [u for u in users if not g.op(u, "QuantizeLinear")]
            if others or len(users) > 1:  # ORT fuses an op with its output Q only when that Q is its one reader
                want(out, others)
    return list(wanted.items())


def _reusable_q(g: _Graph, tensor: str) -> onnx.NodeProto | None:
    """An existing 8-bit quantizer of ``tensor`` whose integers are not clipped further (full 8-bit range)."""
    for user in g.consumers.get(tensor, []):
        if not g.op(user, "QuantizeLinear") or g.const(user.input[1]) is None or g.const(user.input[1]).size != 1:
            continue
        if all(g.op(u, "DequantizeLinear") for u in g.consumers.get(user.output[0], [])):
            return user
    return None


def _calibrate(g: _Graph, tensors: list[str], batches: Sequence[np.ndarray]) -> dict[str, tuple[float, int]]:
    """(scale, uint8 zero point) per tensor: its whole range over ``batches`` (and 0) on the uint8 grid. These
    tensors are float in the fake-quant model, so the range clips nothing."""
    import onnxruntime as ort

    probe = copy.deepcopy(g.model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    lo = dict.fromkeys(tensors, np.inf)
    hi = dict.fromkeys(tensors, -np.inf)
    for batch in batches:
        for t, value in zip(tensors, session.run(tensors, {name: np.asarray(batch, np.float32)})):
            lo[t], hi[t] = min(lo[t], float(value.min())), max(hi[t], float(value.max()))
    ranges = {}
    for t in tensors:  # uint8 over [min(lo, 0), max(hi, 0)]: asymmetric, as quantize_static's activations
        low, high = min(lo[t], 0.0), max(hi[t], 0.0)
        scale = max((high - low) / 255, 1e-12)
        ranges[t] = (scale, int(np.clip(np.round(-low / scale), 0, 255)))
    return ranges


def _redirect(g: _Graph, tensor: str, new: str, users: list[onnx.NodeProto], keep: onnx.NodeProto | None = None
              ) -> None:
    """``users`` and every other quantizer of ``tensor`` but ``keep`` read ``new`` (the 8-bit copy) instead: the
    other quantizers (sub-8-bit ones, clipped after) requantize it, so ``tensor`` has one quantizer left."""
    others = [u for u in g.consumers.get(tensor, []) if g.op(u, "QuantizeLinear") and u is not keep]
    for user in [*users, *others]:
        user.input[:] = [new if i == tensor else i for i in user.input]


def _insert_quantizers(g: _Graph, batches: Sequence[np.ndarray], report: IntegerReport) -> None:
    points = _points(g)
    fresh = []
    for tensor, users in points:
        q = _reusable_q(g, tensor)
        if q is not None:  # the tensor's own 8-bit quantizer: read its integers through one more DQ
            out = g.consumers[q.output[0]][0].output[0]
            _redirect(g, tensor, out, users, keep=q)
            report.quantizers_reused += 1
        else:
            fresh.append((tensor, users))
    if fresh:
        ranges = _calibrate(g, [t for t, _ in fresh], batches)
        report.calibration_batches = len(batches)
        for tensor, users in fresh:
            scale, zero = ranges[tensor]
            zp = np.array(zero, np.uint8)
            s_name, z_name = g.add_init(tensor + "_scale", np.array(scale, np.float32)), g.add_init(tensor + "_zp", zp)
            q_out, dq_out = g.fresh(tensor + "_q"), g.fresh(tensor + "_dq")
            g.graph.node.append(helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q_out], name=g.fresh("q")))
            g.graph.node.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                                 name=g.fresh("dq")))
            _redirect(g, tensor, dq_out, users)
            report.quantizers_inserted += 1
    g.topo_sort()


def _drop_relus_before_quantizers(g: _Graph, report: IntegerReport) -> None:
    """A Relu read only by quantizers whose zero point is their range's minimum (uint8 zp 0, int8 zp -128) does
    nothing the quantizers do not do (they saturate negatives to the zero point): drop it. ONNX Runtime drops it
    itself for a single quantizer; with two (a conv's and a shortcut's) it would keep it and run the Add in float."""
    for relu in [n for n in g.graph.node if g.op(n, "Relu")]:
        users = g.consumers.get(relu.output[0], [])
        if not users or relu.output[0] in g.outputs:
            continue
        ok = True
        for q in users:
            zp = g.const(q.input[2]) if g.op(q, "QuantizeLinear") and len(q.input) > 2 else None
            if zp is None or zp.size != 1 or int(zp) != np.iinfo(zp.dtype).min:
                ok = False
        if not ok:
            continue
        for q in users:
            q.input[0] = relu.input[0]
        g.graph.node.remove(relu)
        report.relus_dropped += 1
    g.topo_sort()


_MOVES = ("Slice", "Pad", "Gather", "Transpose")  # data movement that gives the same integers whatever the scale


def _scalar_dq(g: _Graph, tensor: str) -> onnx.NodeProto | None:
    """The DequantizeLinear producing ``tensor`` when its scale and zero point are constant scalars."""
    node = g.producer.get(tensor)
    if not g.op(node, "DequantizeLinear") or len(node.input) < 3:
        return None
    scale, zp = g.const(node.input[1]), g.const(node.input[2])
    return node if scale is not None and zp is not None and scale.size == 1 and zp.size == 1 else None


def _movable(g: _Graph, node: onnx.NodeProto) -> bool:
    if not g.op(node, node.op_type) or node.op_type not in _MOVES:
        return False
    if node.op_type == "Pad":  # constant mode, zero fill: on the integers the fill is the zero point
        value = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(())
        return (_attr(node, "mode", b"constant") in (b"constant", "constant") and value is not None
                and float(np.asarray(value).reshape(-1)[0] if np.asarray(value).size else 0.0) == 0.0)
    if node.op_type == "Gather":
        return g.const(node.input[1]) is not None
    return True


def _moves_on_integers(g: _Graph, report: IntegerReport) -> None:
    """``DQ(q) -> Slice/Pad/Gather ... -> Q -> DQ`` becomes ``q -> Slice/Pad/Gather ... -> DQ``: the data movement
    runs on the 8-bit integers (a Pad fills with the zero point), and the quantizer after it, which would only
    requantize values already on a grid, goes. Option-A shortcuts (a strided Slice, then a channel Pad or a
    Gather after pruning) then cost no dequantize and quantize each, and move a quarter of the bytes."""
    while True:  # one at a time: topo_sort copies the nodes, so none is held across it
        found = [(n, d) for n in g.graph.node if _movable(g, n) and (d := _scalar_dq(g, n.input[0])) is not None]
        if not found:
            return
        node, dq = found[0]
        ints, scale, zp = dq.input
        node.input[0] = ints
        if node.op_type == "Pad":
            fill = g.add_init(node.name or "pad", np.asarray(g.const(zp)).reshape(()))
            node.input[:] = [node.input[0], node.input[1], fill, *node.input[3:]]
        moved, new_int = node.output[0], g.fresh(node.output[0] + "_int")
        node.output[0] = new_int
        g.graph.node.append(helper.make_node("DequantizeLinear", [new_int, scale, zp], [moved], name=g.fresh("dq")))
        report.moves_on_integers += 1
        g.reindex()
        users = g.consumers.get(moved, [])
        if (moved not in g.outputs and len(users) == 1 and g.op(users[0], "QuantizeLinear")
                and g.const(users[0].input[2]) is not None and g.const(users[0].input[2]).dtype == np.uint8
                and g.const(zp).dtype == np.uint8
                and all(g.op(u, "DequantizeLinear") for u in g.consumers.get(users[0].output[0], []))):
            q = users[0]
            for dq2 in list(g.consumers.get(q.output[0], [])):
                for reader in g.consumers.get(dq2.output[0], []):
                    reader.input[:] = [moved if i == dq2.output[0] else i for i in reader.input]
                g.graph.node.remove(dq2)
            g.graph.node.remove(q)
            report.quantizers_dropped += 1
        g.topo_sort()


def _drop_dead_nodes(g: _Graph) -> None:
    """Remove nodes none of whose outputs is read (the DequantizeLinears the rewrite bypassed)."""
    while True:
        g.reindex()
        dead = [n for n in g.graph.node if not any(o in g.outputs or g.consumers.get(o) for o in n.output)]
        if not dead:
            return
        for n in dead:
            g.graph.node.remove(n)


def ort_kernel_counts(model: onnx.ModelProto | str, threads: int = 1) -> dict[str, int]:
    """Op type -> count in ONNX Runtime's optimized form of ``model`` (what its CPU provider really runs)."""
    import os
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.optimized_model_filepath = out
        opts.log_severity_level = 3
        src = model if isinstance(model, str) else model.SerializeToString()
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(out)
    return dict(Counter(n.op_type for n in optimized.graph.node))


def integer_onnx(model: onnx.ModelProto, batches: Sequence[np.ndarray | torch.Tensor]) -> tuple[onnx.ModelProto,
                                                                                                 IntegerReport]:
    """A copy of the QDQ ``model`` rewritten for ONNX Runtime's integer kernels (see the module docstring);
    ``batches`` (model inputs, e.g. calibration images) set the ranges of the quantizers it adds."""
    g = _Graph(copy.deepcopy(model))
    report = IntegerReport()
    arrays = [b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b) for b in batches]
    _fold_batchnorm(g, report)
    _move_clips(g, report)
    _quantize_biases(g, report)
    if not arrays and _points(g):
        raise PicojouleError("integer ONNX rewrite: calibration batches are needed for the quantizers it adds")
    _insert_quantizers(g, arrays, report)
    _drop_relus_before_quantizers(g, report)
    _moves_on_integers(g, report)
    _drop_dead_nodes(g)
    _drop_unused(g.graph)
    onnx.checker.check_model(g.model)
    report.kernels = ort_kernel_counts(g.model)
    return g.model, report
