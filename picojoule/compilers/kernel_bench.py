"""Measure a :class:`~picojoule.hwmodels.kernel_table.KernelTable` on this CPU in ONNX Runtime, and fit its
whole-model terms (nn-Meter's kernel-level prediction, on the runtime a user deploys on).

* :func:`design_policies`: policies that give each conv/linear layer many shapes (a random keep per pruning
  group) and both precisions (W8A8 or float per layer), without low rank or emulated widths, so each MAC layer is
  one ORT kernel.
* :func:`measure_kernel_table`: ORT's profiler on whole-model builds of them (``compile``'s integer ONNX) gives
  each layer's kernel time *in context* (after the previous layer, in ORT's layout): a kernel timed alone runs
  from a hot cache and after a layout change, and is not the same (an int8 conv of 8 channels timed alone is as
  fast as one of 16; in ResNet-20 it is twice as slow). Per shape the table keeps the median over the builds and
  layers that had it, each the 20th percentile of its calls; shapes of :func:`kernel_configs` that no build gave
  are timed alone and scaled by the in-context/alone ratio of shapes timed both ways.
* :func:`fit_kernel_table`: on the builds' measured whole-model latencies, a scale on the kernels, a scale on the
  other layers' modelled latency, a cost per integer/float transition and a per-inference offset (non-negative
  least squares on relative error), with out-of-fold MAPE and Spearman.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.hwmodels.kernel_table import KernelEntry, KernelTable
from picojoule.hwmodels.target import Target, load_target
from picojoule.hwmodels.workload import graph_arrays, policy_batch, workload
from picojoule.policy import Policy, kept_channels

__all__ = ["KernelConfig", "design_policies", "fit_kernel_table", "kernel_configs", "measure_kernel_table",
           "profile_kernels", "table_terms"]

#: ORT's CPU kernels that carry a layer's MACs (after its fusions), float and integer
MAC_OPS = ("QLinearConv", "Conv", "FusedConv", "NchwcConv", "ConvInteger", "QGemm", "Gemm", "FusedGemm",
           "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat")
DEFAULT_KEEPS = (1.0, 0.75, 0.5)
QUANTILE = 0.2  # of a kernel's per-call times


@dataclass(frozen=True)
class KernelConfig:
    """One kernel shape to time: the table key and what it takes to build it."""

    op: str
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: int
    rows: int
    cols: int
    in_shape: tuple[int, ...]  # the layer's input, with the pruned channel count
    precision: str
    after: str = "float"  # the previous MAC layer's precision (a one-layer build is after float: its input)

    def key(self) -> tuple:
        """The lookup key of :class:`~picojoule.hwmodels.kernel_table.KernelTable` (see ``layer_keys``)."""
        kind = {"conv": 0, "depthwise": 1, "linear": 2}[self.op]
        return (kind, self.cin if self.op != "depthwise" else 1, self.cout, self.kernel[0] * self.kernel[1],
                self.stride, self.rows, self.cols, 1, self.precision == "int8", self.after == "int8")

    def entry(self, latency_s: float) -> KernelEntry:
        return KernelEntry(op=self.op, cin=self.cin if self.op != "depthwise" else 1, cout=self.cout,
                           kernel=self.kernel[0] * self.kernel[1], stride=self.stride, rows=self.rows,
                           cols=self.cols, precision=self.precision, after=self.after, latency_s=latency_s)


def kernel_configs(graph: LayerGraph, keeps: Sequence[float] = DEFAULT_KEEPS,
                   precisions: Sequence[str] = ("int8", "float")) -> list[KernelConfig]:
    """Every distinct (shape, precision) of ``graph``'s conv/depthwise/linear layers under ``keeps``."""
    ga = graph_arrays(graph)
    group_channels = {g.id: g.channels for g in graph.groups}
    seen: dict[tuple, KernelConfig] = {}
    for j, layer in enumerate(graph.layers):
        if layer.kind not in ("conv", "depthwise", "linear"):
            continue
        outs = sorted({kept_channels(group_channels[layer.group], k) for k in keeps}) \
            if layer.group >= 0 else [layer.out_channels]
        if layer.kind == "depthwise":
            pairs = [(c, c) for c in outs]
        else:
            ins = sorted({kept_channels(group_channels[layer.in_group], k) for k in keeps}) \
                if layer.in_group >= 0 else [layer.in_channels]
            pairs = [(c, m) for c in ins for m in outs]
        shape = tuple(layer.in_shapes[0])
        for c, m in pairs:
            for p in precisions:
                for after in (precisions if j else ("float",)):
                    in_shape = (*shape[:1], c, *shape[2:]) if layer.kind != "linear" else (*shape[:-1], c)
                    cfg = KernelConfig(layer.kind, int(c), int(m), tuple(layer.kernel), int(layer.stride[0]),
                                       int(ga.out_rows[j]), int(ga.out_cols[j]), in_shape, p, after)
                    seen.setdefault(cfg.key(), cfg)
    return list(seen.values())


def _config_of(key: tuple) -> KernelConfig:
    """A KernelConfig for a key seen in a build but not listed by kernel_configs (its build shape is not needed)."""
    kind, cin, cout, area, stride, rows, cols, _batch, is_int, after_int = key
    side = int(round(math.sqrt(area)))
    op = ("conv", "depthwise", "linear")[kind]
    return KernelConfig(op, cin if op != "depthwise" else cout, cout, (side, area // side), stride, rows, cols, (),
                        "int8" if is_int else "float", "int8" if after_int else "float")


def _module(cfg: KernelConfig) -> tuple[nn.Module, torch.Tensor]:
    # a Flatten reads the output, as the next layer would: the integer rewrite quantizes a conv's output only
    # when something reads it, and ORT fuses a QLinearConv only with that output quantizer
    if cfg.op == "linear":
        return nn.Sequential(nn.Linear(cfg.cin, cfg.cout), nn.ReLU(), nn.Flatten()).eval(), torch.randn(cfg.in_shape)
    kh, kw = cfg.kernel
    h, w = cfg.in_shape[2], cfg.in_shape[3]
    pad = (max(0, math.ceil(((cfg.rows - 1) * cfg.stride + kh - h) / 2)),
           max(0, math.ceil(((cfg.cols - 1) * cfg.stride + kw - w) / 2)))
    groups = cfg.cin if cfg.op == "depthwise" else 1
    conv = nn.Conv2d(cfg.cin, cfg.cout, cfg.kernel, cfg.stride, pad, groups=groups, bias=False)
    module = nn.Sequential(conv, nn.BatchNorm2d(cfg.cout), nn.ReLU(), nn.Flatten()).eval()
    return module, torch.randn(cfg.in_shape)


def _build(cfg: KernelConfig, outdir: Path) -> tuple[Path, torch.Tensor]:
    import onnx

    from picojoule.compilers.export import export_onnx
    from picojoule.compilers.integer_onnx import integer_onnx
    from picojoule.spaces.quantize import calibrate_activations, quantize_model

    torch.manual_seed(0)
    module, x = _module(cfg)
    name = f"{cfg.op}-{cfg.cin}-{cfg.cout}-{cfg.kernel[0]}x{cfg.kernel[1]}-s{cfg.stride}-{cfg.rows}x{cfg.cols}" \
           f"-{cfg.precision}"
    if cfg.precision == "float":
        return export_onnx(module, x, outdir / f"{name}.onnx"), x
    mac = next(n for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    q = quantize_model(module, {mac: (8, 8)})
    calibrate_activations(q, [torch.randn((4, *x.shape[1:]))])
    path = export_onnx(q, x, outdir / f"{name}.qdq.onnx")
    integer, _ = integer_onnx(onnx.load(str(path)), [torch.randn((4, *x.shape[1:])).numpy()])
    out = outdir / f"{name}.ort.onnx"
    onnx.save(integer, str(out))
    return out, x


def profile_kernels(path: str | Path, x: Any, runs: int, workdir: str | Path) -> list[float]:
    """The 20th percentile of the per-call time (s) of each MAC kernel of the ONNX file ``path`` in ORT on one
    thread, from its profiler, in the order ORT runs them."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(workdir) / "kernels")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, np.float32)}
    warmup = max(5, runs // 10)
    for _ in range(warmup + runs):
        session.run(None, feed)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    calls: list[list[float]] = [[]]
    for e in events:  # in the order logged: each node when it ends, then its call's model_run
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            calls.append([])
        elif e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") \
                and e.get("args", {}).get("op_name") in MAC_OPS:
            calls[-1].append(float(e["dur"]) * 1e-6)
    calls = [c for c in calls[:-1] if c][warmup:] or [c for c in calls if c]
    counts = {len(c) for c in calls}
    if not calls or len(counts) != 1:
        raise PicojouleError(f"kernel table: ORT's profile of {Path(path).name} has no consistent MAC kernels")
    # a low quantile, not the median: on shared cores a slow phase of other work inflates whole stretches of calls
    return [float(v) for v in np.quantile(np.asarray(calls), QUANTILE, axis=0)]


def design_policies(graph: LayerGraph, target: Target | str, n: int, keeps: Sequence[float] = DEFAULT_KEEPS,
                    int8_share: float = 0.6, seed: int = 0) -> list[Policy]:
    """``n`` policies for a kernel table (``meta['name']`` set): uniform int8 and float at each keep first, then
    seeded ones with a random keep per pruning group and, per conv/linear layer, int8 (W8A8) or float. No low
    rank and no emulated widths, so each MAC layer is one kernel whose shape the policy fixes."""
    target = load_target(target) if isinstance(target, str) else target
    rng = np.random.default_rng(seed)
    macs = [layer for layer in graph.layers if layer.kind in ("conv", "depthwise", "linear")]
    anchors = {g.id: g.anchor for g in graph.groups}
    out: list[Policy] = []
    for k in keeps:
        for bits, label in ((8, "int8"), (32, "float")):
            layers = {anchors[g.id]: {"keep": float(k)} for g in graph.groups}
            out.append(Policy.from_dict({"name": f"{label}-keep{k:g}", "default": {"w_bits": bits, "a_bits": bits},
                                         "layers": layers}))
    while len(out) < n:
        layers: dict[str, dict[str, Any]] = {}
        for layer in macs:
            bits = 8 if rng.random() < int8_share else 32
            layers[layer.name] = {"w_bits": bits, "a_bits": bits}
        for g in graph.groups:
            layers.setdefault(anchors[g.id], {})["keep"] = float(rng.choice(list(keeps)))
        out.append(Policy.from_dict({"name": f"design{len(out):03d}", "default": {}, "layers": layers}))
    return out[:n]


def measure_kernel_table(graph: LayerGraph, target: Target | str, built: Sequence[tuple[Policy, str | Path]],
                         example: Any, keeps: Sequence[float] = DEFAULT_KEEPS, runs: int = 100, rounds: int = 3,
                         progress: bool = True, workdir: str | Path | None = None) -> tuple[KernelTable, dict]:
    """A kernel table of ``graph`` on this CPU in ONNX Runtime: each MAC layer's time *in context*, from ORT's
    profile of whole-model builds (``built``: (policy, its ``.ort.onnx``), e.g. of :func:`design_policies`), the
    median over every policy and layer that gave a kernel that shape; shapes of :func:`kernel_configs` no build
    gave are timed alone (a one-layer model) and scaled by the median in-context/alone ratio of the shapes both
    timed. Returns the table (fitted terms neutral: :func:`fit_kernel_table` sets them) and what it was made of."""
    import onnxruntime as ort
    from tqdm import tqdm

    from picojoule.hwmodels.kernel_table import layer_keys

    target = load_target(target) if isinstance(target, str) else target
    ga = graph_arrays(graph)
    seen: dict[tuple, list[float]] = {}
    used = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        mapped = []
        for policy, path in built:
            wl = workload(ga, target, policy_batch(graph, [policy]))
            keys, precision = layer_keys(ga, wl)
            in_order = [k for k in keys[0] if k is not None]
            if (precision[0][np.asarray([k is not None for k in keys[0]])] < 0).any() or \
                    len(in_order) != int(np.isin(np.asarray(ga.kind), (0, 1, 2)).sum()):
                continue  # an emulated width or a split layer: its kernels do not map one to one
            mapped.append((in_order, path))
        # ``rounds`` interleaved passes, each kernel keeping its fastest: a slow phase of other work on shared
        # cores lasts longer than one profile, so it would land on whole builds
        best: dict[int, np.ndarray] = {}
        passes = [(r, i) for r in range(rounds) for i in range(len(mapped))]
        for _, i in tqdm(passes, desc=f"profile {graph.name}", disable=not progress, unit="build"):
            in_order, path = mapped[i]
            times = np.asarray(profile_kernels(path, example, runs, work))
            if len(times) == len(in_order):
                best[i] = np.minimum(best[i], times) if i in best else times
        for i, times in best.items():
            used += 1
            for key, t in zip(mapped[i][0], times):
                seen.setdefault(key, []).append(float(t))
        configs = kernel_configs(graph, keeps)
        missing = [c for c in configs if c.key() not in seen]
        classes = {(c.precision, c.after) for c in missing}
        probe = [c for cls in sorted(classes) for c in configs if (c.precision, c.after) == cls
                 and c.key() in seen][:8 * len(classes)]
        alone: dict[tuple, float] = {}
        for cfg in tqdm([*probe, *missing], desc=f"time {graph.name} kernels alone", disable=not progress or not
                        missing, unit="kernel"):
            path, x = _build(cfg, work)
            alone[cfg.key()] = min(profile_kernels(path, x, runs, work)[0] for _ in range(rounds))
    ratios = {cls: float(np.median([np.median(seen[c.key()]) / alone[c.key()] for c in probe
                                    if (c.precision, c.after) == cls] or [1.0])) for cls in classes}
    entries = {key: float(np.median(ts)) for key, ts in seen.items()}  # over builds and layers
    for cfg in missing:
        entries[cfg.key()] = alone[cfg.key()] * ratios[(cfg.precision, cfg.after)]
    ratio = float(np.median(list(ratios.values()))) if ratios else 1.0
    by_key = {c.key(): c for c in configs}
    table_entries = []
    for key, t in entries.items():
        cfg = by_key.get(key) or _config_of(key)
        table_entries.append(cfg.entry(t))
    cpu = _cpu_name() or platform.processor() or platform.machine()
    info = {"policies_profiled": used, "in_context": len(seen), "alone": len(missing), "alone_ratio": ratio,
            "observations": int(sum(len(v) for v in seen.values()))}
    return KernelTable(
        runtime=f"onnxruntime {ort.__version__}, 1 thread", measured_on=cpu,
        source=f"picojoule calibrate {date.today().isoformat()}: {graph.name}, {len(seen)} kernel shapes timed in "
               f"context (ORT's profile of {used} whole-model builds, {info['observations']} kernel timings, median "
               f"of {runs} calls each), {len(missing)} timed alone x {ratio:.2f}; keeps "
               f"{', '.join(f'{k:g}' for k in keeps)}", entries=table_entries), info


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        return None
    return None


def table_terms(graph: LayerGraph, target: Target, table: KernelTable, policies: Sequence[Policy]) -> np.ndarray:
    """(N, 4): per policy, the summed kernel-table time of the layers it covers, the modelled latency of the rest,
    the number of integer/float transitions, and 1 (the columns :func:`fit_kernel_table` weights)."""
    from picojoule.hwmodels.costs import price

    bare = target.model_copy(update={"kernels": None})
    ga = graph_arrays(graph)
    pb = policy_batch(graph, list(policies))
    wl = workload(ga, bare, pb)
    modelled = price(graph, bare, pb).latency_s
    neutral = table.model_copy(update={"other_scale": 1.0, "transition_s": 0.0, "offset_s": 0.0})
    lat, hit = neutral.layer_latency(ga, wl, modelled)
    with_switch = table.model_copy(update={"other_scale": 1.0, "transition_s": 1.0, "offset_s": 0.0})
    switches = with_switch.layer_latency(ga, wl, modelled)[0].sum(1) - lat.sum(1)
    return np.stack([(lat * hit).sum(1), (modelled * ~hit).sum(1), switches, np.ones(len(policies))], axis=1)


@dataclass
class TableFit:
    """Held-out figures of a kernel-table target and the fitted terms."""

    n_policies: int
    n_test: int
    kernel_scale: float
    other_scale: float
    transition_s: float
    offset_s: float
    mape: float
    spearman: float
    coverage: float  # share of conv/linear layers (over all policies) the table covered

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(a).max(0), 1e-12)
    return nnls(a / scale, b)[0] / scale


def fit_kernel_table(graph: LayerGraph, target: Target | str, table: KernelTable, policies: Sequence[Policy],
                     measured: Sequence[float], folds: int = 4, seed: int = 0) -> tuple[KernelTable, TableFit]:
    """Fit the table's whole-model terms to measured latencies (s); the statistics are out-of-fold (each policy
    predicted by a fit without its fold), the returned table is fitted on all."""
    target = load_target(target) if isinstance(target, str) else target
    y = np.asarray(measured, dtype=float)
    if len(y) != len(policies) or len(y) < 2 * folds or not (y > 0).all():
        raise PicojouleError(f"kernel table: need at least {2 * folds} positive measured latencies, one per policy; "
                             f"got {len(policies)} policies and {len(y)} latencies")
    terms = table_terms(graph, target, table, policies)
    order = np.random.default_rng(seed).permutation(len(y))
    pred = np.empty_like(y)
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        w = _nnls(terms[train] / y[train, None], np.ones(len(train)))  # relative error: each policy weighs alike
        pred[test] = terms[test] @ w
    w = _nnls(terms / y[:, None], np.ones(len(y)))
    from picojoule.compilers.calibrate import _spearman

    ga = graph_arrays(graph)
    mac = np.isin(np.asarray(ga.kind), (0, 1, 2))
    bare = target.model_copy(update={"kernels": None})
    wl = workload(ga, bare, policy_batch(graph, list(policies)))
    _, hit = table.layer_latency(ga, wl, np.zeros((len(y), len(ga.names))))
    kernel_scale = float(w[0]) if w[0] > 0 else 1.0
    fitted = table.model_copy(update={
        "entries": [e.model_copy(update={"latency_s": e.latency_s * kernel_scale}) for e in table.entries],
        "other_scale": float(w[1]), "transition_s": float(w[2]), "offset_s": float(w[3])})
    stats = TableFit(n_policies=len(y), n_test=len(y), kernel_scale=kernel_scale, other_scale=float(w[1]),
                     transition_s=float(w[2]), offset_s=float(w[3]),
                     mape=float(np.mean(np.abs(pred - y) / y)), spearman=_spearman(pred, y),
                     coverage=float(hit[:, mac].mean()))
    return fitted, stats
