"""A measured kernel table: per-layer latency looked up from kernels timed on the runtime a user deploys on.

nn-Meter's finding, and ours on ONNX Runtime (``experiments/results/bench_deploy.md``): a runtime's latency is
not a smooth function of MACs. ORT's int8 convolution at 8 or 12 channels is slower than at 16, and a float
first convolution beats an int8 one, so a roofline, even calibrated, ranks such policies wrongly (calibrated on
48 ResNet-20 policies in ORT it put W8A8 at the speed of FP32; measured, W8A8 is 2.2x faster). A kernel table
holds the measured time of each conv/linear kernel at each shape a search can give it (channels after pruning,
int8 or float), from :func:`picojoule.compilers.kernel_bench.measure_kernel_table`, and the few figures fitted on
whole-model timings that the kernels leave out.

A target that carries one (its YAML ``kernels:`` section, which ``picojoule calibrate --runtime onnxruntime``
writes) prices latency as:

* each conv/linear layer whose shape and precision the table has: the table's time;
* every other layer (element-wise, pooling, low-rank halves, widths the runtime emulates, shapes not in the
  table): the cost model's own latency times ``other_scale``;
* ``transition_s`` at each switch between integer and float MAC layers (in graph order): a quantize or
  dequantize and, in ORT, a layout change between its NHWC integer and NCHWc float kernels;
* ``offset_s`` once per inference.

This module is pure (no torch, no runtime): the schema and the lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

if TYPE_CHECKING:
    from picojoule.hwmodels.workload import GraphArrays, Workload

__all__ = ["KernelEntry", "KernelTable", "layer_keys", "precision_of"]

#: op kinds a table entry can describe (indices into picojoule.hwmodels.target.OP_KINDS: conv 0, depthwise 1,
#: linear 2)
TABLE_KINDS = ("conv", "depthwise", "linear")
_KIND_INDEX = {"conv": 0, "depthwise": 1, "linear": 2}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KernelEntry(_Strict):
    """One timed kernel: a conv/linear layer's shape after pruning, its precision, and its median time."""

    op: Literal["conv", "depthwise", "linear"]
    cin: int = Field(ge=1, description="input channels per group (1 for depthwise), after pruning")
    cout: int = Field(ge=1, description="output channels (features), after pruning")
    kernel: int = Field(ge=1, description="kernel area kh*kw (1 for linear)")
    stride: int = Field(ge=1)
    rows: int = Field(ge=1, description="output rows (conv) or rows of the matrix (linear)")
    cols: int = Field(ge=1, description="output columns (conv), 1 for linear")
    batch: int = Field(default=1, ge=1)
    precision: Literal["int8", "float"]
    after: Literal["int8", "float"] = Field(default="float", description="the precision of the MAC layer before it "
                                            "(the network's input counts as float): ORT's kernels run differently "
                                            "after a layout or precision change")
    latency_s: float = Field(gt=0)


class KernelTable(_Strict):
    """Measured kernels of one runtime on one CPU, and the whole-model terms fitted beside them."""

    runtime: str = Field(description="what ran the kernels, e.g. 'onnxruntime 1.32.0, 1 thread'")
    measured_on: str = Field(description="the CPU they ran on")
    source: str = Field(min_length=3, description="how and when the table was made")
    entries: list[KernelEntry] = Field(min_length=1)
    other_scale: float = Field(default=1.0, ge=0, description="times the cost model's latency of layers the table "
                               "does not cover")
    transition_s: float = Field(default=0.0, ge=0, description="per switch between integer and float MAC layers")
    offset_s: float = Field(default=0.0, ge=0, description="once per inference")

    _index: tuple | None = PrivateAttr(default=None)  # (id of the entries list, key -> latency)

    def _lookup(self) -> dict[tuple, float]:
        if self._index is None or self._index[0] != id(self.entries):  # model_copy(update=...) gives new entries
            index = {(_KIND_INDEX[e.op], e.cin, e.cout, e.kernel, e.stride, e.rows, e.cols, e.batch,
                      e.precision == "int8", e.after == "int8"): e.latency_s for e in self.entries}
            self._index = (id(self.entries), index)
        return self._index[1]

    def layer_latency(self, ga: GraphArrays, wl: Workload, modelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) latency with the table's kernels in place of ``modelled`` (the cost model's latency) where the
        table covers a layer, the rest scaled by ``other_scale``, transitions and the offset added; and the (N, L)
        mask of the layers the table covered. A width the runtime emulates (9..16 bits, or integer weights with
        float inputs) is priced as the float kernel plus one transition (its quantize-dequantize)."""
        index = self._lookup()
        keys, precision = layer_keys(ga, wl)
        n, layers = modelled.shape
        out = np.asarray(modelled, dtype=float) * self.other_scale
        hit = np.zeros((n, layers), dtype=bool)
        for (i, j), key in np.ndenumerate(keys):
            t = index.get(key) if key is not None else None
            if t is not None:
                out[i, j], hit[i, j] = t + (self.transition_s if precision[i, j] < 0 else 0.0), True
        mac = np.isin(np.asarray(ga.kind), (0, 1, 2))
        if self.transition_s and mac.sum() > 1:
            cols = np.flatnonzero(mac)
            p = precision[:, cols] > 0
            switch = np.zeros((n, len(cols)), dtype=bool)
            switch[:, 1:] = p[:, 1:] != p[:, :-1]
            out[:, cols] += switch * self.transition_s
        out[:, 0] += self.offset_s
        return out, hit


def layer_keys(ga: GraphArrays, wl: Workload) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) table keys of each policy's layers (None where no kernel applies: not conv/linear, or low rank) and
    (N, L) :func:`precision_of`. An emulated width's key is its float kernel's."""
    precision = precision_of(wl)
    n, layers = np.asarray(wl.m).shape
    keys = np.full((n, layers), None, dtype=object)
    kinds = np.asarray(ga.kind)
    rank = np.asarray(wl.rank)
    before = np.zeros(n, dtype=bool)  # the previous MAC layer ran on integers (the input is float)
    for j in range(layers):
        kind = int(kinds[j])
        if kind not in (0, 1, 2):
            continue
        cin = np.ones(n, dtype=int) if kind == 1 else np.asarray(wl.c[:, j]).astype(int)
        cout = np.asarray(wl.m[:, j]).astype(int)
        static = (int(ga.k_area[j]), int(ga.stride[j]), int(ga.out_rows[j]), int(ga.out_cols[j]), int(wl.batch))
        for i in range(n):
            if rank[i, j] <= 0:
                keys[i, j] = (kind, int(cin[i]), int(cout[i]), *static, bool(precision[i, j] > 0), bool(before[i]))
        before = precision[:, j] > 0
    return keys, precision


def precision_of(wl: Workload) -> np.ndarray:
    """(N, L): 1 where a layer runs on integer kernels (weights and inputs at 8 bits or fewer), 0 in float (both
    above 16 bits), -1 where a runtime emulates the width (9..16 bits, or one operand integer and the other float:
    quantize-dequantize around a float kernel)."""
    w, a = np.asarray(wl.w_bits), np.asarray(wl.a_bits)
    return np.where((w <= 8) & (a <= 8), 1, np.where((w > 16) & (a > 16), 0, -1))
