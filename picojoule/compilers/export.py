"""ONNX export of a compressed (fake-quantized) torch model, in the QDQ format.

ONNX export of ``torch.fake_quantize_*`` (both exporters) accepts only the 8-bit ranges ``(0, 127)``,
``(0, 255)`` and ``(-128, 127)``, and the quantize module's weights re-derive their scale on every forward
(``abs -> amax -> div`` would land in the graph). So the model is exported through an *export twin*: a copy
in which every QuantConv2d/QuantLinear becomes a plain layer whose

* weight is the already fake-quantized weight ``wq = q * scale`` with its per-channel ``scale`` frozen as a
  constant, then ``fake_quantize_per_channel(wq, scale, 0, -128, 127)`` -> QuantizeLinear/DequantizeLinear
  (exact: ``wq / scale`` is the integer ``q``); sub-8-bit weights are int8 values within ``[-2^(b-1), 2^(b-1)-1]``;
* input goes through ``clamp(x, qmin * s, qmax * s)`` (only when the range is narrower than the carrier) and
  ``fake_quantize_per_tensor(x, s, 0, carrier)`` with carrier ``(0, 255)`` (uint8) or ``(-128, 127)`` (int8).
  The clamp exports as Clip before the QuantizeLinear: sub-8-bit activations ride in 8 bits, clipped.
* 9..16-bit tensors are emulated in float (``round(x * (1/s))``, Clip, Mul; 9..16-bit weights are float
  constants already on their grid): ONNX QDQ in int16 needs opset 21, which neither exporter emits.

After export, every QuantizeLinear of a constant (the weights) is folded into an int8 initializer, so the
file stores int8 weights followed by DequantizeLinear, as ONNX Runtime's ``quantize_static`` writes them.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.passes import ordered
from picojoule.spaces.quantize import ActivationQuantizer, QuantConv2d, QuantLinear
from picojoule.spaces.quantize import _fake_quant_weight  # the quantize module's own grid, scale and rounding

__all__ = ["CARRIER_BITS", "ORT_TOLERANCE", "check_onnxruntime", "export_clone", "export_onnx",
           "fold_constants", "measure_onnxruntime", "onnxruntime_session", "qdq_counts", "run_onnxruntime",
           "with_static_input"]

CARRIER_BITS = 8
DEFAULT_OPSET = 17
#: max |ORT - torch| accepted by ``check_onnxruntime``, relative to max |torch output|. Float models agree to
#: ~1e-5; quantized ones differ where another float summation order moves an activation across a rounding
#: boundary: one step of that layer's grid, carried to the output (ResNet-20 W8A8 on CIFAR: <= 0.6%).
ORT_TOLERANCE = 2e-2


class ExportQuant(nn.Module):
    """Fake quantization as ONNX QDQ can carry it: per-tensor (``axis`` None) or per-channel along ``axis``
    (per-channel ranges must be the full carrier or wider: only per-tensor ranges get a Clip)."""

    def __init__(self, scale: torch.Tensor, qmin: int, qmax: int, axis: int | None = None) -> None:
        super().__init__()
        self.qmin, self.qmax, self.axis = qmin, qmax, axis
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", torch.zeros(scale.shape, dtype=torch.int32))
        self.scale_value = float(scale.reshape(-1)[0])  # per tensor: a Python float keeps the Clip static
        signed = qmin < 0
        self.carrier = (-128, 127) if signed else (0, 255)
        self.carried = qmax - qmin < 2**CARRIER_BITS  # fits the 8-bit carrier; wider ranges are emulated
        self.clip = self.carried and (qmin, qmax) != self.carrier
        if self.clip and axis is not None:
            raise ValueError(f"per-channel range ({qmin}, {qmax}) narrower than its carrier {self.carrier}")

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale, shaped to broadcast against ``x``."""
        return self.scale if self.axis is None else self.scale.reshape([-1] + [1] * (x.dim() - self.axis - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.carried:  # 9..16 bits: float emulation (Mul, Round, Clip, Mul), rounding x * (1/s) as torch does
            s = self._scale(x)
            return torch.clamp(torch.round(x * (1.0 / s)), self.qmin, self.qmax) * s
        if self.clip:  # narrower than the carrier: Clip, then QuantizeLinear to 8 bits
            x = torch.clamp(x, self.qmin * self.scale_value, self.qmax * self.scale_value)
        lo, hi = self.carrier
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, lo, hi)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, lo, hi)

    def extra_repr(self) -> str:
        return f"range=({self.qmin}, {self.qmax}), carrier={self.carrier if self.carried else 'float'}"


def _input_quant(q: ActivationQuantizer) -> nn.Module:
    if q.bits is None:
        return nn.Identity()
    qmin, qmax = q.quant_range  # raises the one-line error when uncalibrated
    if int(q.zero_point) != 0:
        raise PicojouleError(f"layer '{q.layer_name}': export needs zero point 0, got {int(q.zero_point)}")
    return ExportQuant(q.scale, qmin, qmax)


def _weight(layer: QuantConv2d | QuantLinear) -> tuple[torch.Tensor, nn.Module]:
    """The layer's fake-quantized weight and the module that re-quantizes it exactly in the graph."""
    if layer.w_bits is None:
        return layer.weight.detach().clone(), nn.Identity()
    wq, scale = _fake_quant_weight(layer.weight.detach(), layer.w_clip_ratio, layer.w_bits)
    if layer.w_bits > CARRIER_BITS:  # already on its grid: a float constant is exact
        return wq.detach().clone(), nn.Identity()
    # wq is on the (possibly sub-8-bit) grid already, so an int8 QuantizeLinear gives its integers: no Clip needed
    return wq.detach().clone(), ExportQuant(scale, -(2**(CARRIER_BITS - 1)), 2**(CARRIER_BITS - 1) - 1, axis=0)


class ExportConv2d(nn.Conv2d):
    """A QuantConv2d with frozen quantization parameters, exportable as QDQ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.weight_quant(self.weight), self.bias)


class ExportLinear(nn.Linear):
    """A QuantLinear with frozen quantization parameters, exportable as QDQ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_quant(x), self.weight_quant(self.weight), self.bias)


def _export_layer(layer: QuantConv2d | QuantLinear) -> nn.Module:
    if isinstance(layer, QuantConv2d):
        new: nn.Module = ExportConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                      layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                                      layer.padding_mode, device="meta")
    else:
        new = ExportLinear(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    weight, new.weight_quant = _weight(layer)
    new.weight = nn.Parameter(weight, requires_grad=False)
    new.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    new.input_quant = _input_quant(layer.input_quant)
    return new


def export_clone(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every QuantConv2d/QuantLinear replaced by its export twin."""
    clone = copy.deepcopy(model).eval()
    names = [n for n, m in clone.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    for name in names:
        new = _export_layer(clone.get_submodule(name))
        if name == "":
            return new.eval()
        clone.set_submodule(name, new)
    return clone


# ------------------------------------------------------------------------------------------ graph pass


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor name -> shape, for the tensors whose every dimension shape inference knows as a number."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:
        return {}
    shapes = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    return shapes


def _shape_of(node: onnx.NodeProto, shape: list[int]) -> np.ndarray:
    attrs = {a.name: a.i for a in node.attribute}
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    return np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], dtype=np.int64)


def fold_constants(model: onnx.ModelProto, keep: frozenset[str] = frozenset({"DequantizeLinear"})) -> int:
    """Evaluate every node whose inputs are all constants (except ``keep`` ops), and every Shape/Size of a
    tensor of static shape, into an initializer.

    Turns the weights' QuantizeLinear into int8 initializers and the exporter's shape arithmetic (the pads of
    an option-A shortcut: ConstantOfShape, Concat, Reshape ...) into constants, which TVM's importer needs.
    Repeats until nothing folds (a folded shape makes more shapes static). Returns how many nodes were folded.
    """
    total = 0
    while count := _fold_once(model, keep):
        total += count
    return total


def _fold_once(model: onnx.ModelProto, keep: frozenset[str]) -> int:
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    static = _static_shapes(model)
    outputs_ = {o.name for o in graph.output}
    folded = []
    for node in graph.node:
        if node.op_type in keep or node.domain not in ("", "ai.onnx") or outputs_.intersection(node.output):
            continue
        if node.op_type in ("Shape", "Size") and node.input[0] in static:
            values = [_shape_of(node, static[node.input[0]])]
        elif all(i in consts for i in node.input if i):
            values = ReferenceEvaluator(node).run(None, {i: consts[i] for i in node.input if i})
        else:
            continue
        for name, value in zip(node.output, values):
            consts[name] = np.asarray(value)
            graph.initializer.append(numpy_helper.from_array(consts[name], name))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    _drop_unused(graph)
    return len(folded)


def with_static_input(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of ``model`` whose first input has the static ``shape``, its shape arithmetic folded away."""
    model = copy.deepcopy(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise PicojouleError(f"input shape {tuple(shape)} does not match the model's rank-{len(dims)} input")
    for dim, size in zip(dims, shape):
        dim.Clear()
        dim.dim_value = int(size)
    for out in model.graph.output:  # let shape inference recompute them
        for dim in out.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    del model.graph.value_info[:]
    fold_constants(model)
    return model


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the initializers nothing reads any more."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def qdq_counts(path: str | Path) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear / Clip node counts and int8/uint8 initializers of an ONNX file."""
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    ints = sum(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for t in model.graph.initializer)
    return {"QuantizeLinear": ops["QuantizeLinear"], "DequantizeLinear": ops["DequantizeLinear"],
            "Clip": ops["Clip"], "int8_initializers": ints, "nodes": sum(ops.values())}


# ------------------------------------------------------------------------------------------ export


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = DEFAULT_OPSET,
                dynamo: bool = False, dynamic_batch: bool = True) -> Path:
    """Export ``model`` (float or fake-quantized, calibrated) to ``path`` as QDQ ONNX; checked, shapes inferred.

    The input is named ``input`` and the output ``output``; with ``dynamic_batch`` their first axis is ``batch``
    (TorchScript exporter only: torch.export has no fake kernel for fake_quantize under a symbolic batch).

    ``dynamo=False`` (TorchScript exporter) is the default: on this 2-core machine it takes ~1 s for
    ResNet-20 where the dynamo exporter takes 8-16 s; both give the same Q/DQ structure after folding.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clone = copy.deepcopy(model).eval()
    for p in ordered():  # each compression pass's form for the exporter (quantize: the QDQ export twins)
        clone = p.export(clone)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            kwargs = {"dynamo": dynamo, "opset_version": opset, "input_names": ["input"], "output_names": ["output"]}
            if dynamo:
                kwargs["external_data"] = False
            elif dynamic_batch:
                kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
            torch.onnx.export(clone, (example_input,), str(path), **kwargs)
    except PicojouleError:
        raise
    except Exception as exc:  # the exporters raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PicojouleError(f"ONNX export of {type(model).__name__} to {path} failed: {first}") from exc
    onnx_model = onnx.load(str(path))
    fold_constants(onnx_model)
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
        onnx_model = onnx.shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PicojouleError(f"{path}: exported ONNX fails the checker: {str(exc).splitlines()[0]}") from exc
    onnx.save(onnx_model, str(path))
    return path


def onnxruntime_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (all graph optimisations on)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PicojouleError(f"{path}: ONNX Runtime cannot load it: {first}") from exc


def _feed(session: Any, example_input: Any) -> dict[str, np.ndarray]:
    """The session's input feed: one tensor or array for its first input (as float32), or a mapping of input
    name to tensor or array (kept in its dtype, e.g. token ids)."""
    def array(x: Any) -> np.ndarray:
        return np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)

    if isinstance(example_input, dict):
        return {name: array(x) for name, x in example_input.items()}
    return {session.get_inputs()[0].name: array(example_input).astype(np.float32, copy=False)}


def run_onnxruntime(path: str | Path, example_input: Any, threads: int = 1) -> np.ndarray:
    """The first output of the ONNX file ``path`` on ``example_input`` (see :func:`measure_onnxruntime`) in ONNX
    Runtime (CPU)."""
    session = onnxruntime_session(path, threads)
    return session.run(None, _feed(session, example_input))[0]


def measure_onnxruntime(path: str | Path, example_input: Any, repeat: int = 20,
                        number: int = 5, warmup: int = 10, threads: int = 1) -> float:
    """Median over ``repeat`` runs of the mean of ``number`` calls, in seconds, in ONNX Runtime on this CPU with
    ``threads`` intra-op threads, after ``warmup`` calls (as :func:`tvm_build.measure_latency` times TVM).
    ``example_input``: a tensor or array for the first input, or a mapping of input name to tensor or array."""
    import time

    if repeat < 1 or number < 1 or warmup < 0:
        raise PicojouleError(f"measure_onnxruntime: repeat and number must be >= 1, warmup >= 0; got {repeat}, "
                             f"{number}, {warmup}")
    session = onnxruntime_session(path, threads)
    feed = _feed(session, example_input)
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            session.run(None, feed)
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))


def check_onnxruntime(model: nn.Module, example_input: torch.Tensor, path: str | Path,
                      tolerance: float | None = ORT_TOLERANCE) -> float:
    """Max |ORT(path) - model(example_input)|; raises if it exceeds ``tolerance`` x max |model output|
    (``None``: never raises)."""
    with torch.no_grad():
        training = model.training
        expected = model.eval()(example_input).detach().cpu().numpy()
        model.train(training)
    got = run_onnxruntime(path, example_input)
    if got.shape != expected.shape:
        raise PicojouleError(f"{path}: ONNX Runtime output shape {got.shape} != torch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    bound = None if tolerance is None else tolerance * max(float(np.abs(expected).max()), 1.0)
    if bound is not None and diff > bound:
        raise PicojouleError(f"{path}: ONNX Runtime differs from torch by {diff:.3g} (> {bound:.3g})")
    return diff
