"""torch.nn.Module -> RawOps, through ``torch.export`` (ATen-level graph with parameter names)."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

from picojoule.errors import PicojouleError
from picojoule.graph import RawOp

_CONV = {"conv2d", "convolution", "_convolution", "conv1d"}
_ACT = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
        "hardsigmoid", "clamp", "clamp_min", "clamp_max", "leaky_relu", "elu", "relu6", "erf", "exp", "sqrt", "rsqrt", "neg"}
_BINARY = {"add": "add", "add_": "add", "sub": "add", "rsub": "add", "mul": "mul", "mul_": "mul", "div": "mul"}
_POOL = {"avg_pool2d", "max_pool2d", "adaptive_avg_pool2d", "max_pool2d_with_indices", "adaptive_max_pool2d"}
_PASS = {"view", "reshape", "_unsafe_view", "flatten", "contiguous", "dropout", "clone", "expand", "unsqueeze",
         "squeeze", "alias", "detach", "_to_copy", "to", "type_as", "getitem", "identity", "feature_dropout",
         "lift_fresh_copy", "dropout_", "unflatten", "view_as", "reshape_as", "expand_as"}
_TRANSPOSE = {"transpose", "permute", "t", "swapaxes"}


def _base(node: torch.fx.Node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", getattr(target, "__name__", str(target)))


def _shape(node: Any) -> tuple[int, ...]:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, (tuple, list)):
        val = val[0]
    return tuple(int(d) for d in val.shape) if val is not None and hasattr(val, "shape") else ()


def _arg(node: torch.fx.Node, i: int, key: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[-1])) if v else (1, 1)


def _swaps_last_two(base: str, node: torch.fx.Node, ndim: int) -> bool:
    """Whether a transpose/permute moves the last axis to the second-to-last position."""
    if base == "t":
        return True
    if base in ("transpose", "swapaxes"):
        dims = {d % ndim for d in node.args[1:3]}
        return dims == {ndim - 1, ndim - 2}
    perm = [d % ndim for d in node.args[1]]
    return perm[-2] == ndim - 1


def _attention(node: torch.fx.Node, op: RawOp) -> list[RawOp]:
    """A fused attention (``scaled_dot_product_attention(q, k, v, mask)``) as the three layers it computes:
    scores = q @ k^T, their softmax, scores @ v. Its matmuls are ``pinned``: the projections' channels are
    split into heads x head_dim, so they are not pruned channel by channel."""
    q, k, v = (a for a in node.args[:3])
    qs, ks, vs = _shape(q), _shape(k), _shape(v)
    scores = (*qs[:-1], ks[-2])
    name = node.name
    return [RawOp(f"{name}.scores", "matmul", [q.name, k.name], f"{name}.scores", scores, [qs, ks],
                  {"contraction": qs[-1], "b_transposed": True, "pinned": True}),
            RawOp(f"{name}.softmax", "softmax", [f"{name}.scores"], f"{name}.softmax", scores, [scores]),
            RawOp(name, "matmul", [f"{name}.softmax", v.name], op.output, op.out_shape, [scores, vs],
                  {"contraction": ks[-2], "b_transposed": False, "pinned": True})]


def torch_ops(model: torch.nn.Module, example: Any) -> tuple[list[RawOp], list[str], list[str]]:
    """Export ``model`` on ``example`` and translate its graph; returns (ops, input tensors, output tensors)."""
    model = model.eval()
    args = example if isinstance(example, tuple) else (example,)
    try:
        with torch.no_grad():
            ep = torch.export.export(model, args)
    except Exception as e:  # export failures are the user's model's, report them on one line
        raise PicojouleError(f"torch.export could not trace {type(model).__name__}: {str(e).splitlines()[0]}") from None
    sig = ep.graph_signature
    params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    numel = {n.name: math.prod(_shape(n)) for n in ep.graph.nodes if n.op == "placeholder"}
    ops: list[RawOp] = []
    swapped: dict[str, bool] = {}
    constants: set[str] = set()
    outputs: list[str] = []
    for node in ep.graph.nodes:
        if node.op == "output":
            outputs = [a.name for a in torch.utils._pytree.tree_leaves(node.args) if isinstance(a, torch.fx.Node)]
            continue
        if node.op != "call_function":
            continue
        base = _base(node)
        acts = [a for a in node.all_input_nodes
                if a.name not in params and a.name not in constants and a.op != "get_attr"]
        weight = [a for a in node.all_input_nodes if a.name in params]
        shape = _shape(node)
        op = RawOp(node.name, "fixed", [a.name for a in acts], node.name, shape, [_shape(a) for a in acts])
        swapped[node.name] = False
        if not op.inputs:
            constants.add(node.name)  # built inside the graph from constants and buffers (masks, positions)
            continue
        val = node.meta.get("val")
        stack = node.meta.get("nn_module_stack") or {}
        if stack:  # the innermost module that computed it: (qualified name, class), for error messages
            path, cls = list(stack.values())[-1]
            op.attrs["module"] = (path, getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1].strip("'>")))
        op.attrs["float"] = bool(getattr(val, "is_floating_point", lambda: False)()) and len(shape) >= 2
        if base == "scaled_dot_product_attention":
            ops.extend(_attention(node, op))
            continue
        if base == "embedding" and weight:
            op.op, op.name = "embedding", params[weight[0].name].removesuffix(".weight")
            op.attrs = {"params": numel[weight[0].name]}  # a gather: one row per token, its table in the size
        elif base in _CONV:
            w = node.args[1]
            wshape = _shape(w)
            groups = int(_arg(node, 6 if base == "conv2d" else 8, "groups", 1))
            op.op, op.name = "conv", params[w.name].removesuffix(".weight")
            op.attrs = {"in_channels": wshape[1] * groups, "out_channels": wshape[0], "groups": groups,
                        "kernel": _pair(wshape[2:] or (1,)), "stride": _pair(_arg(node, 3, "stride", 1)),
                        "bias": wshape[0] if _arg(node, 2, "bias", None) is not None else 0}
        elif base in ("linear", "addmm", "mm") and weight:
            w = node.args[1] if base == "linear" else node.args[-1]
            wshape = _shape(w)
            out_f, in_f = (wshape if base == "linear" else wshape[::-1])
            has_bias = (base == "linear" and _arg(node, 2, "bias", None) is not None) or base == "addmm"
            op.op, op.name = "linear", params[w.name].removesuffix(".weight")
            op.attrs = {"in_features": in_f, "out_features": out_f, "bias": out_f if has_bias else 0}
        elif base in ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm"):
            op.op, op.inputs, op.in_shapes = "batchnorm", op.inputs[:1], op.in_shapes[:1]
            affine = [a for a in node.args[1:3] if isinstance(a, torch.fx.Node)]
            op.attrs = {"params": sum(numel[a.name] for a in affine)}
        elif base in ("layer_norm", "native_layer_norm", "group_norm"):
            op.op = "norm"
            op.attrs = {"params": sum(numel[a.name] for a in weight)}
        elif base in ("matmul", "bmm", "mm") and len(acts) == 2:
            op.op = "matmul"
            op.attrs = {"contraction": op.in_shapes[0][-1], "b_transposed": swapped.get(acts[1].name, False)}
        elif base in _BINARY:
            op.op = _BINARY[base]
            op.attrs = {"params": sum(numel[a.name] for a in weight)}
        elif base in _ACT:
            op.op = "act"
        elif base in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
            op.op = "softmax"
        elif base in ("sum", "mean", "linalg_vector_norm", "amax") and len(op.in_shapes[0]) in (2, 3):
            op.op = "pool"  # a reduction over tokens (sentence pooling) or over the hidden size (a norm)
            ins = op.in_shapes[0]
            tokens = len(ins) == 3 and len(shape) == 2 and shape[-1] == ins[-1]
            op.attrs = {"kernel": (ins[1], 1) if tokens else (1, ins[-1])}
        elif base in _POOL or (base == "mean" and len(shape) == 4):
            op.op = "pool"
            kernel = _arg(node, 1, "kernel_size", None) if base in ("avg_pool2d", "max_pool2d") else None
            in_hw = op.in_shapes[0][2:]
            op.attrs = {"kernel": _pair(kernel) if kernel is not None else tuple(in_hw[i] // max(shape[2 + i], 1)
                                                                                   for i in range(2))}
        elif base in _PASS:
            op.op = "pass"
            swapped[node.name] = swapped.get(op.inputs[0], False) if op.inputs else False
        elif base in _TRANSPOSE:
            op.op = "pass"
            src = op.inputs[0]
            swapped[node.name] = swapped.get(src, False) ^ _swaps_last_two(base, node, len(op.in_shapes[0]))
        elif base in ("pad", "constant_pad_nd", "slice", "narrow", "select"):
            # channel-changing only when it touches dim 1 of an NCHW tensor
            ins = op.in_shapes[0]
            chan_changed = len(ins) == 4 and len(shape) == 4 and ins[1] != shape[1]
            op.op = "newchan" if chan_changed else "pass"
        ops.append(op)
    return ops, list(sig.user_inputs), outputs
