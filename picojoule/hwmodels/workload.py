"""What a batch of policies does to a graph's layers, as (policies x layers) numpy arrays.

Both cost models start from the :class:`Workload`: the MACs, element-wise ops, weights and
activations each layer has after pruning, low-rank splitting and sparsity, and the operand widths after
padding to what the target's datapath supports. Everything is vectorised over policies. Each compression
pass's :meth:`~picojoule.passes.base.CompressionPass.price` is one stage (prune, low rank, sparsity,
quantize); what they do:

Pruning: a layer's output channels shrink by the keep ratio of its pruning group (the group's
*anchor* layer carries the knob), its input channels by the group that produces them; counts are
rounded to whole channels, at least one. A depthwise conv follows its input group. A layer without MACs
(residual add, pooling) runs at the activation width of the nearest conv/linear that reads its output; a
layer without weights (those, and activation x activation matmuls) computes at its activation width.
Low rank ``r`` (an absolute rank, clipped to the pruned layer's full rank): a k x k conv C->M
becomes k x k C->r then 1 x 1 r->M, a linear becomes two; the r-channel intermediate is written
and read once more (``mid_elems``). Sparsity: the zero weights of each weight matrix
(:func:`picojoule.passes.sparsity.zero_count`), which a cost model charges where the target gates or skips them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.scales import ScaleFormat, price_scales
from picojoule.hwmodels.target import OP_KINDS, Target
from picojoule.passes import FIELD_BY_NAME, PricingState, ordered
from picojoule.policy import KNOBS, Policy, PolicyBatch, group_keeps

#: the passes' pricing stages in order: those that change channel counts first, then the dense work, then the rest
CHANNEL_STAGES = tuple(p for p in ordered() if p.changes_channels)
OTHER_STAGES = tuple(p for p in ordered() if not p.changes_channels)

@dataclass(frozen=True)
class GraphArrays:
    """Static per-layer figures of one graph, length L each (computed once per graph)."""

    names: list[str]
    kind: np.ndarray  # index into OP_KINDS
    has_macs: np.ndarray  # conv/linear/matmul
    has_weights: np.ndarray  # conv/linear
    macs_factor: np.ndarray  # has_macs as 1.0/0.0
    weights_factor: np.ndarray  # has_weights as 1.0/0.0
    rankable_factor: np.ndarray  # rankable as 1.0/0.0
    depthwise: np.ndarray
    rankable: np.ndarray
    cout: np.ndarray
    cin: np.ndarray  # per group for convs (= C of the weight tensor)
    cin_dense: np.ndarray  # cin, 1 for depthwise convs (their MACs per output channel)
    k_area: np.ndarray
    kernel_w: np.ndarray
    stride: np.ndarray
    out_rows: np.ndarray  # P: output rows (conv) or tokens/rows (linear, matmul)
    out_cols: np.ndarray  # Q: output columns (conv), 1 otherwise
    spatial: np.ndarray  # output elements per output channel (P*Q, times heads for matmul)
    ops: np.ndarray
    bias: np.ndarray  # parameters beyond the weight tensor (bias, folded BN): scale with out channels
    in_a: np.ndarray
    in_b: np.ndarray
    out_elems: np.ndarray
    group_out: np.ndarray  # column of the keep matrix (G = fixed, keep 1)
    group_in: np.ndarray
    group_a: np.ndarray
    group_b: np.ndarray
    anchors: np.ndarray  # layer index of each group's anchor, length G
    group_channels: np.ndarray  # channels of each group, length G
    bits_from: np.ndarray  # layer whose a_bits this layer runs at (non-MAC layers: the compute layer reading it)

    @property
    def n_layers(self) -> int:
        return len(self.names)


def graph_arrays(graph: LayerGraph) -> GraphArrays:
    """The static arrays of ``graph`` (cached on it)."""
    cached = getattr(graph, "_arrays", None)
    if cached is not None:
        return cached
    layers = graph.layers
    n_groups = len(graph.groups)
    index = {layer.name: i for i, layer in enumerate(layers)}
    var_group = {layer.out_var: layer.group for layer in layers if layer.group >= 0}

    def col(g: int) -> int:
        return g if g >= 0 else n_groups

    def arr(values, dtype=np.float64) -> np.ndarray:
        return np.asarray(list(values), dtype=dtype)

    bits_from = [_reader(graph, i) for i in range(len(layers))]
    spatial = [layer.out_elems / max(layer.out_channels, 1) for layer in layers]
    rows = [
        layer.out_shape[2] if layer.op == "conv" and len(layer.out_shape) == 4 else s
        for layer, s in zip(layers, spatial)
    ]
    cols = [s / r if r else 1 for s, r in zip(spatial, rows)]
    ga = GraphArrays(
        names=[layer.name for layer in layers],
        kind=arr((OP_KINDS.index(layer.kind) for layer in layers), np.int64),
        has_macs=arr((layer.macs > 0 for layer in layers), bool),
        has_weights=arr((layer.op in ("conv", "linear") for layer in layers), bool),
        macs_factor=arr(float(layer.macs > 0) for layer in layers),
        weights_factor=arr(float(layer.op in ("conv", "linear")) for layer in layers),
        rankable_factor=arr(float(layer.rankable) for layer in layers),
        depthwise=arr((layer.kind == "depthwise" for layer in layers), bool),
        rankable=arr((layer.rankable for layer in layers), bool),
        cout=arr(layer.out_channels for layer in layers),
        cin=arr(
            (layer.in_channels // layer.groups if layer.op == "conv" else layer.in_channels) for layer in layers
        ),
        cin_dense=arr(
            (1 if layer.kind == "depthwise" else layer.in_channels // layer.groups if layer.op == "conv"
             else layer.in_channels) for layer in layers),
        k_area=arr(layer.kernel[0] * layer.kernel[1] for layer in layers),
        kernel_w=arr(layer.kernel[1] for layer in layers),
        stride=arr(layer.stride[1] for layer in layers),
        out_rows=arr(rows),
        out_cols=arr(cols),
        spatial=arr(spatial),
        ops=arr(layer.ops for layer in layers),
        bias=arr(layer.params - layer.weights for layer in layers),
        in_a=arr((layer.in_elems[0] if layer.in_elems else 0) for layer in layers),
        in_b=arr((layer.in_elems[1] if len(layer.in_elems) > 1 else 0) for layer in layers),
        out_elems=arr(layer.out_elems for layer in layers),
        group_out=arr((col(layer.group) for layer in layers), np.int64),
        group_in=arr((col(layer.in_group) for layer in layers), np.int64),
        group_a=arr((col(var_group.get(layer.in_vars[0], -1)) if layer.in_vars else n_groups for layer in layers),
                    np.int64),
        group_b=arr(
            (col(var_group.get(layer.in_vars[1], -1)) if len(layer.in_vars) > 1 else n_groups for layer in layers),
            np.int64,
        ),
        anchors=arr((index[g.anchor] for g in graph.groups), np.int64),
        group_channels=arr(g.channels for g in graph.groups),
        bits_from=arr(bits_from, np.int64),
    )
    graph._arrays = ga
    return ga


def _reader(graph: LayerGraph, i: int) -> int:
    """The nearest conv/linear downstream of non-MAC layer ``i`` (itself for MAC layers or if none):
    a quantized network stores the tensor between them at that layer's input width."""
    layer = graph.layers[i]
    if layer.macs > 0:
        return i
    frontier, seen = [layer.name], {layer.name}
    while frontier:
        succ = [s for n in frontier for s in graph.dag.successors(n) if s not in seen]
        hits = [s for s in succ if graph[s].op in ("conv", "linear")]
        if hits:
            return graph.index(min(hits, key=graph.index))
        seen.update(succ)
        frontier = succ
    return i


def policy_batch(graph: LayerGraph, policies: Sequence[Policy]) -> PolicyBatch:
    """Stack policies (keyed by layer name) into arrays in the graph's layer order."""
    rows = {k: np.empty((len(policies), len(graph))) for k in KNOBS}
    encoders = [(k, FIELD_BY_NAME[k].encode) for k in KNOBS]
    for i, policy in enumerate(policies):
        unknown = set(policy.layers) - set(graph._index)
        if unknown:
            raise PicojouleError(f"policy: layer '{sorted(unknown)[0]}' is not in model '{graph.name}'")
        for j, layer in enumerate(graph.layers):
            lp = policy.for_layer(layer.name)
            for k, encode in encoders:
                rows[k][i, j] = encode(getattr(lp, k))
        rows["keep"][i, graph_arrays(graph).anchors] = group_keeps(policy, graph)
    return PolicyBatch(**rows)


@dataclass
class Workload:
    """Per (policy, layer) work after the policy, and the operand widths the target really uses."""

    macs: np.ndarray
    ops: np.ndarray
    weight_elems: np.ndarray
    in_elems: np.ndarray
    out_elems: np.ndarray
    mid_elems: np.ndarray  # low-rank intermediate, written then read
    w_bits: np.ndarray  # padded to the datapath's native widths
    a_bits: np.ndarray
    mode_bits: np.ndarray
    peak_macs_per_s: np.ndarray
    mac_energy_pj: np.ndarray
    # conv-like shape of the (first part of the) layer, for the Eyeriss-style model
    m: np.ndarray
    c: np.ndarray
    rank: np.ndarray  # effective rank, 0 where not split
    zero_weights: np.ndarray  # weights a sparsity pass set to zero
    zero_fraction: np.ndarray  # of the weight matrices' elements, and so of the weights' MACs
    two_four: np.ndarray  # whether those zeros are 2:4 (else unstructured)
    sparse: bool  # whether any layer has zero weights
    batch: int = 1
    vector_ops: np.ndarray | None = None  # ops of a scale format on the widest mode (picojoule.hwmodels.scales)

    @property
    def nonzero_weights(self) -> np.ndarray:
        return self.weight_elems - self.zero_weights if self.sparse else self.weight_elems


def workload(ga: GraphArrays, target: Target, pb: PolicyBatch, batch: int = 1,
             scales: ScaleFormat | None = None) -> Workload:
    """Apply the policies in ``pb`` to the graph and the target's datapath widths: each compression pass
    (:mod:`picojoule.passes`) is a stage that changes the layers' channels, shapes, zeros or widths, in order;
    a scale format (``scales``, :mod:`picojoule.hwmodels.scales`) is the last stage."""
    st = PricingState(ga, target, pb, batch)
    for p in CHANNEL_STAGES:
        p.price(st)
    st.dense()
    for p in OTHER_STAGES:
        p.price(st)
    vector_ops = price_scales(scales, st, ga) if scales is not None else None
    sparse = st.zeros is not st.zero
    matrices = st.parts[0][0] * st.parts[0][1]
    if len(st.parts) > 1:  # a low-rank split's second half
        matrices = matrices + st.parts[1][0] * st.parts[1][1]
    return Workload(
        macs=st.macs, ops=ga.ops * st.k_out * batch, weight_elems=matrices + ga.bias * st.k_out,
        in_elems=(ga.in_a * st.k_a + ga.in_b * st.k_b) * batch, out_elems=ga.out_elems * st.k_out * batch,
        mid_elems=st.mid, w_bits=st.w_bits, a_bits=st.a_bits, mode_bits=st.mode_bits,
        peak_macs_per_s=st.peak_macs_per_s, mac_energy_pj=st.mac_energy_pj, m=st.cout, c=st.cin, rank=st.rank,
        zero_weights=st.zeros, two_four=st.no if st.pattern is st.zero else st.pattern > 0, sparse=sparse, batch=batch,
        vector_ops=vector_ops,
        zero_fraction=np.divide(st.zeros, matrices, out=np.zeros_like(st.zeros), where=matrices > 0) if sparse
        else st.zero,
    )
