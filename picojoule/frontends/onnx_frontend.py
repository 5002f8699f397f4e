"""ONNX file -> RawOps. Shapes come from ONNX shape inference; weights are initializers (or constants
computed from them). A MatMul or Gemm with a constant operand is a linear layer, and a following
Add of a constant is folded into it as its bias. Layers are named after their weight initializer
(``layer1.0.conv1.weight`` -> ``layer1.0.conv1``), as exported from torch, else after the node.

Note: torch's exporter folds BatchNorm into the preceding Conv by default; the file then holds a
C-element bias where the torch module counted a 2C-element BN scale and shift.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import onnx
from onnx import shape_inference

from picojoule.errors import PicojouleError
from picojoule.graph import RawOp

_ACT = {"Relu", "Gelu", "Sigmoid", "Tanh", "Clip", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu", "Erf", "Exp",
        "Sqrt", "Neg", "Selu", "Softplus", "PRelu", "Mish", "Reciprocal", "Pow"}
_BINARY = {"Add": "add", "Sub": "add", "Mul": "mul", "Div": "mul"}
_POOL = {"GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool"}
#: ops whose trailing inputs are metadata (dtype, shape, pads, axes), not data
_DATA_INPUTS = {"CastLike": 1, "Expand": 1, "Reshape": 1, "Slice": 1, "Pad": 1, "Squeeze": 1, "Unsqueeze": 1,
                "Tile": 1, "Resize": 1, "ConstantOfShape": 0}
_PASS = {"Reshape", "Flatten", "Identity", "Dropout", "Squeeze", "Unsqueeze", "Cast", "CastLike", "Expand"}


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise PicojouleError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path))
        return shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:
        raise PicojouleError(f"{path}: not a readable ONNX model: {str(e).splitlines()[0]}") from None


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in g.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _name_of(tensor: str, uses: Counter, fallback: str, suffix: str) -> str:
    """A layer name from its parameter tensor when it looks like a torch parameter name."""
    if tensor.endswith(suffix) and uses[tensor] == 1:
        return tensor.removesuffix(suffix)
    return fallback


def onnx_ops(path: Path) -> tuple[list[RawOp], list[str], list[str]]:
    """Translate the ONNX file at ``path``; returns (ops, input tensors, output tensors)."""
    model = _load(path)
    g = model.graph
    shapes = _shapes(model)
    constants = {init.name for init in g.initializer}
    inputs = [i.name for i in g.input if i.name not in constants]
    uses = Counter(t for node in g.node for t in node.input)
    ops: list[RawOp] = []
    by_output: dict[str, RawOp] = {}
    swapped: dict[str, bool] = {}
    for node in g.node:
        data = node.input[: _DATA_INPUTS.get(node.op_type, len(node.input))]
        acts = [t for t in data if t and t not in constants]
        consts = [t for t in node.input if t and t in constants]
        if not acts or node.op_type in ("Shape", "Size"):  # shape metadata is constant at fixed shapes
            constants.update(node.output)
            continue
        out = node.output[0]
        if out not in shapes or any(t not in shapes for t in acts):
            missing = out if out not in shapes else next(t for t in acts if t not in shapes)
            raise PicojouleError(f"{path}: tensor '{missing}' of node '{node.name}' has no static shape "
                                 "(export with fixed input shapes)")
        op = RawOp(node.name or out, "fixed", acts, out, shapes[out], [shapes[t] for t in acts])
        t = node.op_type
        swapped[out] = False
        if t == "Conv":
            w = shapes[node.input[1]]
            groups = int(_attr(node, "group", 1))
            op.op, op.name = "conv", _name_of(node.input[1], uses, op.name, ".weight")
            op.attrs = {"in_channels": w[1] * groups, "out_channels": w[0], "groups": groups,
                        "kernel": tuple(w[2:4]) if len(w) == 4 else (w[2], 1),
                        "stride": tuple(_attr(node, "strides", [1, 1])),
                        "bias": w[0] if len(node.input) > 2 and node.input[2] else 0}
        elif t in ("Gemm", "MatMul") and consts and node.input[1] in constants:
            w = shapes[node.input[1]]
            in_f, out_f = (w[::-1] if _attr(node, "transB", 0) else w)[-2:]
            op.op, op.name = "linear", _name_of(node.input[1], uses, op.name, ".weight")
            op.attrs = {"in_features": in_f, "out_features": out_f,
                        "bias": math.prod(shapes[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0}
        elif t == "MatMul":
            op.op = "matmul"
            op.attrs = {"contraction": op.in_shapes[0][-1], "b_transposed": swapped.get(acts[1], False)}
        elif t in _BINARY and len(acts) == 1 and consts and _folds_as_bias(by_output.get(acts[0]), uses, acts[0]):
            layer = by_output[acts[0]]  # MatMul + Add(bias): the linear's bias
            layer.attrs["bias"] += math.prod(shapes[consts[0]])
            if not layer.name.count(".") and consts[0].endswith(".bias") and uses[consts[0]] == 1:
                layer.name = consts[0].removesuffix(".bias")
            layer.output = out
            by_output[out] = layer
            continue
        elif t == "BatchNormalization":
            op.op, op.attrs = "batchnorm", {"params": sum(math.prod(shapes[c]) for c in node.input[1:3])}
        elif t in ("LayerNormalization", "GroupNormalization", "InstanceNormalization"):
            op.op, op.attrs = "norm", {"params": sum(math.prod(shapes[c]) for c in consts)}
        elif t in _BINARY:
            # a scalar literal (1/sqrt(d)) is no parameter; a per-channel scale or shift is
            op.op, op.attrs = _BINARY[t], {"params": sum(n for c in consts if (n := math.prod(shapes[c])) > 1)}
        elif t in _ACT:
            op.op = "act"
        elif t in ("Softmax", "LogSoftmax"):
            op.op = "softmax"
        elif t in _POOL or (t == "ReduceMean" and len(op.in_shapes[0]) == 4 and len(shapes[out]) in (2, 4)):
            op.op = "pool"
            in_hw, out_hw = op.in_shapes[0][2:], (shapes[out][2:] if len(shapes[out]) == 4 else (1, 1))
            op.attrs = {"kernel": tuple(_attr(node, "kernel_shape", [i // max(o, 1) for i, o in zip(in_hw, out_hw)]))}
        elif t in _PASS:
            op.op, op.inputs, op.in_shapes = "pass", acts[:1], op.in_shapes[:1]
            swapped[out] = swapped.get(acts[0], False)
        elif t == "Transpose":
            op.op = "pass"
            nd = len(op.in_shapes[0])
            perm = list(_attr(node, "perm", list(range(nd))[::-1]))
            swapped[out] = swapped.get(acts[0], False) ^ (perm[-2] == nd - 1)
        elif t in ("Pad", "Slice"):
            ins, outs = op.in_shapes[0], shapes[out]
            op.op = "newchan" if len(ins) == 4 and len(outs) == 4 and ins[1] != outs[1] else "pass"
            op.inputs, op.in_shapes = acts[:1], op.in_shapes[:1]
        ops.append(op)
        by_output[out] = op
    return ops, inputs, [o.name for o in g.output]


def _folds_as_bias(producer: RawOp | None, uses: Counter, tensor: str) -> bool:
    return producer is not None and producer.op == "linear" and uses[tensor] == 1
