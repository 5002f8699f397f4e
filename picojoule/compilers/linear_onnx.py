"""ONNX export of a model whose nn.Linear layers were compressed by :func:`picojoule.spaces.linear_ptq.compress_linears`
(a transformer, typically), in the forms ONNX Runtime runs with integer kernels on CPU:

* **group-quantized weights** (W4A16, W3A16, W8A16 with a :class:`~picojoule.spaces.linear_ptq.GroupGrid`) become
  ``com.microsoft.MatMulNBits``: the integers packed two per byte (``bits`` <= 4; 3-bit codes ride in 4 bits) or
  one per byte (8 bits), one float scale and one zero point per group, float activations. Exact: the kernel
  computes ``(q - zero) * scale``, the grid the fake-quant weight is on.
* **W8A8 (SmoothQuant or not)**: ``x * (1/s)`` stays a float Mul, then the static int8 input range and the
  per-channel int8 weights export as QuantizeLinear/DequantizeLinear pairs that ORT fuses into integer MatMuls.
* everything else (float, pruned or 2:4 weights) stays a float MatMul: ORT's CPU provider has no sparse kernel.

``export_linear_onnx(model, args, path)`` returns the path and a summary of what each linear became.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections import Counter
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from picojoule.compilers.export import ExportQuant, _drop_unused, fold_constants
from picojoule.errors import PicojouleError
from picojoule.spaces.linear_ptq import GroupGrid, SmoothedQuantLinear

__all__ = ["export_linear_onnx", "pack_nbits"]

MS_DOMAIN = "com.microsoft"


class _SmoothedExport(nn.Module):
    """SmoothedQuantLinear in QDQ form: ``linear(QDQ_int8(x * (1/s)), DQ(int8 q) * scale)``."""

    def __init__(self, layer: SmoothedQuantLinear) -> None:
        super().__init__()
        self.register_buffer("inv_s", layer.inv_s.clone())
        self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        self.bias = layer.bias
        self.weight_quant = ExportQuant(layer.w_scale, -128, 127, axis=0)
        quant = layer.input_quant
        bits = quant.bits
        self.input_quant = ExportQuant(quant.scale.detach().reshape(()), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_quant(x * self.inv_s), self.weight_quant(self.weight), self.bias)


def pack_nbits(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """MatMulNBits' ``B``: the (N, K) integer codes as (N, ceil(K / block), block * bits / 8) uint8, the first code of
    a byte in its low bits; a partial last block is padded with zeros."""
    n, k = codes.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.uint8)
    padded[:, :k] = codes
    padded = padded.reshape(n, blocks, block)
    if bits == 8:
        return padded
    per_byte = 8 // bits
    out = np.zeros((n, blocks, block // per_byte), np.uint8)
    for j in range(per_byte):
        out |= (padded[..., j::per_byte] << (bits * j)).astype(np.uint8)
    return out


def _pack_zero_points(zero: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits' ``zero_points``: per row of N, its blocks' zero points packed like ``B`` (uint8, flat)."""
    n, blocks = zero.shape
    if bits == 8:
        return zero.astype(np.uint8).reshape(-1)
    per_byte = 8 // bits
    width = -(-blocks // per_byte)
    padded = np.zeros((n, width * per_byte), np.uint8)
    padded[:, :blocks] = zero
    out = np.zeros((n, width), np.uint8)
    for j in range(per_byte):
        out |= (padded[:, j::per_byte] << (bits * j)).astype(np.uint8)
    return out.reshape(-1)


def _carrier_bits(bits: int) -> int:
    if bits <= 4:
        return 4
    if bits <= 8:
        return 8
    raise PicojouleError(f"MatMulNBits export: {bits}-bit weights do not fit its 4- or 8-bit codes")


def _matmul_nbits(model: onnx.ModelProto, grids: list[tuple[str, torch.Tensor, GroupGrid]], accuracy_level: int = 0
                  ) -> list[str]:
    """Replace each MatMul whose constant B is a grid weight's transpose by MatMulNBits; the layers replaced."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    by_shape: dict[tuple[int, ...], list[tuple[str, torch.Tensor, GroupGrid]]] = {}
    for entry in grids:
        by_shape.setdefault(tuple(entry[1].shape[::-1]), []).append(entry)
    done: list[str] = []
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        b = numpy_helper.to_array(inits[node.input[1]])
        match = next((e for e in by_shape.get(tuple(b.shape), []) if e[0] not in done
                      and np.array_equal(e[1].detach().numpy().T, b)), None)
        if match is None:
            continue
        name, weight, grid = match
        n, k = weight.shape
        bits = _carrier_bits(grid.bits)
        block = grid.group
        if block < 16 or block & (block - 1):
            raise PicojouleError(f"layer '{name}': MatMulNBits needs a power-of-two group size >= 16, got {block}")
        codes = grid.codes(weight).numpy()
        stem = f"{name}.nbits"
        tensors = {f"{stem}.B": pack_nbits(codes, bits, block),
                   f"{stem}.scales": grid.scale.detach().float().numpy().reshape(-1),
                   f"{stem}.zero_points": _pack_zero_points(grid.zero.detach().numpy().astype(np.uint8), bits)}
        for tname, value in tensors.items():
            graph.initializer.append(numpy_helper.from_array(value, tname))
        new = helper.make_node("MatMulNBits", [node.input[0], *tensors], list(node.output), name=stem,
                               domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=block,
                               accuracy_level=accuracy_level)
        graph.node.insert(list(graph.node).index(node), new)
        graph.node.remove(node)
        done.append(name)
    _drop_unused(graph)
    if done and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return done


def export_linear_onnx(model: nn.Module, args: Sequence[torch.Tensor], path: str | Path,
                       input_names: Sequence[str] = ("input_ids", "attention_mask"),
                       output_names: Sequence[str] = ("output",), opset: int = 17, accuracy_level: int = 0
                       ) -> tuple[Path, dict[str, Any]]:
    """Export ``model(*args)`` (linears compressed by ``compress_linears``) to ``path`` for ONNX Runtime, the batch
    axis dynamic; returns ``(path, summary)`` with the layers that became MatMulNBits, QDQ int8 or stayed float.

    ``accuracy_level`` is MatMulNBits' compute type: 0 (default) multiplies in float (the weight exact, the
    activations as they are: W4A16); 4 quantizes each activation block to int8 on the fly and uses the CPU's
    integer dot products (faster; the activations are rounded, as W4A8 with dynamic ranges)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clone = copy.deepcopy(model).eval()
    smoothed = [n for n, m in clone.named_modules() if isinstance(m, SmoothedQuantLinear)]
    for name in smoothed:
        clone.set_submodule(name, _SmoothedExport(clone.get_submodule(name)))
    grids = [(n, m.weight, m.group_grid) for n, m in clone.named_modules()
             if isinstance(m, nn.Linear) and isinstance(getattr(m, "group_grid", None), GroupGrid)]
    linears = [n for n, m in clone.named_modules() if isinstance(m, nn.Linear)]
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), \
                torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(clone, tuple(args), str(path), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names), dynamic_axes=axes)
    except Exception as exc:  # the exporter raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PicojouleError(f"ONNX export of {type(model).__name__} to {path} failed: {first}") from exc
    onnx_model = onnx.load(str(path))
    fold_constants(onnx_model)  # the weights' QuantizeLinear into int8 initializers
    nbits = _matmul_nbits(onnx_model, grids, accuracy_level)
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as exc:
        raise PicojouleError(f"{path}: exported ONNX fails the checker: {str(exc).splitlines()[0]}") from exc
    onnx.save(onnx_model, str(path))
    ops = Counter(n.op_type for n in onnx_model.graph.node)
    summary = {"linears": len(linears), "matmul_nbits": nbits, "qdq_int8": smoothed,
               "float": [n for n in linears if n not in nbits and n not in smoothed],
               "ops": {k: ops[k] for k in ("MatMulNBits", "MatMul", "QuantizeLinear", "DequantizeLinear") if ops[k]}}
    return path, summary
