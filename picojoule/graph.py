"""LayerGraph: a networkx DAG of a model's compute layers, with shapes, MACs, parameters and pruning groups.

Two front ends (``torch.export`` for nn.Modules, ``onnx`` for .onnx files) translate a model into the
same list of primitive ops (:class:`RawOp`); one assembler turns that list into the graph:

* BatchNorm that directly follows a conv or linear is folded into it (its scale and shift count as
  that layer's parameters, as the reference parameter counts do), and an activation that alone
  consumes a layer's output is fused into that layer (one op per output element), as accelerators
  and compilers such as TVM do;
* data-movement ops (reshape, transpose, slice, pad, dropout, ...) are not layers: edges pass
  through them;
* every tensor's channel dimension gets a *channel variable*. Ops that keep channels aligned (BN,
  activations, pooling, depthwise conv, element-wise add/mul, the contraction of a matmul) unite the
  variables of their operands; convs and linears start a new one. Each resulting class is a
  *pruning group*: the layers whose output channels must be pruned together. A class touching the
  network's input or output, a concat or an op we do not understand is not prunable.

Counting: ``macs`` are the multiply-accumulates of conv, linear and matmul layers; ``params`` are
weights + biases + folded BN scale/shift (running statistics are buffers, not parameters);
element-wise layers have ``ops`` (one per output element) and no MACs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from picojoule.errors import PicojouleError

#: op -> cost-model kind (see picojoule.hwmodels.target.OP_KINDS)
LAYER_OPS = ("conv", "linear", "matmul", "pool", "add", "mul", "act", "norm", "softmax", "embedding")
#: primitive ops that are not layers and keep the channel variable of their (first) input
PASS_OPS = ("pass",)
#: element ops per output element, for the non-MAC layers (a softmax: max, sub, exp, sum, div)
OPS_PER_ELEMENT = {"pool": 1, "add": 1, "mul": 1, "act": 1, "norm": 5, "softmax": 5, "embedding": 1}


@dataclass
class RawOp:
    """One primitive op from a front end. Tensors are named by strings; shapes include the batch."""

    name: str
    op: str  # LAYER_OPS, "batchnorm", "pass", "newchan" (channel-changing copy), "fixed" (unknown)
    inputs: list[str]  # activation tensors only (weights are described by attrs)
    output: str
    out_shape: tuple[int, ...]
    in_shapes: list[tuple[int, ...]]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Layer:
    """A compute layer of the graph, as the cost models see it."""

    name: str
    op: str
    kind: str  # conv | depthwise | linear | matmul | pool | elementwise
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    macs: int = 0
    weights: int = 0  # weight tensor elements
    params: int = 0  # weights + bias + folded BN scale/shift
    ops: int = 0  # element-wise operations (non-MAC layers, and activations fused into a layer)
    fused: list[str] = field(default_factory=list)  # activations fused into this layer
    in_elems: list[int] = field(default_factory=list)
    out_elems: int = 0
    in_vars: list[int] = field(default_factory=list)  # channel variable of each activation input
    out_var: int = -1
    group: int = -1  # pruning group of the output channels (-1: not prunable)
    in_group: int = -1  # pruning group of the (contracted) input channels (-1: fixed)

    @property
    def prunable(self) -> bool:
        return self.group >= 0

    @property
    def rankable(self) -> bool:
        """Whether a low-rank split applies: conv (not depthwise/grouped) and linear layers."""
        return (self.op == "conv" and self.groups == 1) or self.op == "linear"

    @property
    def max_rank(self) -> int:
        """Full rank of the weight matrix (out, in*k*k)."""
        return min(self.out_channels, self.in_channels * self.kernel[0] * self.kernel[1]) if self.rankable else 0


@dataclass
class PruningGroup:
    """Layers whose output channels are pruned together (one keep ratio)."""

    id: int
    channels: int
    members: list[str]  # layers that produce these channels (conv/linear first, in graph order)
    anchor: str  # the member whose keep ratio the group takes


class LayerGraph:
    """The compute layers of one model as a networkx DAG (node = layer name, attribute ``layer``)."""

    def __init__(self, name: str, layers: list[Layer], edges: list[tuple[str, str]], groups: list[PruningGroup]):
        self.name = name
        self.layers = layers
        self.groups = groups
        self.dag = nx.DiGraph()
        for layer in layers:
            self.dag.add_node(layer.name, layer=layer)
        self.dag.add_edges_from(edges)
        self._index = {layer.name: i for i, layer in enumerate(layers)}

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> Layer:
        try:
            return self.layers[self._index[name]]
        except KeyError:
            raise PicojouleError(f"model '{self.name}' has no layer '{name}'") from None

    def index(self, name: str) -> int:
        return self._index[name]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def compute_layers(self) -> list[Layer]:
        """The layers that carry weights (conv, linear): those a policy's bits, keep and rank address."""
        return [layer for layer in self.layers if layer.op in ("conv", "linear")]

    def summary(self) -> dict[str, int]:
        return {"layers": len(self.layers), "macs": self.macs, "params": self.params, "groups": len(self.groups)}

    def __repr__(self) -> str:
        return (f"LayerGraph({self.name!r}: {len(self.layers)} layers, {len(self.compute_layers())} conv/linear, "
                f"{len(self.groups)} pruning groups, {self.macs / 1e6:.2f} M MACs, {self.params:,} params)")

    @classmethod
    def from_torch(cls, model: Any, example_input: Any, name: str | None = None) -> LayerGraph:
        """The graph of a torch ``nn.Module`` traced (``torch.export``) on ``example_input``."""
        return build_graph(model, example_input, name=name or type(model).__name__.lower())

    @classmethod
    def from_onnx(cls, path: str | Path, name: str | None = None) -> LayerGraph:
        """The graph of an ONNX file."""
        if not str(path).endswith(".onnx"):
            raise PicojouleError(f"{path}: expected an .onnx file")
        return build_graph(str(path), name=name)


# --------------------------------------------------------------------------------------------------
# assembler: RawOps -> LayerGraph


def _kind(op: RawOp) -> str:
    if op.op == "conv":
        cin, groups = op.attrs["in_channels"], op.attrs["groups"]
        return "depthwise" if groups > 1 and groups == cin else "conv"
    if op.op in ("linear", "matmul", "pool"):
        return op.op
    return "elementwise"


def _channels(shape: tuple[int, ...]) -> int:
    """Channel dimension: dim 1 of an NCHW tensor, the last dim otherwise."""
    if len(shape) == 4:
        return shape[1]
    return shape[-1] if shape else 1


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []

    def new(self, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        return ra

    def fix(self, v: int) -> None:
        self.fixed[self.find(v)] = True


def _fuse(ops: list[RawOp]) -> list[RawOp]:
    """Fold a BN into the conv/linear that alone feeds it, and fuse an activation into the layer that
    alone feeds it (as accelerators and TVM do); any other BN becomes a 'norm' layer."""
    consumers: dict[str, int] = {}
    for op in ops:
        for t in op.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    producer: dict[str, RawOp] = {}
    renamed: dict[str, str] = {}
    out: list[RawOp] = []
    for op in ops:
        op.inputs = [renamed.get(t, t) for t in op.inputs]
        src = producer.get(op.inputs[0]) if op.inputs else None
        sole = src is not None and consumers.get(op.inputs[0]) == 1
        if op.op == "batchnorm" and sole and src.op in ("conv", "linear") and not src.attrs.get("fused"):
            src.attrs["extra_params"] = src.attrs.get("extra_params", 0) + op.attrs["params"]
        elif op.op == "act" and sole and src.op in LAYER_OPS and src.op != "softmax":
            src.attrs.setdefault("fused", []).append(op.name)
        else:
            if op.op == "batchnorm":
                op.op = "norm"
            producer[op.output] = op
            out.append(op)
            continue
        consumers[src.output] = consumers.get(op.output, 0)
        renamed[op.output] = src.output
    return out


def assemble(name: str, ops: list[RawOp], graph_inputs: list[str], graph_outputs: list[str]) -> LayerGraph:
    """Build a LayerGraph from a front end's primitive ops (in topological order)."""
    ops = _fuse(ops)
    uf = _UnionFind()
    var: dict[str, int] = {t: uf.new(fixed=True) for t in graph_inputs}
    producer_layer: dict[str, set[str]] = {t: set() for t in graph_inputs}  # tensor -> nearest layers
    layers: list[Layer] = []
    edges: set[tuple[str, str]] = set()
    for op in ops:
        missing = [t for t in op.inputs if t not in var]
        if missing:
            raise PicojouleError(f"model '{name}': op '{op.name}' reads unknown tensor '{missing[0]}'")
        in_vars = [var[t] for t in op.inputs]
        sources = set().union(*(producer_layer[t] for t in op.inputs)) if op.inputs else set()
        if op.op in PASS_OPS:
            var[op.output] = in_vars[0]
            producer_layer[op.output] = sources
            continue
        if op.op in ("newchan", "fixed"):
            # channel-changing data movement (channel pad, concat) or an op we do not model:
            # a fresh variable; 'fixed' also pins its inputs (we cannot prune through it).
            var[op.output] = uf.new(fixed=op.op == "fixed")
            if op.op == "fixed":
                for v in in_vars:
                    uf.fix(v)
            producer_layer[op.output] = sources
            continue
        layer = _make_layer(op)
        if op.op in ("conv", "linear"):
            out_v = in_vars[0] if layer.kind == "depthwise" else uf.new()
            if op.op == "conv" and op.attrs["groups"] > 1 and layer.kind != "depthwise":
                uf.fix(in_vars[0])
                uf.fix(out_v)
        elif op.op == "matmul" and op.attrs.get("pinned"):
            # a fused attention's matmuls: heads x head_dim reshapes pin the projections' channels
            for v in in_vars:
                uf.fix(v)
            out_v = uf.new(fixed=True)
        elif op.op == "matmul":
            # A (.., M, K) @ B (.., K, N): K couples A's channel with B's row dim. We track the channel
            # (last dim) of each operand: when B's producer gives (.., K, N) through a transpose its
            # last dim is K, so unite A's last dim with B's; otherwise B's last dim is the output's.
            a_v, b_v = in_vars
            if op.attrs.get("b_transposed"):
                uf.union(a_v, b_v)
                out_v = uf.new(fixed=True)  # attention scores: sequence length, not channels
            else:
                uf.fix(a_v)  # A's last dim is contracted against B's rows, which are not a channel var
                out_v = b_v
        elif op.op in ("add", "mul") and len(in_vars) == 2:
            a_shape, b_shape = op.in_shapes
            if _channels(a_shape) == _channels(b_shape):
                out_v = uf.union(in_vars[0], in_vars[1])
            else:  # broadcast (e.g. an attention mask): pin the smaller operand's variable
                out_v = in_vars[0] if math.prod(a_shape) >= math.prod(b_shape) else in_vars[1]
                uf.fix(in_vars[1] if out_v == in_vars[0] else in_vars[0])
        elif op.op == "softmax":
            out_v = in_vars[0]
            uf.fix(out_v)
        else:  # pool, act, norm, unary add/mul: channels pass straight through
            out_v = in_vars[0] if in_vars else uf.new(fixed=True)
        layer.in_vars, layer.out_var = in_vars, out_v
        layers.append(layer)
        edges.update((s, layer.name) for s in sources)
        var[op.output] = out_v
        producer_layer[op.output] = {layer.name}
    for t in graph_outputs:
        if t in var:
            uf.fix(var[t])
    groups = _groups(layers, uf)
    return LayerGraph(name, layers, sorted(edges), groups)


def _groups(layers: list[Layer], uf: _UnionFind) -> list[PruningGroup]:
    """Number the prunable channel classes in graph order and attach them to the layers.

    A class is a group when it is not pinned and some conv/linear produces its channels.
    """
    for layer in layers:
        layer.out_var = uf.find(layer.out_var)
        layer.in_vars = [uf.find(v) for v in layer.in_vars]
    producers: dict[int, list[Layer]] = {}
    for layer in layers:
        if layer.op in ("conv", "linear") and not uf.fixed[layer.out_var]:
            producers.setdefault(layer.out_var, []).append(layer)
    group_of = {root: i for i, root in enumerate(producers)}
    groups = [
        PruningGroup(group_of[root], members[0].out_channels, [m.name for m in members], members[0].name)
        for root, members in producers.items()
    ]
    for layer in layers:
        layer.group = group_of.get(layer.out_var, -1)
        layer.in_group = group_of.get(layer.in_vars[0], -1) if layer.in_vars else -1
    return groups


def _make_layer(op: RawOp) -> Layer:
    out_elems = math.prod(op.out_shape)
    in_elems = [math.prod(s) for s in op.in_shapes]
    layer = Layer(op.name, op.op, _kind(op), list(op.in_shapes), tuple(op.out_shape), in_elems=in_elems,
                  out_elems=out_elems)
    a = op.attrs
    if op.op == "conv":
        kh, kw = a["kernel"]
        layer.in_channels, layer.out_channels, layer.groups = a["in_channels"], a["out_channels"], a["groups"]
        layer.kernel, layer.stride = (kh, kw), tuple(a["stride"])
        layer.weights = layer.out_channels * (layer.in_channels // layer.groups) * kh * kw
        layer.macs = out_elems * (layer.in_channels // layer.groups) * kh * kw
    elif op.op == "linear":
        layer.in_channels, layer.out_channels = a["in_features"], a["out_features"]
        layer.weights = layer.in_channels * layer.out_channels
        layer.macs = out_elems * layer.in_channels
    elif op.op == "matmul":
        layer.in_channels, layer.out_channels = a["contraction"], op.out_shape[-1]
        layer.macs = out_elems * a["contraction"]
    else:
        layer.in_channels = layer.out_channels = _channels(op.out_shape)
        layer.ops = out_elems * OPS_PER_ELEMENT.get(op.op, 1)
        if op.op == "pool":
            layer.ops = max(in_elems[0], out_elems)
            layer.kernel = tuple(a.get("kernel", (1, 1)))
    layer.fused = list(a.get("fused", []))
    layer.ops += out_elems * len(layer.fused)
    layer.params = layer.weights + a.get("bias", 0) + a.get("extra_params", 0) + a.get("params", 0)
    return layer


# --------------------------------------------------------------------------------------------------
# public constructors


def build_graph(model: Any, example_input: Any = None, name: str | None = None) -> LayerGraph:
    """LayerGraph of a torch.nn.Module (with an example input), an .onnx path, or a model spec
    (zoo name, ``digits``, ``package.module:function``: see picojoule.models)."""
    if isinstance(model, (str, Path)):
        text = str(model)
        if text.endswith(".onnx"):
            from picojoule.frontends.onnx_frontend import onnx_ops

            return assemble(name or Path(text).stem, *onnx_ops(Path(text)))
        from picojoule.models import load_torch_model

        module, example = load_torch_model(text)
        return build_graph(module, example, name=name or text)
    if example_input is None:
        raise PicojouleError("build_graph: a torch module needs an example input")
    from picojoule.frontends.torch_frontend import torch_ops

    return assemble(name or type(model).__name__, *torch_ops(model, example_input))
