"""Per-layer ZigZag reference figures for picojoule's analytic memory-hierarchy cost model.

For each zoo network (``resnet20``, ``resnet56``; CIFAR input 1x3x32x32) and each of ZigZag's shipped
hardware files ``eyeriss_like`` (mapping ``default``), ``tpu_like`` (mapping ``tpu_like``) and
``edge_tpu_like`` (mapping ``edge_tpu_like``), this script

1. exports a shape-inferred ONNX model of the network to ``experiments/results/zigzag/<net>.onnx``:
   the zoo model (seeded random init, eval mode) with every BatchNorm folded into the conv before it
   (so the graph is Conv/Relu/Add/Slice/Pad/GlobalAveragePool/Flatten/Gemm), exported with the
   TorchScript exporter (opset 13), then constant subgraphs (the option-A shortcut's pad amounts,
   deduplicated initializers) are evaluated into initializers so that every tensor has a static
   shape.  Parameter names survive (``layer1.0.conv1.weight``), node names are torch's scope names
   (``/layer1/layer1.0/conv1/Conv``).  picojoule's own ONNX frontend (``build_graph(path)``) loads
   the same file; each ZigZag layer is joined to the picojoule layer of that ONNX node;
2. runs ``zigzag.api.get_hardware_performance_zigzag`` (LOMA, ``lpf_limit=6``) with ``opt`` energy
   (and latency with ``--opt latency``);
3. writes one JSON per (network, hardware, opt) to
   ``experiments/results/zigzag/<net>__<hardware>__<opt>.json`` with totals and one record per costed
   layer (energy per operand and memory level, access counts, latency terms, mappings).

A JSON already present is not recomputed unless ``--force``.  ZigZag's own dump folders go to a
temporary directory.  ONNX files larger than 2 MB are removed after the runs (the script re-exports
them when needed) unless ``--keep-onnx``.

Usage::

    python experiments/zigzag_layers.py                       # resnet20+resnet56, all hardware, energy
    python experiments/zigzag_layers.py --networks resnet20 --hardware eyeriss_like --opt energy latency
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "experiments" / "results" / "zigzag"

NETWORKS = ("resnet20", "resnet56", "mobilenet_v2")
#: hardware file stem -> mapping file stem (both in zigzag/inputs/)
HARDWARE = {"eyeriss_like": "default", "tpu_like": "tpu_like", "edge_tpu_like": "edge_tpu_like"}
OPTS = ("energy", "latency")
OPSET = 13
ONNX_KEEP_LIMIT_BYTES = 2 * 1024 * 1024
DIRECTIONS = ("rd_out_to_low", "wr_in_by_low", "rd_out_to_high", "wr_in_by_high")


# --------------------------------------------------------------------------------------------- ONNX export


def _rel(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _fold_batchnorm(model):
    """A copy of ``model`` with each ``bnX`` folded into its sibling ``convX`` (which gains a bias)."""
    import torch
    from torch import nn

    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    for name, bn in list(modules.items()):
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        conv_leaf = leaf.replace("bn", "conv")
        if leaf.isdigit():  # nn.Sequential(conv, bn, ...) (MobileNetV2's ConvBNReLU): the conv just before it
            conv_leaf = str(int(leaf) - 1)
        conv = getattr(parent, conv_leaf, None)
        if not isinstance(conv, nn.Conv2d):
            raise RuntimeError(f"cannot fold {name}: no sibling conv {conv_leaf}")
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            fused.bias.copy_(bias)
        setattr(parent, conv_leaf, fused)
        setattr(parent, leaf, nn.Identity())
    return model


def _fold_constants(model):
    """Evaluate every node whose inputs are all constant (Constant, Identity of an initializer, the pad
    arithmetic of F.pad) into initializers, so that shape inference gives every tensor a static shape."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Constant" or (node.input and all((not t) or t in consts for t in node.input)):
            sub = helper.make_model(
                helper.make_graph(
                    [node], "fold", [],
                    [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
                    initializer=[numpy_helper.from_array(consts[t], t) for t in node.input if t]),
                opset_imports=model.opset_import)
            for name, value in zip(node.output, ReferenceEvaluator(sub).run(None, {})):
                consts[name] = np.asarray(value)
        else:
            keep.append(node)
    used = {t for node in keep for t in node.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    del g.value_info[:]
    return model


def export_onnx(net: str, path: Path) -> dict[str, Any]:
    """Export zoo network ``net`` to ``path`` (BN folded, constants folded, shape-inferred); return a summary."""
    import numpy as np
    import onnx
    import torch
    from onnx import shape_inference

    from picojoule.zoo import build_model

    model, example = build_model(net)
    folded = _fold_batchnorm(model)
    with torch.no_grad():
        fold_err = float((folded(example) - model(example)).abs().max())
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zz_export_") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(folded, (example,), str(raw), dynamo=False, do_constant_folding=True,
                              opset_version=OPSET, input_names=["input"], output_names=["logits"])
        proto = _fold_constants(onnx.load(str(raw)))
    proto = shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    ort_err = None
    try:
        import onnxruntime as ort

        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": example.numpy()})[0]
        with torch.no_grad():
            ort_err = float(np.abs(out - model(example).numpy()).max())
    except ImportError:  # pragma: no cover - onnxruntime is optional
        pass
    return {
        "path": _rel(path),
        "opset": OPSET,
        "input_shape": list(example.shape),
        "node_ops": dict(Counter(n.op_type for n in proto.graph.node)),
        "bytes": path.stat().st_size,
        "bn_fold_max_abs_err": fold_err,
        "onnxruntime_max_abs_err_vs_torch": ort_err,
    }


def onnx_layer_nodes(path: Path) -> list[dict[str, Any]]:
    """The Conv/Gemm nodes of the ONNX file, in node order, with their attributes."""
    import onnx

    proto = onnx.load(str(path))
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    nodes = []
    for idx, node in enumerate(proto.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul", "QLinearConv"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        nodes.append({"node_index": idx, "name": node.name, "op_type": node.op_type, "weight": node.input[1],
                      "weight_shape": inits.get(node.input[1]), "attrs": {k: (list(v) if isinstance(v, (list, tuple))
                                                                             else v) for k, v in attrs.items()}})
    return nodes


def picojoule_join(path: Path, net: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Map each ONNX Conv/Gemm node name to the picojoule layer built from it by picojoule's ONNX frontend.

    picojoule names a layer after its weight initializer (``layer1.0.conv1.weight`` -> ``layer1.0.conv1``),
    so the join is by that name, checked against the MAC count; if a name is missing it falls back to order.
    Also checks that picojoule's torch frontend gives the same layer names and MACs for the zoo model.
    """
    from picojoule.graph import build_graph
    from picojoule.zoo import build_model

    graph = build_graph(str(path))
    pj_layers = [l for l in graph.layers if l.op in ("conv", "linear", "matmul")]
    by_name = {l.name: l for l in pj_layers}
    nodes = onnx_layer_nodes(path)
    join: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(nodes):
        guess = node["weight"].removesuffix(".weight")
        layer, how = by_name.get(guess), "weight_name"
        if layer is None and i < len(pj_layers):
            layer, how = pj_layers[i], "order"
        join[node["name"]] = {"picojoule_layer": layer.name if layer else None,
                              "picojoule_macs": int(layer.macs) if layer else None,
                              "picojoule_join": how if layer else "none"}
    model, example = build_model(net)
    torch_layers = [(l.name, int(l.macs)) for l in build_graph(model, example).layers
                    if l.op in ("conv", "linear", "matmul")]
    summary = {
        "loader": "picojoule.graph.build_graph(<onnx path>) -> picojoule.frontends.onnx_frontend.onnx_ops",
        "onnx_frontend_compute_layers": len(pj_layers),
        "onnx_frontend_total_macs": int(sum(l.macs for l in pj_layers)),
        "torch_frontend_same_names_and_macs": torch_layers == [(l.name, int(l.macs)) for l in pj_layers],
    }
    return join, summary


# --------------------------------------------------------------------------------------------- ZigZag


def zigzag_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zigzag-dse")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def zigzag_inputs_dir() -> Path:
    import zigzag

    return Path(zigzag.__file__).resolve().parent / "inputs"


class _Collect(logging.Handler):
    """Collects the distinct WARNING+ messages that ZigZag logs during one run."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


def _reset_unique_message_filters() -> None:
    """ZigZag's loggers carry a ``UniqueMessageFilter`` that drops a message seen before in the process;
    clear them so that each run reports its own warnings, whatever ran earlier in the process."""
    from zigzag.utils import UniqueMessageFilter

    for logger in list(logging.Logger.manager.loggerDict.values()):
        for f in getattr(logger, "filters", []):
            if isinstance(f, UniqueMessageFilter):
                f.recorded_messages.clear()


def run_zigzag(onnx_path: Path, hardware: str, mapping: str, opt: str, dump_root: Path, lpf_limit: int):
    """One ZigZag run; returns (energy, latency, cmes, wall_s, cpu_s, distinct warning messages)."""
    import zigzag.api as zz_api

    inputs = zigzag_inputs_dir()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    collect = _Collect()
    for h in saved_handlers:
        root.removeHandler(h)
    root.addHandler(collect)  # basicConfig inside the API is then a no-op
    root.setLevel(logging.WARNING)
    _reset_unique_message_filters()
    try:
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        energy, latency, cmes = zz_api.get_hardware_performance_zigzag(
            str(onnx_path), str(inputs / "hardware" / f"{hardware}.yaml"), str(inputs / "mapping" / f"{mapping}.yaml"),
            opt=opt, lpf_limit=lpf_limit, dump_folder=str(dump_root / f"{onnx_path.stem}__{hardware}__{opt}"),
            loma_show_progress_bar=False)
        wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    finally:
        root.removeHandler(collect)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
    return energy, latency, cmes, wall, cpu, collect.messages


def _num(x: Any) -> Any:
    """JSON-friendly number (ints stay ints)."""
    if x is None:
        return None
    if isinstance(x, bool):
        return x
    f = float(x)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def _loops(levels) -> list[list[list[Any]]]:
    return [[[str(d), _num(s)] for d, s in level] for level in levels]


def hardware_summary(acc) -> dict[str, Any]:
    oa = acc.operational_array
    mems = []
    for ml in acc.memory_hierarchy.mem_level_list:
        mi = ml.memory_instance
        mems.append({
            "name": ml.name, "size_bits": _num(mi.size), "r_cost_pj": _num(mi.r_cost), "w_cost_pj": _num(mi.w_cost),
            "latency": _num(mi.latency), "operands": [str(o) for o in ml.operands],
            "level_of_operand": {str(o): int(v) for o, v in ml.mem_level_of_operands.items()},
            "served_dimensions": sorted(str(d) for d in ml.served_dimensions), "unroll_count": int(ml.unroll_count),
            "bw_min_bits": {str(o): {str(k): _num(v) for k, v in d.items()} for o, d in ml.bandwidths_min.items()},
            "bw_max_bits": {str(o): {str(k): _num(v) for k, v in d.items()} for o, d in ml.bandwidths_max.items()},
        })
    return {
        "name": acc.name,
        "oa_dimension_sizes": {str(d): int(s) for d, s in oa.dimension_sizes.items()},
        "mac_units": int(oa.total_unit_count),
        "mac_energy_pj": _num(oa.unit.energy_cost),
        "systolic_dimensions": sorted(str(d) for d in getattr(oa, "systolic_dimensions", set()) or []),
        "memories": mems,
    }


def layer_record(cme, node: dict[str, Any], join: dict[str, Any]) -> dict[str, Any]:
    """One costed layer: shapes, precisions, energy/latency terms, per-operand per-level accesses, mappings."""
    layer = cme.layer
    sizes = {str(d): int(s) for d, s in layer.layer_dim_sizes.items()}
    attrs = node["attrs"]
    is_conv = node["op_type"] in ("Conv", "QLinearConv")
    if is_conv:
        shape = {k: sizes.get(k, 1) for k in ("B", "K", "C", "OX", "OY", "FX", "FY", "G")}
        stride = list(attrs.get("strides", [1, 1]))
        groups = int(attrs.get("group", 1))
    else:  # Gemm/MatMul: O[d][k] += I[d][c] * W[c][k]
        shape = {"B": sizes.get("B", 1), "K": sizes["K"], "C": sizes["C"], "OX": 1, "OY": sizes.get("D", 1),
                 "FX": 1, "FY": 1, "G": 1}
        stride, groups = [1, 1], 1
    mem_levels: dict[str, list[dict[str, Any]]] = {}
    mem_energy_per_operand: dict[str, float] = {}
    for layer_op, accesses in cme.memory_word_access.items():
        mem_op = cme.memory_operand_links.layer_to_mem_op(layer_op)
        levels = cme.mem_hierarchy_dict[mem_op]
        energy_further = cme.mem_energy_breakdown_further[layer_op]
        energy_level = cme.mem_energy_breakdown[layer_op]
        rows = []
        for lvl, (acc, ml) in enumerate(zip(accesses, levels)):
            rows.append({
                "level": lvl,
                "memory": ml.name,
                "memory_operand": str(mem_op),
                "r_cost_pj": _num(ml.read_energy),
                "w_cost_pj": _num(ml.write_energy),
                "word_accesses": {str(k): _num(v) for k, v in acc.data.items()},
                "energy_pj": {str(k): _num(v) for k, v in energy_further[lvl].data.items()},
                "energy_total_pj": _num(energy_level[lvl]),
                "mem_utilization_individual": _num(cme.mem_utili_individual[layer_op][lvl]),
                "mem_utilization_shared": _num(cme.mem_utili_shared[layer_op][lvl]),
                "effective_mem_utilization_individual": _num(cme.effective_mem_utili_individual[layer_op][lvl]),
                "double_buffer": bool(cme.double_buffer_true[layer_op][lvl + 1])
                if lvl + 1 < len(cme.double_buffer_true[layer_op]) else None,
            })
        mem_levels[str(layer_op)] = rows
        mem_energy_per_operand[str(layer_op)] = _num(sum(energy_level))
    tm = cme.temporal_mapping
    return {
        "zigzag_layer_id": int(layer.id),
        "zigzag_layer_name": layer.name,
        "onnx_node": node["name"],
        "onnx_op": node["op_type"],
        "onnx_node_index": node["node_index"],
        **join,
        "zigzag_operator_type": str(layer.type),
        "equation": str(layer.equation),
        "loop_sizes_zigzag": sizes,
        **shape,
        "stride": stride,
        "groups": groups,
        "padding": {str(k): list(v) for k, v in getattr(layer.padding, "data", {}).items()},
        "mac_count": int(layer.total_mac_count),
        "operand_precision": {str(k): int(v) for k, v in layer.operand_precision.data.items()},
        "operand_size_bits": {str(k): _num(v) for k, v in layer.operand_size_bit.items()},
        "energy_total_pj": _num(cme.energy_total),
        "mac_energy_pj": _num(cme.mac_energy),
        "mem_energy_pj": _num(cme.mem_energy),
        "mem_energy_per_operand_pj": mem_energy_per_operand,
        "memory_levels": mem_levels,
        "latency_total_cycles": _num(cme.latency_total2),
        "latency_total0_cycles": _num(cme.latency_total0),
        "latency_total1_cycles": _num(cme.latency_total1),
        "ideal_cycles": _num(cme.ideal_cycle),
        "ideal_temporal_cycles": _num(cme.ideal_temporal_cycle),
        "stall_slack_comb_cycles": _num(cme.stall_slack_comb),
        "data_onloading_cycles": _num(cme.data_onloading_cycle),
        "data_offloading_cycles": _num(cme.data_offloading_cycle),
        "systolic_drain_cycles": _num(cme.systolic_drain_cycle),
        "mac_spatial_utilization": _num(cme.mac_spatial_utilization),
        "mac_utilization0": _num(cme.mac_utilization0),
        "mac_utilization1": _num(cme.mac_utilization1),
        "mac_utilization2": _num(cme.mac_utilization2),
        "spatial_mapping_oa": {str(oa): {str(d): _num(f) for d, f in m.items()} for oa, m in layer.spatial_mapping.items()},
        "spatial_mapping": str(cme.spatial_mapping),
        "spatial_mapping_int": str(cme.spatial_mapping_int),
        "spatial_mapping_per_operand_level": {str(op): _loops(lv) for op, lv in
                                              cme.spatial_mapping_int.mapping_dict_origin.items()},
        "temporal_mapping": str(tm),
        "temporal_mapping_per_operand_level": {str(op): _loops(lv) for op, lv in tm.mapping_dic_stationary.items()},
    }


def build_result(net: str, hardware: str, mapping: str, opt: str, lpf_limit: int, onnx_info: dict[str, Any],
                 join: dict[str, dict[str, Any]], pj_summary: dict[str, Any], onnx_path: Path,
                 run: tuple) -> dict[str, Any]:
    energy, latency, cmes, wall, cpu, warnings_ = run
    total, per_layer = cmes[0]
    nodes = {n["name"]: n for n in onnx_layer_nodes(onnx_path)}
    records = [layer_record(cme, nodes[cme.layer.name], join.get(cme.layer.name, {})) for cme, _ in per_layer]
    skipped = [n for n in nodes if n not in {r["onnx_node"] for r in records}]
    acc = per_layer[0][0].accelerator
    per_mem: Counter[str] = Counter()
    per_operand: Counter[str] = Counter()
    for r in records:
        for op, rows in r["memory_levels"].items():
            per_operand[op] += r["mem_energy_per_operand_pj"][op]
            for row in rows:
                per_mem[row["memory"]] += row["energy_total_pj"]
    import onnx

    proto = onnx.load(str(onnx_path))
    dummy = Counter(n.op_type for n in proto.graph.node if n.op_type not in ("Conv", "Gemm", "MatMul", "QLinearConv"))
    inputs = zigzag_inputs_dir()
    return {
        "network": net,
        "hardware": hardware,
        "opt": opt,
        "zigzag_version": zigzag_version(),
        "api": "zigzag.api.get_hardware_performance_zigzag(workload, accelerator, mapping, opt=opt, "
               "lpf_limit=lpf_limit, dump_folder=<tmp>, loma_show_progress_bar=False); other arguments default "
               "(temporal_mapping_search_engine='loma', temporal_mapping_type='uneven', "
               "nb_spatial_mappings_generated=3)",
        "files": {
            "workload": _rel(onnx_path),
            "accelerator": f"zigzag/inputs/hardware/{hardware}.yaml",
            "mapping": f"zigzag/inputs/mapping/{mapping}.yaml",
            "zigzag_inputs_dir": str(inputs),
        },
        "lpf_limit": lpf_limit,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "onnx": onnx_info,
        "picojoule": pj_summary,
        "hardware_summary": hardware_summary(acc),
        "totals": {
            "energy_pj": _num(energy),
            "latency_cycles": _num(latency),
            "mac_energy_pj": _num(total.mac_energy),
            "mem_energy_pj": _num(total.mem_energy),
            "mem_energy_per_operand_pj": {k: _num(v) for k, v in per_operand.items()},
            "mem_energy_per_memory_pj": {k: _num(v) for k, v in per_mem.items()},
            "ideal_cycles": _num(total.ideal_cycle),
            "ideal_temporal_cycles": _num(total.ideal_temporal_cycle),
            "latency_total0_cycles": _num(total.latency_total0),
            "latency_total1_cycles": _num(total.latency_total1),
            "mac_count": sum(r["mac_count"] for r in records),
            "costed_layers": len(records),
            "check_sum_layer_energy_pj": _num(sum(r["energy_total_pj"] for r in records)),
            "check_sum_layer_latency_cycles": _num(sum(r["latency_total_cycles"] for r in records)),
        },
        "dummy_nodes_not_costed": dict(dummy),
        "compute_nodes_not_costed": skipped,
        "zigzag_warnings": warnings_,
        "layers": records,
    }


# --------------------------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: export, run ZigZag for each (network, hardware, opt) not cached, write JSONs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    ap.add_argument("--hardware", nargs="+", default=list(HARDWARE), choices=list(HARDWARE))
    ap.add_argument("--opt", nargs="+", default=["energy"], choices=OPTS)
    ap.add_argument("--lpf-limit", type=int, default=6)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--force", action="store_true", help="recompute JSONs that already exist (a network's ONNX is re-exported whenever it needs a run)")
    ap.add_argument("--keep-onnx", action="store_true", help="keep ONNX files over 2 MB")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    jobs = [(n, h, o) for n in args.networks for h in args.hardware for o in args.opt]
    prepared: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="zigzag_dump_") as dump:
        for i, (net, hw, opt) in enumerate(jobs, 1):
            target = out / f"{net}__{hw}__{opt}.json"
            tag = f"[{i}/{len(jobs)}] {net} {hw} opt={opt}"
            if target.is_file() and not args.force:
                print(f"{tag}: cached ({_rel(target)})", flush=True)
                continue
            if net not in prepared:
                onnx_path = out / f"{net}.onnx"
                info = export_onnx(net, onnx_path)
                join, pj = picojoule_join(onnx_path, net)
                prepared[net] = (onnx_path, info, join, pj)
                print(f"{tag}: exported {onnx_path.name} ({info['bytes'] / 1e6:.2f} MB, {info['node_ops']}); "
                      f"picojoule layers {pj['onnx_frontend_compute_layers']}", flush=True)
            onnx_path, info, join, pj = prepared[net]
            print(f"{tag}: running ZigZag ...", flush=True)
            run = run_zigzag(onnx_path, hw, HARDWARE[hw], opt, Path(dump), args.lpf_limit)
            result = build_result(net, hw, HARDWARE[hw], opt, args.lpf_limit, info, join, pj, onnx_path, run)
            target.write_text(json.dumps(result, indent=1) + "\n")
            t = result["totals"]
            print(f"{tag}: {result['wall_seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU, "
                  f"{t['costed_layers']} layers, energy {t['energy_pj']:.4g} pJ, latency {t['latency_cycles']:.6g} "
                  f"cycles -> {target.name}", flush=True)
    if not args.keep_onnx:
        for net in args.networks:
            p = out / f"{net}.onnx"
            if p.is_file() and p.stat().st_size > ONNX_KEEP_LIMIT_BYTES:
                p.unlink()
                print(f"removed {p.name} (> 2 MB; re-exported on demand)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
