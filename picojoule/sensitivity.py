"""Per-layer sensitivity: what each choice of each knob costs in loss when only that layer is compressed.

For every knob of a :class:`~picojoule.spaces.space.Space` (each ``w_bits``/``a_bits`` width, each ``keep`` of a
pruning group at its anchor, each ``rank``, each ``sparsity``), the one-knob policy (that knob set, everything
else float) is applied with the compression passes and repaired as a search repairs it (BatchNorm re-estimation
after pruning, activation calibration), and measured on a validation sample drawn from the *training* split:
the cross-entropy increase over the float model and the KL divergence of its output distribution from the float
model's. Beside it, per layer, the Hessian trace of the loss in the layer's weights by Hutchinson's estimator
(HAWQ-V2), the average trace ``tr(H) / n_params`` and, per weight width, HAWQ-V3's proxy
``avg_trace * ||W - Q_b(W)||^2``.

Work is shared where it can be: the float model's logits once; a knob that changes one module (bits, rank,
sparsity) swaps that module into an fx trace of the float model and reruns only the part of the graph after it,
from the float prefix's live values; activation ranges are calibrated on the layer's float inputs. A keep knob
changes a whole pruning group and re-estimates BatchNorm, so it runs the compressed model in full.

Results are cached as ``sensitivity.json`` in a directory, keyed by a fingerprint of the weights, the data
sample, the space's knobs and the settings; a cache made for anything else is recomputed, with a note saying why.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from picojoule.errors import PicojouleError
from picojoule.passes import FIELD_BY_NAME
from picojoule.policy import LayerPolicy, Policy
from picojoule.spaces.space import KNOB_KINDS, Knob, Space

__all__ = ["Sensitivity", "converged", "hutchinson_trace", "metric_sensitivity", "plot_sensitivity", "sensitivity"]

CACHE_NAME = "sensitivity.json"
CACHE_VERSION = 1
BATCH = 128
#: a row's value when the choice is the uncompressed one (nothing to measure)
_EXACT = {"loss_increase": 0.0, "kl": 0.0}
_BUILD = 0.2


# --------------------------------------------------------------------------------------------- Hutchinson

def converged(old: Sequence[float] | np.ndarray, new: Sequence[float] | np.ndarray, tol: float,
              eps: float = 1e-6) -> bool:
    """Whether every estimate moved by less than ``tol`` relative to its old value: ``|new - old| / (|old| + eps)
    < tol``. The difference is absolute: a signed one would call a falling estimate converged at once (the
    early exit NNCF fixed in its Hutchinson loop)."""
    old, new = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    return bool(np.all(np.abs(new - old) / (np.abs(old) + eps) < tol))


def hutchinson_trace(loss: torch.Tensor, params: Sequence[torch.Tensor], *, max_iters: int = 50, tol: float = 1e-2,
                     min_iters: int = 2, seed: int = 0, progress: bool = False) -> tuple[list[float], int]:
    """The trace of the Hessian of ``loss`` in each of ``params`` (its diagonal block), by Hutchinson's estimator:
    ``tr(H) = E[v^T H v]`` over Rademacher ``v``, ``H v`` by double backprop. One ``v`` covers all parameters at once;
    each block's estimate is the running mean of its ``v_l^T (H v)_l``, iterated until every one changes by less
    than ``tol`` relatively (:func:`converged`) or ``max_iters``. Returns (traces, iterations)."""
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    sums = np.zeros(len(params))
    mean = np.zeros(len(params))
    done = 0
    bar = tqdm(total=max_iters, desc="Hessian trace", disable=not progress, file=sys.stderr)
    for it in range(1, max_iters + 1):
        vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for p in params]
        hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=it < max_iters)
        sums += [float((hv * v).sum()) for hv, v in zip(hvs, vs)]
        old, mean, done = mean, sums / it, it
        bar.update(1)
        if it >= min_iters and converged(old, mean, tol):
            break
    bar.close()
    return mean.tolist(), done


def _hawq_v3(weight: torch.Tensor, bits: int, avg_trace: float) -> float:
    """HAWQ-V3's sensitivity of ``weight`` at ``bits``: average Hessian trace x squared quantization error."""
    from picojoule.spaces.quantize import quantize_weight_mse

    with torch.no_grad():
        wq, _ = quantize_weight_mse(weight, bits)
        return float(avg_trace * (wq - weight).pow(2).sum())


# --------------------------------------------------------------------------------------------- fingerprints

def _sha(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def _tensor_bytes(t: torch.Tensor | np.ndarray) -> bytes:
    t = torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t.detach().cpu().contiguous()
    return f"{t.dtype}{tuple(t.shape)}".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes()


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every state_dict tensor (names, dtypes, shapes and bytes)."""
    return _sha(name.encode() + _tensor_bytes(t) for name, t in sorted(model.state_dict().items())
                if isinstance(t, torch.Tensor))


def _space_doc(space: Space) -> dict[str, Any]:
    return {"graph": space.graph.name, "target": space.target.name,
            "knobs": [[k.name, k.kind, list(k.choices)] for k in space.knobs]}


# --------------------------------------------------------------------------------------------- data

@dataclass
class _Sample:
    x: torch.Tensor  # validation inputs
    y: torch.Tensor  # their labels
    calib: Any  # calibration data for repair (InputBatches)


def _as_tensors(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) tensors from an ArrayDataset, an (x, y) pair, or an iterable of (x, y) batches."""
    from picojoule.data import ArrayDataset

    if isinstance(data, ArrayDataset):
        if len(data) == 0:
            raise PicojouleError(f"{name}: expected a non-empty dataset")
        return next(data.batches(len(data)))
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in data)
        return x.float(), y.long()
    xs, ys = [], []
    try:
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise PicojouleError(f"{name}: expected batches (x, y) with labels (the loss needs them)")
            xs.append(torch.as_tensor(batch[0]).float())
            ys.append(torch.as_tensor(batch[1]).long())
    except TypeError:
        raise PicojouleError(f"{name}: expected an ArrayDataset, (x, y) or an iterable of (x, y) batches, "
                             f"got {type(data).__name__}") from None
    if not xs:
        raise PicojouleError(f"{name}: expected a non-empty iterable of (x, y) batches")
    return torch.cat(xs), torch.cat(ys)


def _sample(data: Any, calib_data: Any, images: int, calib_images: int, seed: int) -> _Sample:
    """``images`` validation samples drawn with ``seed``; calibration from ``calib_data`` or else the rest."""
    from picojoule.search.evaluate import InputBatches, as_calibration

    if images < 1:
        raise PicojouleError(f"images: expected a positive integer, got {images}")
    x, y = _as_tensors(data, "data")
    if len(x) != len(y):
        raise PicojouleError(f"data: {len(x)} inputs but {len(y)} labels")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    val, rest = order[:images], order[images:]
    if calib_data is not None:
        calib = as_calibration(calib_data, limit=calib_images)
    elif len(rest):
        calib = InputBatches([x[rest[:calib_images]]], limit=calib_images)
    else:
        calib = InputBatches([x[val[:calib_images]]], limit=calib_images)  # no images left: reuse the sample
    return _Sample(x[val], y[val], calib)


# --------------------------------------------------------------------------------------------- the replay

class _Replay(torch.fx.Interpreter):
    """The float model as an fx graph, run node by node: a layer's suffix reruns from the float prefix's live
    values with one module swapped."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.nodes = list(gm.graph.nodes)
        self.position = {n.target: i for i, n in enumerate(self.nodes) if n.op == "call_module"}
        last: dict[torch.fx.Node, int] = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                last[a] = i
        self.last_use = last
        self.swap: dict[str, nn.Module] = {}

    @classmethod
    def trace(cls, model: nn.Module, names: Iterable[str]) -> _Replay | None:
        """The replay of ``model``, or None where fx cannot trace it or some layer is not one module call."""
        try:
            replay = cls(torch.fx.symbolic_trace(model))
        except Exception:  # noqa: BLE001 - any tracing failure: evaluate whole models instead
            return None
        return replay if all(name in replay.position for name in names) else None

    def call_module(self, target, args, kwargs):
        module = self.swap.get(target)
        return module(*args, **kwargs) if module is not None else super().call_module(target, args, kwargs)

    def prefix(self, x: torch.Tensor, stops: Sequence[str]) -> Iterable[tuple[str, dict]]:
        """Run the float graph on ``x``, yielding at each layer in ``stops`` (graph order) the live values there."""
        wanted = {self.position[s]: s for s in stops}
        env: dict[torch.fx.Node, Any] = {}
        for i, node in enumerate(self.nodes):
            if i in wanted:
                self.env = env
                yield wanted[i], env
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                break
            else:
                self.env = env
                env[node] = self.run_node(node)
            for a in node.all_input_nodes:
                if self.last_use[a] == i:
                    del env[a]

    def suffix(self, start: str, env: dict, module: nn.Module) -> torch.Tensor:
        """The output with ``module`` in place of layer ``start``, from the live values ``env`` before it."""
        self.env = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in env.items()}  # in-place ops
        self.swap = {start: module}
        try:
            for node in self.nodes[self.position[start]:]:
                if node.op == "output":
                    return self.run_node(node)
                self.env[node] = self.run_node(node)
        finally:
            self.swap, self.env = {}, {}
        raise RuntimeError("graph without output")


# --------------------------------------------------------------------------------------------- the object

@dataclass
class Sensitivity:
    """Per-layer sensitivities of one model on one space (see the module doc).

    ``table``: one row per (knob, choice): ``layer`` (a keep knob: the group's anchor), ``kind``, ``choice``,
    ``knob``, ``loss_increase``, ``kl``, ``trace`` (the layer's Hessian trace), ``avg_trace`` and, for
    ``w_bits``, ``hawq_v3``. ``traces``: per layer ``{"trace", "avg_trace", "n_params"}``. ``info``: the float
    loss, the settings, the fingerprint, the timings and the Hessian iterations."""

    model: str
    target: str
    table: list[dict[str, Any]]
    traces: dict[str, dict[str, float]]
    info: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    note: str | None = None

    def _row(self, layer: str, kind: str, choice: Any) -> dict[str, Any]:
        for row in self.table:
            if row["layer"] == layer and row["kind"] == kind and float(row["choice"]) == float(choice):
                return row
        raise KeyError(f"no sensitivity for layer {layer!r}, {kind} = {choice!r}")

    def loss(self, layer: str, kind: str, choice: Any) -> float:
        """The validation loss increase when only ``layer``'s ``kind`` knob is at ``choice``."""
        return float(self._row(layer, kind, choice)["loss_increase"])

    def kl(self, layer: str, kind: str, choice: Any) -> float:
        """KL(float || compressed) of the output distributions, mean over the sample."""
        return float(self._row(layer, kind, choice)["kl"])

    def trace(self, layer: str) -> float:
        """The Hessian trace of the loss in ``layer``'s weight (Hutchinson)."""
        return float(self.traces[layer]["trace"])

    def to_dict(self) -> dict[str, Any]:
        return {"version": CACHE_VERSION, "model": self.model, "target": self.target, "info": self.info,
                "traces": self.traces, "table": self.table}

    def to_dataframe(self) -> Any:
        """The table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.table)

    def plot(self, path: str | Path) -> Path:
        """The heat map of loss increases (layers x choices), PNG."""
        return plot_sensitivity(self, path)

    def __repr__(self) -> str:
        worst = max(self.table, key=lambda r: r["loss_increase"], default=None)
        tail = f", worst {worst['knob']}={worst['choice']} (+{worst['loss_increase']:.3g})" if worst else ""
        return (f"Sensitivity({self.model} on {self.target}: {len(self.table)} rows over {len(self.traces)} layers"
                f"{tail}{', cached' if self.cached else ''})")


# --------------------------------------------------------------------------------------------- cache

def _read_cache(path: Path, key: dict[str, Any]) -> tuple[Sensitivity | None, str | None]:
    """The cached result if ``path`` holds one for ``key``; else (None, why not) (None, None: no file)."""
    if not path.is_file():
        return None, None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cached = doc["info"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{path}: unreadable, recomputing"
    if doc.get("version") != CACHE_VERSION:
        return None, f"{path}: written by another version of picojoule, recomputing"
    for part, what in (("weights", "other weights"), ("data", "another data sample"),
                       ("space", "another space (knobs or choices)"), ("settings", "other settings")):
        if cached.get(part) != key[part]:
            return None, f"{path}: cached for {what} ({part} differs), recomputing"
    return Sensitivity(doc["model"], doc["target"], doc["table"], doc["traces"], doc["info"], cached=True), None


def _lookup(cache_dir: str | Path | None, key: dict[str, Any]) -> tuple[Path | None, Sensitivity | None, str | None]:
    """(the cache file or None, its result when it holds one for ``key``, why it does not: printed as a note)."""
    path = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    if path is None:
        return None, None, None
    hit, note = _read_cache(path, key)
    if hit is None and note:
        print(f"picojoule: note: {note}", file=sys.stderr)
    return path, hit, note


def _store(path: Path | None, result: Sensitivity) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")


# --------------------------------------------------------------------------------------------- measuring

def _one_knob(knob: Knob, choice: Any, space: Space) -> Policy:
    """Everything float but ``knob`` at ``choice`` (a sparsity knob takes the space's pattern for its layer)."""
    values = {knob.kind: choice}
    if knob.kind == "sparsity":
        values["sparsity_pattern"] = space.decode(np.zeros(space.dim, dtype=np.int64)).for_layer(
            knob.layer).sparsity_pattern
    return Policy(LayerPolicy(), {knob.layer: LayerPolicy(**values)})


def _scores(logits: torch.Tensor, y: torch.Tensor, ref_logp: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, mean KL(float || this)) of a model's logits."""
    logp = F.log_softmax(logits.float(), 1)
    ce = float(F.nll_loss(logp, y))
    kl = float(F.kl_div(logp, ref_logp, reduction="batchmean", log_target=True))
    return ce, kl


def _advance(bar: tqdm, step: float) -> None:
    """Move the bar by ``step`` rows, never past its total (fractional steps add up to a little more)."""
    bar.update(max(min(step, bar.total - bar.n), 0))


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(xb) for xb in x.split(BATCH)])


def sensitivity(model: nn.Module, example: torch.Tensor, target_or_space: Any, data: Any, *,
                overrides: Any = None, calib_data: Any = None, images: int = 256, calib_images: int = 256,
                hessian_iters: int = 50, hessian_tol: float = 1e-2, hessian_images: int = 128, seed: int = 0,
                cache_dir: str | Path | None = None, name: str | None = None, progress: bool = True) -> Sensitivity:
    """The sensitivity of ``model`` (float, untouched) to each knob of a space, one knob at a time.

    ``target_or_space``: a :class:`Space`, or a target (name, YAML path or Target) whose space is built from the
    model's graph and ``overrides``. ``data``: labelled data (an ArrayDataset, ``(x, y)`` or an iterable of
    ``(x, y)`` batches; the training split, not the test split) from which ``images`` validation samples are drawn
    with ``seed``; activation calibration and BatchNorm re-estimation use ``calib_images`` of the others (or
    ``calib_data``). The Hessian trace uses the first ``hessian_images`` of the sample, ``hessian_iters`` at most
    (0: skip). ``cache_dir``: read and write ``sensitivity.json`` there (see the module doc)."""
    from picojoule.graph import LayerGraph
    from picojoule.search.evaluate import repair
    from picojoule.spaces.apply import apply_policy
    from picojoule.spaces.quantize import calibrate_activations

    start = time.perf_counter()
    model = model.eval()
    if isinstance(target_or_space, Space):
        space = target_or_space
    else:
        space = Space(LayerGraph.from_torch(model, example, name=name), target_or_space, overrides)
    graph = space.graph
    sample = _sample(data, calib_data, images, calib_images, seed)
    settings = {"images": len(sample.x), "calib_images": len(sample.calib), "hessian_iters": hessian_iters,
                "hessian_tol": hessian_tol, "hessian_images": min(hessian_images, len(sample.x)), "seed": seed}
    key = {"weights": weights_fingerprint(model),
           "data": _sha([_tensor_bytes(sample.x), _tensor_bytes(sample.y), _tensor_bytes(sample.calib.x)]),
           "space": _sha([json.dumps(_space_doc(space)).encode()]), "settings": settings}
    path, hit, note = _lookup(cache_dir, key)
    if hit is not None:
        return hit

    ref = _forward(model, sample.x)
    if ref.dim() != 2 or int(sample.y.max()) >= ref.shape[1] or int(sample.y.min()) < 0:
        raise PicojouleError(f"data: labels: expected class ids 0..{ref.shape[-1] - 1} for the model's "
                             f"{tuple(ref.shape[1:])} outputs, got {int(sample.y.min())}..{int(sample.y.max())}")
    ref_logp = F.log_softmax(ref.float(), 1)
    base_loss = float(F.nll_loss(ref_logp, sample.y))
    work = [(k, c) for k in space.knobs for c in k.choices if c != FIELD_BY_NAME[k.kind].default]
    layer_wise = [k.layer for k in space.knobs if k.kind != "keep"]
    replay = _Replay.trace(model, layer_wise) if layer_wise else None
    calib_batches = max(1, math.ceil(len(sample.calib) / BATCH))
    calib_inputs = [xb for _, (xb, _) in zip(range(calib_batches), sample.calib.batches(BATCH, shuffle=True,
                                                                                         seed=seed))]
    results: dict[tuple[str, Any], tuple[float, float]] = {}
    bar = tqdm(total=len(work), desc="sensitivity", disable=not progress, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}]")

    def measure(knob: Knob, choice: Any) -> tuple[nn.Module, Any]:
        return apply_policy(model, example, _one_knob(knob, choice, space), graph=graph, seed=seed)

    # one-module knobs: the compressed module swapped into the float graph, rerun from the layer on
    swaps: dict[str, list[tuple[tuple[str, Any], nn.Module]]] = {}
    full = [(k, c) for k, c in work if k.kind == "keep" or replay is None]
    for knob, choice in work:
        if knob.kind != "keep" and replay is not None:
            compressed, info = measure(knob, choice)
            swaps.setdefault(knob.layer, []).append(((knob.name, choice), compressed.get_submodule(knob.layer)))
            _advance(bar, _BUILD)  # a fifth of a row's progress for applying, the rest for running
    if swaps:
        stops = [n for n in replay.position if n in swaps]
        with torch.no_grad():  # activation ranges from each layer's float inputs, the batches repair would use
            quantizers = [(layer, m.input_quant) for layer, items in swaps.items() for _, m in items
                          if getattr(getattr(m, "input_quant", None), "bits", None) is not None]
            for _, q in quantizers:
                q.start_observing()
            for xb in calib_inputs:
                for layer, env in replay.prefix(xb, stops):
                    inputs = replay.fetch_args_kwargs_from_env(replay.nodes[replay.position[layer]])[0]
                    for at, q in quantizers:
                        if at == layer:
                            q(inputs[0])
            for _, q in quantizers:
                q.freeze()
            logits: dict[tuple[str, Any], list[torch.Tensor]] = {}
            for xb in sample.x.split(BATCH):
                for layer, env in replay.prefix(xb, stops):
                    for item, module in swaps[layer]:
                        logits.setdefault(item, []).append(replay.suffix(layer, env, module))
                        _advance(bar, (1 - _BUILD) / math.ceil(len(sample.x) / BATCH))
        for item, parts in logits.items():
            results[item] = _scores(torch.cat(parts), sample.y, ref_logp)
    # whole-model knobs (keep; everything where fx cannot trace): applied, repaired, run in full
    for knob, choice in full:
        compressed, info = measure(knob, choice)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            repair(compressed, sample.calib, bn_reestimate=bool(info.channels),
                   calibrate=calibrate_activations if info.needs_calibration else None,
                   calib_batches=calib_batches, seed=seed)
        results[(knob.name, choice)] = _scores(_forward(compressed.eval(), sample.x), sample.y, ref_logp)
        _advance(bar, 1)
    bar.close()
    measured_s = time.perf_counter() - start

    traces, iterations = _traces(model, space, sample, settings, seed, progress)
    table = []
    for knob in space.knobs:
        tr = traces.get(knob.layer, {})
        for choice in knob.choices:
            ce_kl = results.get((knob.name, choice))
            row = {"layer": knob.layer, "kind": knob.kind, "choice": choice, "knob": knob.name,
                   **({"loss_increase": ce_kl[0] - base_loss, "kl": max(ce_kl[1], 0.0)} if ce_kl else _EXACT),
                   "trace": tr.get("trace"), "avg_trace": tr.get("avg_trace")}
            if knob.kind == "w_bits" and tr and choice < 32:
                weight = model.get_submodule(knob.layer).weight
                row["hawq_v3"] = _hawq_v3(weight, int(choice), tr["avg_trace"])
            table.append(row)
    info = {"key": key, "float_loss": base_loss, "evaluations": len(work), "replayed": replay is not None,
            "hessian_iterations": iterations, "seconds": {"table": measured_s,
                                                          "hessian": time.perf_counter() - start - measured_s}}
    result = Sensitivity(graph.name, space.target.name, table, traces, info, note=note)
    _store(path, result)
    return result


def metric_sensitivity(model: nn.Module, example: torch.Tensor, space: Space, metric: Callable[[nn.Module], float],
                       calib_data: Any, *, linear_quant: Any = None, data_key: str = "", seed: int = 0,
                       cache_dir: str | Path | None = None, progress: bool = True) -> Sensitivity:
    """The sensitivity of a model without labels: per knob and choice, the drop of ``metric(compressed)`` (any
    score where higher is better, such as the embedding fidelity of a sentence model) when only that knob is
    compressed, applied as a search applies it (``pj.compress`` with ``calib_data`` and ``linear_quant``).
    ``loss_increase`` and ``kl`` both hold the drop (below zero where compressing happened to help); there are
    no Hessian traces. Measure it on data that is neither the validation nor the test split. ``data_key`` names
    that data in the cache key (``cache_dir``: ``sensitivity.json``, as :func:`sensitivity` keeps it): the
    metric is a callable, so the cache cannot see its data."""
    from picojoule.api import compress

    start = time.perf_counter()
    model = model.eval()
    graph = space.graph
    settings = {"measure": "metric", "data": data_key, "linear_quant": repr(linear_quant), "seed": seed}
    key = {"weights": weights_fingerprint(model), "data": data_key,
           "space": _sha([json.dumps(_space_doc(space)).encode()]), "settings": settings}
    path, hit, note = _lookup(cache_dir, key)
    if hit is not None:
        return hit
    with torch.no_grad():
        base = float(metric(model))
    work = [(k, c) for k in space.knobs for c in k.choices if c != FIELD_BY_NAME[k.kind].default]
    drops: dict[tuple[str, Any], float] = {}
    for knob, choice in tqdm(work, desc="sensitivity", disable=not progress, file=sys.stderr):
        compressed = compress(model, example, _one_knob(knob, choice, space), calib_data=calib_data, graph=graph,
                              linear_quant=linear_quant, seed=seed)
        with torch.no_grad():
            drops[(knob.name, choice)] = base - float(metric(compressed))
    table = []
    for knob in space.knobs:
        for choice in knob.choices:
            drop = drops.get((knob.name, choice))
            row = {"layer": knob.layer, "kind": knob.kind, "choice": choice, "knob": knob.name,
                   **({"loss_increase": drop, "kl": drop} if drop is not None else _EXACT),
                   "trace": None, "avg_trace": None}
            table.append(row)
    info = {"key": key, "float_metric": base, "evaluations": len(work), "replayed": False, "hessian_iterations": 0,
            "seconds": {"table": time.perf_counter() - start, "hessian": 0.0}}
    result = Sensitivity(graph.name, space.target.name, table, {}, info, note=note)
    _store(path, result)
    return result


def _traces(model: nn.Module, space: Space, sample: _Sample, settings: dict, seed: int,
            progress: bool) -> tuple[dict[str, dict[str, float]], int]:
    """Per compute layer of the space's graph: Hessian trace of the loss in its weight, average trace, size."""
    import copy

    if not settings["hessian_iters"]:
        return {}, 0
    names = [layer.name for layer in space.graph.compute_layers()]
    twin = copy.deepcopy(model).eval()
    params = []
    for name in names:
        weight = getattr(twin.get_submodule(name), "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise PicojouleError(f"sensitivity: layer '{name}' has no weight tensor")
        params.append(weight.requires_grad_(True))
    n = settings["hessian_images"]
    loss = F.cross_entropy(twin(sample.x[:n]), sample.y[:n])
    traces, iterations = hutchinson_trace(loss, params, max_iters=settings["hessian_iters"],
                                          tol=settings["hessian_tol"], seed=seed, progress=progress)
    return ({name: {"trace": t, "avg_trace": t / p.numel(), "n_params": p.numel()}
             for name, t, p in zip(names, traces, params)}, iterations)


# --------------------------------------------------------------------------------------------- plot

def _label(kind: str, choice: Any) -> str:
    short = {"w_bits": "W", "a_bits": "A", "keep": "k", "rank": "r#", "sparsity": "s"}.get(kind, kind)
    return f"{short}{choice:g}"


def plot_sensitivity(sens: Sensitivity, path: str | Path) -> Path:
    """Layers (rows) against choices (columns, grouped by knob kind) coloured by loss increase on a log scale;
    ranks differ per layer, so rank columns are each layer's ranks, smallest first (r#1, r#2, ...)."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    from picojoule.plots import new_figure

    rows = [r for r in sens.table if r["choice"] != FIELD_BY_NAME[r["kind"]].default]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    cells: dict[tuple[str, str, float], float] = {}
    for r in rows:
        choice = r["choice"]
        if r["kind"] == "rank":
            ranks = sorted(q["choice"] for q in rows if q["knob"] == r["knob"])
            choice = ranks.index(choice) + 1
        cells[(r["layer"], r["kind"], float(choice))] = r["loss_increase"]
    columns = [(kind, c) for kind in KNOB_KINDS for c in sorted({c for (_, k, c) in cells if k == kind})]
    grid = np.full((len(layers), len(columns)), np.nan)
    for (layer, kind, c), v in cells.items():
        grid[layers.index(layer), columns.index((kind, c))] = v
    positive = grid[np.isfinite(grid) & (grid > 0)]
    vmax = float(positive.max()) if positive.size else 1.0
    vmin = max(float(positive.min()) if positive.size else vmax * 1e-4, vmax * 1e-4)
    fig = new_figure(figsize=(max(6.0, 0.28 * len(columns) + 3), max(3.0, 0.3 * len(layers) + 1.8)))
    ax = fig.add_subplot(1, 1, 1)
    masked = np.ma.masked_invalid(np.clip(grid, vmin, None))
    image = ax.imshow(masked, aspect="auto", norm=LogNorm(vmin=vmin, vmax=vmax),
                      cmap=colormaps["viridis"].with_extremes(bad="white"), interpolation="nearest")
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_xticks(range(len(columns)), [_label(k, c) for k, c in columns], rotation=90, fontsize=7)
    kinds = [k for k in KNOB_KINDS if any(kind == k for kind, _ in columns)]
    for kind in kinds:
        idx = [i for i, (k, _) in enumerate(columns) if k == kind]
        if idx[0] > 0:
            ax.axvline(idx[0] - 0.5, color="black", lw=1.2)
        ax.text((idx[0] + idx[-1]) / 2, -0.8, kind, ha="center", va="bottom", fontsize=8, weight="bold")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(f"validation loss increase (log; <= {vmin:.1g} at the floor)", fontsize=8)
    n = sens.info.get("key", {}).get("settings", {}).get("images", "?")
    ax.set_title(f"Sensitivity of {sens.model} on {sens.target}: one knob at a time, {n} images", fontsize=9,
                 pad=18)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    return path


class _Callable(types.ModuleType):
    """Importing this module binds ``picojoule.sensitivity`` to it, over the lazy function: calling the module
    calls :func:`sensitivity`, so ``pj.sensitivity(...)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Sensitivity:
        return sensitivity(*args, **kwargs)


sys.modules[__name__].__class__ = _Callable
