"""Operand-aware memory-hierarchy cost model (target schema v2), in the manner of ZigZag and Timeloop.

Each memory level holds some of the three operands, weights (W), inputs (I) and outputs or partial sums
(O); an operand a level does not hold bypasses it. A layer is priced by a pipeline of small stages, each a
function of (N policies, L layers) arrays:

1. :func:`loops`: the layer's loop dimensions (ZigZag's names B, K, C, OX, OY, FX, FY, G) after the policy,
   and the sizes of its three operands. A strided 1 x 1 conv reads only the input pixels it uses; a
   depthwise conv's channels are groups (G), which an array that unrolls K and C cannot spread over its PEs.
2. :func:`spatial`: the dataflow's unrolling of those loops over an array of any number of dimensions, the
   layer's utilisation of the PEs (how much of each array dimension its loops fill), and the spatial reuse
   of each operand: a value is multicast to the PEs of every unrolled loop it does not depend on (inputs
   to the output channels, weights to the output pixels, and the overlapping windows of a strided
   filter), and partial sums are reduced over the unrolled reduction loops (C, FX, FY).
3. :func:`fills`: the temporal reuse at every level. Where what a level holds of a layer fits in it, each
   value enters once. Where it does not, one operand stays (the dataflow's operand in the PEs' own register
   files; at shared levels whichever is cheapest) in tiles as large as the level allows, and the others are
   brought in again once per tile: inputs once per tile of output channels, weights once per tile of output
   pixels, partial sums written out and read back once per tile of input channels; where the PE's weights
   overflow its weight register, the weights may also stay in blocks across as many output channels as the
   partial-sum register holds, a chunk of input channels deep (each input read once, partial sums out once per
   chunk). A level never refills more often than the level inside it.
4. :func:`accesses`: reads and writes of each operand at each level, in bits: the PEs read W and I and
   update O at the innermost level holding each on every MAC (divided by the spatial reuse where that level
   is shared); every fill of a level is a write there and a read at the next level out that holds the
   operand; partial sums travel up and back down; DRAM reads each input and weight at least once and
   receives the final outputs at the activation width. An access narrower than a level's ``access_bits`` (its
   array's word) costs a whole word: one PE at work reads one input a cycle, but pays for the word.
5. energy: reads and writes at each level's own read and write energy per bit, plus the MACs;
   latency: the slowest of the compute (MAC cycles at the layer's utilisation) and each level's traffic
   over its bandwidth (read and write ports apart where the level has both), as in the roofline.

A v1 target (no operands, no dataflow) is read as every level holding every operand and the array
computing at the target's per-op-kind efficiency; its levels' roles still follow their position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from picojoule.hwmodels.common import CostResult, _sparse_factor, compute_energy, compute_time, finish
from picojoule.hwmodels.scales import vector_time
from picojoule.hwmodels.target import LOOP_DIMS, Target
from picojoule.hwmodels.workload import GraphArrays, Workload

#: the loop dimensions each operand depends on (the others are reuse: the value is the same along them)
RELEVANT = {"W": ("K", "C", "FX", "FY", "G"), "I": ("B", "C", "OX", "OY", "FX", "FY", "G"),
            "O": ("B", "K", "OX", "OY", "G")}
#: the operand each dataflow keeps in the PEs' register files (row-stationary keeps filter rows)
STATIONARY = {"row-stationary": "W", "weight-stationary": "W", "output-stationary": "O", "flexible": None}


@dataclass
class Loops:
    """One conv-like part of each layer: loop bounds and operand sizes (elements), each (N, L)."""

    dims: dict[str, np.ndarray]
    stride: np.ndarray
    macs: np.ndarray
    size: dict[str, np.ndarray]  # W, I, O


def loops(ga: GraphArrays, wl: Workload, k: np.ndarray, c: np.ndarray, r: np.ndarray, s: np.ndarray,
          stride: np.ndarray, macs: np.ndarray, w: np.ndarray, i: np.ndarray, o: np.ndarray) -> Loops:
    """Loop bounds of a part with ``k`` output and ``c`` input channels and an ``r`` x ``s`` filter."""
    depthwise = ga.depthwise
    one = np.ones_like(macs)
    oy = ga.out_rows * one
    ox = ga.out_cols * one
    dims = {"B": one * wl.batch, "K": np.where(depthwise, 1.0, k), "C": np.where(depthwise, 1.0, c) * one,
            "OX": ox, "OY": oy, "FX": s * one, "FY": r * one, "G": np.where(depthwise, k, 1.0) * one}
    # the input pixels a window sliding at `stride` touches (a strided 1x1 conv skips three of four)
    used_x = np.minimum((ox - 1) * stride + s, ox * s)
    used_y = np.minimum((oy - 1) * stride + r, oy * r)
    used = dims["B"] * dims["G"] * dims["C"] * used_x * used_y
    # matmuls of two activations: the second operand stands in for the weights
    mm = ~ga.has_weights
    share_b = np.divide(ga.in_b, ga.in_a + ga.in_b, out=np.zeros_like(ga.in_b), where=ga.in_a + ga.in_b > 0)
    w = np.where(mm, i * share_b, w)
    i = np.where(mm, i * (1 - share_b), np.minimum(i, used))
    return Loops(dims, stride * one, macs, {"W": w, "I": i, "O": o})


@dataclass
class Spatial:
    """The unrolling of one part over the PE array."""

    by_dim: list[dict[str, np.ndarray]]  # per array dimension: spatial factor of each loop dim it unrolls
    utilisation: np.ndarray  # MACs / (PEs x compute cycles)
    stride: np.ndarray
    slices: dict = field(default_factory=dict)  # _slice's results per set of array dimensions
    memo: dict = field(default_factory=dict)  # factor() and reuse() results

    def factor(self, dims: tuple[int, ...], loop: str) -> np.ndarray | float:
        """The spatial factor of ``loop`` over the array dimensions ``dims``."""
        key = (dims, loop)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        f: np.ndarray | float = 1.0
        for u in dims:
            if loop in self.by_dim[u]:
                f = f * self.by_dim[u][loop]
        self.memo[key] = f
        return f

    def used(self, dims: tuple[int, ...]) -> np.ndarray | float:
        """PEs used along the array dimensions ``dims``."""
        key = ("used", dims)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        f: np.ndarray | float = 1.0
        for u in dims:
            for v in self.by_dim[u].values():
                f = f * v
        self.memo[key] = f
        return f

    def reuse(self, x: str, dims: tuple[int, ...]) -> np.ndarray | float:
        """How many PEs along ``dims`` share one value of operand ``x``: the PEs of the unrolled loops ``x``
        does not depend on (for O: the partial sums reduced together), and overlapping input windows."""
        if not dims:
            return 1.0
        key = ("reuse", x, dims)
        if key not in self.memo:
            self.memo[key] = self._reuse(x, dims)
        return self.memo[key]

    def _reuse(self, x: str, dims: tuple[int, ...]) -> np.ndarray | float:
        f = {d: self.factor(dims, d) for d in LOOP_DIMS}
        if x == "W":
            return f["B"] * f["OX"] * f["OY"]
        if x == "O":
            return f["C"] * f["FX"] * f["FY"]
        window = 1.0
        for out_dim, f_dim in (("OX", "FX"), ("OY", "FY")):
            fo, ff = f[out_dim], f[f_dim]
            window = window * fo * ff / ((fo - 1) * np.minimum(self.stride, ff) + ff)
        return f["K"] * window


def implicit_unroll(target: Target) -> list[tuple[tuple[str, ...], int]]:
    """The array's unrolling: the target's dataflow, or for a v1 target row-stationary over its rows x cols
    (filter rows, then channels, down the rows; output rows across the columns), as Eyeriss maps a conv."""
    if target.dataflow is not None:
        return [(tuple(u.dims), u.size) for u in target.dataflow.unroll]
    return [(("FY", "C"), target.spatial.rows), (("OY",), target.spatial.cols)]


def level_spans(target: Target, i: int) -> tuple[int, ...]:
    """The array dimensions one instance of level ``i`` serves (v1: none for per-PE levels, else all)."""
    if target.dataflow is not None:
        return target.spans_of(i)
    n_dims = 2
    m = target.memory[i]
    return () if m.instances >= target.num_pes and i < len(target.memory) - 1 else tuple(range(n_dims))


def spatial(target: Target, lp: Loops) -> Spatial:
    """Unroll ``lp`` over the target's array (v1 targets: utilisation 1, their efficiency stands)."""
    by_dim: list[dict[str, np.ndarray]] = []
    for dims, size in implicit_unroll(target):
        room = np.full_like(lp.macs, float(size))
        factors = {}
        for d in dims:
            f = np.maximum(np.minimum(lp.dims[d], room), 1.0)
            factors[d] = f
            room = np.floor(room / f)
        by_dim.append(factors)
    sp = Spatial(by_dim, np.ones_like(lp.macs), lp.stride)
    if target.dataflow is not None:
        all_dims = tuple(range(len(by_dim)))
        cycles = np.ones_like(lp.macs)
        for d in LOOP_DIMS:
            cycles = cycles * np.ceil(lp.dims[d] / sp.factor(all_dims, d))
        util = np.divide(lp.macs, target.num_pes * cycles, out=np.ones_like(lp.macs), where=cycles > 0)
        sp.utilisation = np.clip(util, 1e-9, 1.0)
    return sp


def _product(values) -> np.ndarray | float:
    out: np.ndarray | float = 1.0
    for v in values:
        out = out * v
    return out


def _ceil_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.ceil(a / np.maximum(b, 1e-12))


def _refetch(stationary: str, tile: np.ndarray, dims: dict[str, np.ndarray], size: dict[str, np.ndarray]):
    """(W, I, O-up) fills per value when ``stationary`` stays in tiles of ``tile`` elements: O-up counts each
    output's trips out of the level (partial sums come back one fewer time)."""
    one = np.ones_like(tile)
    per_k = dims["C"] * dims["FX"] * dims["FY"]  # weights of one output channel
    pixels = dims["B"] * dims["OX"] * dims["OY"]
    if stationary == "W":
        fits_k = tile >= per_k
        n_c = np.where(fits_k, 1.0, _ceil_ratio(per_k, tile))
        n_k = np.where(fits_k, _ceil_ratio(dims["K"], np.floor(tile / np.maximum(per_k, 1))), dims["K"])
        return one, np.maximum(n_k, 1.0), n_c
    if stationary == "O":
        n_p = np.clip(_ceil_ratio(size["O"], tile), 1.0, pixels)
        n_k = np.maximum(_ceil_ratio(dims["K"], tile), 1.0)
        return n_p, n_k, one
    # inputs stay: weights again for every input tile; partial sums out once per tile of input channels
    n_p = np.clip(_ceil_ratio(size["I"], tile), 1.0, pixels)
    n_c = np.maximum(_ceil_ratio(dims["C"] * dims["FX"] * dims["FY"], tile), 1.0)
    return n_p, one, n_c


def _slice(target: Target, sp: Spatial, lp: Loops, i: int):
    """What one instance of level ``i`` serves: its loop bounds, its operand sizes, and how many instances work
    (cached on ``sp`` per set of array dimensions: levels that span the same dimensions share it)."""
    spans = level_spans(target, i)
    hit = sp.slices.get(spans)
    if hit is not None:
        return hit
    all_dims = tuple(range(len(sp.by_dim)))
    # one instance serves the PEs along `spans`: its slice of the layer is the loops divided by the unrolling along
    # the other array dimensions, whose PEs have instances of their own
    others = tuple(u for u in all_dims if u not in spans)
    f = {d: sp.factor(others, d) for d in LOOP_DIMS}
    dims = {d: lp.dims[d] if isinstance(f[d], float) else np.ceil(lp.dims[d] / f[d]) for d in LOOP_DIMS}
    size = {x: lp.size[x] / np.maximum(_product(f[d] for d in RELEVANT[x]), 1.0) for x in ("W", "I", "O")}
    out = sp.slices[spans] = (dims, size, sp.used(others), not spans)
    return out


def _choose(options: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> dict[str, np.ndarray]:
    """Per element, the refetch factors of the cheapest option."""
    best, best_cost = options[0]
    for fx, cost in options[1:]:
        better = cost < best_cost
        best = {x: np.where(better, fx[x], best[x]) for x in fx}
        best_cost = np.minimum(cost, best_cost)
    return best


def _separate_tier(target: Target, lp: Loops, sp: Spatial, bits: dict[str, np.ndarray]) -> dict[int, dict]:
    """Where each operand's innermost on-chip level holds that operand alone (ZigZag's W, I and O register files),
    the PE's loop order is one: one operand stays (filled once) and the others are refetched as its tiles
    require. Returns, per such level, the refetch factor of its operand, choosing the stationary operand (the
    dataflow's, or for a flexible one the cheapest) jointly for all of them."""
    n = len(target.memory)
    first = {x: next(i for i, m in enumerate(target.memory) if x in m.held) for x in ("W", "I", "O")}
    levels = {x: i for x, i in first.items() if i < n - 1 and target.memory[i].held == (x,)}
    if len(levels) < 2:
        return {}
    df = target.dataflow
    kind = STATIONARY.get(df.kind) if df is not None else None
    # weights or partial sums stay (the dataflows above; an input-stationary order would need the windows of
    # every output an input feeds at hand, which a register file of a few dozen values does not hold)
    candidates = [kind] if kind in levels else [x for x in ("W", "O") if x in levels]
    slices = {x: _slice(target, sp, lp, i) for x, i in levels.items()}

    def nxt(x: str) -> int:
        return next(j for j in range(levels[x] + 1, n) if x in target.memory[j].held)

    def tiles(s: str):
        """The refetch factors of the tilings that keep ``s``: whole output channels of weights (or a tile of
        partial sums) as _refetch gives, and for weights also tiles across as many output channels as the partial
        sum register holds, a chunk of input channels deep: each input is then read once for all of them and the
        partial sums leave once per chunk (the loop blocking a mapper picks when a PE's channels do not fit)."""
        dims, size, _, _ = slices[s]
        tile = target.memory[levels[s]].capacity_bytes * 8 / bits[s]
        yield _refetch(s, tile, dims, size)
        if s == "W" and "O" in levels:
            psums = target.memory[levels["O"]].capacity_bytes * 8 / bits["O"]
            taps = dims["FX"] * dims["FY"]
            k_t = np.maximum(np.minimum(dims["K"], np.floor(psums)), 1.0)
            c_t = np.floor(tile / (k_t * taps))
            n_k = _ceil_ratio(dims["K"], k_t)
            n_c = np.where(c_t >= 1, _ceil_ratio(dims["C"], np.maximum(c_t, 1.0)), 1e30)  # 1e30: no such tile
            yield np.ones_like(tile), n_k, n_c

    # each operand's cost of one trip of all its values between its register and the level above, and the inputs'
    # loss of the sliding window's overlap where they stream past a register too small to keep it (the same for
    # every tiling that keeps something else)
    base = {}
    for x in levels:
        _, size_x, copies, _ = slices[x]
        m, up = target.memory[levels[x]], target.memory[nxt(x)]
        base[x] = size_x[x] * copies * bits[x] * (m.write_pj_per_bit + up.read_energy_pj_per_bit)
    streamed = 1.0
    if "I" in levels:  # the overlap is kept only if the input register file holds FY rows of a window's span
        i_dims = slices["I"][0]
        cap_i = target.memory[levels["I"]].capacity_bytes * 8 / bits["I"]
        span = np.minimum(i_dims["FY"] * ((i_dims["OX"] - 1) * lp.stride + i_dims["FX"]),
                          i_dims["FX"] * ((i_dims["OY"] - 1) * lp.stride + i_dims["FY"]))
        lost = np.maximum(i_dims["FX"] * i_dims["FY"] / lp.stride ** 2, 1.0)
        streamed = np.where(span <= cap_i, 1.0, lost)
    one = np.ones_like(lp.macs)
    options = []
    for s, (w_f, i_f, o_f) in ((s, f) for s in candidates for f in tiles(s)):
        if s != "I" and "I" in levels:
            i_f = i_f * streamed
        fx = {"W": w_f, "I": i_f, "O": o_f}
        fx[s] = one
        cost = 0.0
        for x in levels:
            cost = cost + base[x] * (2 * fx[x] - 1 if x == "O" else fx[x])
        options.append((fx, cost))
    best = _choose(options)
    return {i: best[x] for x, i in levels.items()}


def fills(target: Target, lp: Loops, sp: Spatial, bits: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per on-chip level, the fills of each operand it holds (values brought in over the layer, summed over
    the level's instances) and ``O_down`` (partial sums read back in). DRAM has none."""
    df = target.dataflow
    tier = _separate_tier(target, lp, sp, bits)
    out: list[dict[str, np.ndarray]] = []
    previous: dict[str, np.ndarray] = {}
    for i, level in enumerate(target.memory[:-1]):
        held = level.held
        dims, size, copies, per_pe = _slice(target, sp, lp, i)
        cap = level.capacity_bytes * 8
        need = sum(size[x] * bits[x] for x in held)
        fits = need <= cap
        if fits.all():  # everything this level holds of every layer fits: each value enters once
            best = {x: np.ones_like(need) for x in held}
        elif i in tier:
            best = {held[0]: tier[i]}
        else:
            allowed = [STATIONARY[df.kind]] if per_pe and df is not None and STATIONARY[df.kind] else list(held)
            allowed = [x for x in allowed if x in held] or list(held)
            share = 0.5 if len(held) > 1 else 1.0
            candidates = allowed if len(held) > 1 else [x for x in ("W", "I", "O") if x != held[0]]
            options = []
            for s in candidates:
                tile = cap * share / bits[s]
                w_f, i_f, o_f = _refetch(s, tile, dims, size)
                fx = {"W": w_f, "I": i_f, "O": o_f}
                options.append((fx, sum(size[x] * bits[x] * (2 * fx[x] - 1 if x == "O" else fx[x]) for x in held)))
            best = _choose(options)
        row: dict[str, np.ndarray] = {}
        for x in held:
            f = np.where(fits, 1.0, best[x]) * size[x] * copies
            if x in previous:  # a bigger level never refills more often than the one inside it
                f = np.minimum(f, previous[x])
            row[x] = f
            previous[x] = f
        if "O" in held:
            row["O_down"] = np.maximum(row["O"] - size["O"] * copies, 0.0)
        out.append(row)
    return out


def register_reuse(target: Target, lp: Loops, sp: Spatial, bits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """How many consecutive MACs a PE's operand register holds each operand for: the innermost temporal loop that
    an operand does not depend on lets the PE read it once per run of that loop (a weight held while the output
    columns stream past, an input while the output channels do, a partial sum while the filter taps accumulate).
    The dataflow says which operand the PE keeps: weight-stationary the weights (over OX, OY or B), output-
    stationary the partial sums (over C, FX or FY), row-stationary a filter row along the output columns and its
    partial sums along the taps; flexible takes whichever of a held weight or a held input saves more reads at the
    innermost levels, as a mapper that searches loop orders would (ZigZag counts partial sums read and written at
    every MAC, so only W and I compete there)."""
    all_dims = tuple(range(len(sp.by_dim)))
    pe = {d: np.ceil(lp.dims[d] / sp.factor(all_dims, d)) for d in LOOP_DIMS}
    one = np.ones_like(lp.macs)
    out = {"W": one, "I": one, "O": one}
    kind = target.dataflow.kind if target.dataflow is not None else "row-stationary"
    # a weight held over a run of outputs needs their partial sums at hand: the run fits the innermost O level
    o_level = next(i for i, m in enumerate(target.memory) if "O" in m.held)
    psums = target.memory[o_level].capacity_bytes * 8 / bits["O"] if o_level < len(target.memory) - 1 else np.inf
    runs = [np.where(pe[d] <= psums, pe[d], 1.0) for d in ("OX", "OY", "B")]
    w_run = np.maximum(np.maximum(runs[0], runs[1]), runs[2])
    i_run = np.where(pe["K"] <= psums, pe["K"], 1.0)
    if kind == "weight-stationary":
        out["W"] = w_run
    elif kind == "output-stationary":
        out["O"] = np.maximum(np.maximum(pe["C"], pe["FX"]), pe["FY"])
    elif kind == "row-stationary":
        out["W"], out["O"] = pe["OX"], pe["FX"]
    else:
        def first(x: str) -> float:
            i = next(i for i, m in enumerate(target.memory) if x in m.held)
            return target.memory[i].read_energy_pj_per_bit
        save_w = (1 - 1 / w_run) * bits["W"] * first("W")
        save_i = (1 - 1 / i_run) * bits["I"] * first("I")
        use_w = save_w >= save_i
        out["W"] = np.where(use_w, w_run, 1.0)
        out["I"] = np.where(use_w, 1.0, i_run)
    return out


def _granule(level, moved: np.ndarray | float) -> np.ndarray | float:
    """What an access that moves ``moved`` bits costs at ``level``, per bit moved: an access moves at least the
    level's ``access_bits`` (a word of its array), so a narrower one costs a whole word (1 where every access is
    a word or wider: a wider transfer is many whole words, its last one partly used)."""
    g = level.access_bits
    if not g or np.min(moved) >= g:
        return 1.0
    return np.maximum(g / np.maximum(moved, 1e-9), 1.0)


def _scaled(x: np.ndarray, g: np.ndarray | float) -> np.ndarray:
    return x if isinstance(g, float) else x * g


def accesses(target: Target, lp: Loops, sp: Spatial, fl: list[dict[str, np.ndarray]],
             bits: dict[str, np.ndarray], out_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(read bits, write bits) per level, each (N, L, levels), an access of fewer bits than a level's
    ``access_bits`` counted as that many: each cycle the innermost level of an operand serves the distinct values
    its PEs want at once (one, where a single PE works, as on a depthwise layer over an array that unrolls only
    channels), and a fill or drain between two levels moves at once what each working instance of the inner one
    holds of its slice, for every instance with distinct values."""
    n = len(target.memory)
    spans = [level_spans(target, i) for i in range(n)]
    reads = [np.zeros_like(lp.macs) for _ in range(n)]
    writes = [np.zeros_like(lp.macs) for _ in range(n)]
    register = register_reuse(target, lp, sp, bits)
    for x in ("W", "I", "O"):
        chain = [i for i, m in enumerate(target.memory) if x in m.held]
        inner = chain[0]
        demand = lp.macs / np.maximum(sp.reuse(x, spans[inner]), 1.0) / register[x]
        g_inner = 1.0
        if target.memory[inner].access_bits:  # the distinct values of x its PEs want in one cycle, in one access
            at_once = np.maximum(sp.used(spans[inner]) / np.maximum(sp.reuse(x, spans[inner]), 1.0), 1.0)
            g_inner = _granule(target.memory[inner], at_once * bits[x])
        traffic = _scaled(demand * bits[x], g_inner)
        reads[inner] = reads[inner] + traffic
        if x == "O":
            writes[inner] = writes[inner] + traffic
        for a, b in zip(chain, chain[1:]):
            f = fl[a][x]
            if a == inner and x != "O":  # a register file is never filled more often than it is read
                f = np.minimum(f, demand)
            spread = np.maximum(sp.reuse(x, spans[b]) / np.maximum(sp.reuse(x, spans[a]), 1.0), 1.0)
            final = b == n - 1
            g = 1.0
            if target.memory[b].access_bits:  # one access at b: a's working instances under it, each its chunk
                chunk_bits = _slice(target, sp, lp, a)[1][x] * bits[x]  # a's slice of x, or as much as a holds
                chunk_bits = np.minimum(chunk_bits, target.memory[a].capacity_bytes * 8)
                instances = sp.used(spans[b]) / spread
                if spans[a]:
                    instances = instances / np.maximum(sp.used(spans[a]), 1.0)
                g = _granule(target.memory[b], np.maximum(instances, 1.0) * chunk_bits)
            if x == "O":
                down = fl[a]["O_down"]
                up_b = f / spread
                reads[a] = reads[a] + f * bits[x]
                writes[a] = writes[a] + down * bits[x]
                if final:  # finished outputs leave at the activation width, spilled partial sums at theirs
                    spill = np.maximum(up_b - lp.size["O"], 0.0)
                    writes[b] = writes[b] + _scaled(lp.size["O"] * out_bits + spill * bits[x], g)
                else:
                    writes[b] = writes[b] + _scaled(up_b * bits[x], g)
                reads[b] = reads[b] + _scaled(down / spread * bits[x], g)
            else:
                writes[a] = writes[a] + f * bits[x]
                src = f / spread
                if final:
                    src = np.maximum(src, lp.size[x])
                reads[b] = reads[b] + _scaled(src * bits[x], g)
    return np.stack(reads, axis=-1), np.stack(writes, axis=-1)


def _part(target: Target, lp: Loops, bits: dict[str, np.ndarray], out_bits: np.ndarray):
    sp = spatial(target, lp)
    fl = fills(target, lp, sp, bits)
    r, w = accesses(target, lp, sp, fl, bits, out_bits)
    return r, w, sp


def hierarchy(ga: GraphArrays, target: Target, wl: Workload) -> CostResult:
    wb, ab = wl.w_bits, wl.a_bits
    psum = np.minimum(wb + ab, float(target.spatial.psum_bits))
    bits = {"W": wb, "I": ab, "O": psum}
    s = ga.kernel_w
    r = ga.k_area / s
    split = wl.rank > 0
    spatial_elems = np.where(wl.m > 0, wl.out_elems / np.maximum(wl.m, 1), 0.0)
    macs1 = np.where(split, spatial_elems * wl.rank * wl.c * ga.k_area, wl.macs)
    w1 = np.where(split, wl.rank * wl.c * ga.k_area, wl.weight_elems)
    o1 = np.where(split, wl.mid_elems, wl.out_elems)
    k1 = np.where(split, wl.rank, wl.m)
    lp1 = loops(ga, wl, k1, wl.c, r, s, ga.stride, macs1, w1, wl.in_elems, o1)
    r1, w1_, sp1 = _part(target, lp1, bits, ab)
    one = np.ones_like(s)
    if not split.any():  # no low-rank split: the second half is empty everywhere
        return _finish(ga, target, wl, r1, w1_, sp1.utilisation, macs1, None, None, None, split)
    lp2 = loops(ga, wl, wl.m, wl.rank, one, one, one, wl.macs - macs1, wl.weight_elems - w1,
                wl.mid_elems, np.where(split, wl.out_elems, 0.0))
    lp2.dims["G"] = np.ones_like(lp2.macs)
    r2, w2_, sp2 = _part(target, lp2, bits, ab)
    return _finish(ga, target, wl, r1, w1_, sp1.utilisation, macs1, r2, w2_, sp2.utilisation, split)


def _finish(ga: GraphArrays, target: Target, wl: Workload, r1, w1_, util1, macs1, r2, w2_, util2, split) -> CostResult:
    ab = wl.a_bits
    if r2 is not None:  # the second half's traffic is zero where a layer is not split
        reads = r1 + r2
        writes = w1_ + w2_
        util = np.where(split, (util1 * macs1 + util2 * (wl.macs - macs1)) / np.maximum(wl.macs, 1.0), util1)
    else:
        reads, writes, util = r1, w1_, util1
    # layers without MACs move their inputs and outputs once through every level that holds them
    flat = ~ga.has_macs
    if flat.any():
        holds_i = np.asarray([float("I" in m.held) for m in target.memory])
        holds_o = np.asarray([float("O" in m.held) for m in target.memory])
        on_chip = np.ones(len(target.memory))
        on_chip[-1] = 0.0
        in_bits = np.broadcast_to(wl.in_elems * ab, reads.shape[:-1])[:, flat, None]
        out_bits = np.broadcast_to(wl.out_elems * ab, reads.shape[:-1])[:, flat, None]
        reads[:, flat] = in_bits * holds_i + out_bits * (holds_o * on_chip)  # read in, and out again on chip
        writes[:, flat] = out_bits * holds_o + in_bits * (holds_i * on_chip)
    # compute: MAC cycles at the unrolling's utilisation where the target gives a dataflow
    if target.dataflow is not None:
        work = wl.macs * _sparse_factor(target.sparsity.skips, wl)
        t_mac = (work / (wl.peak_macs_per_s * np.maximum(util, 1e-9)) + wl.ops / wl.peak_macs_per_s
                 + vector_time(ga, target, wl))
        t_compute = np.where(ga.has_macs, t_mac, compute_time(ga, target, wl))
    else:
        t_compute = compute_time(ga, target, wl)
    e_read = np.asarray([m.read_energy_pj_per_bit for m in target.memory])
    e_write = np.asarray([m.write_pj_per_bit for m in target.memory])
    e_memory = (reads * e_read + writes * e_write) * 1e-12
    t_memory = np.empty_like(reads)
    for i, m in enumerate(target.memory):
        if m.ports_separate:
            rb = m.read_bandwidth_bytes_per_s or m.bandwidth_bytes_per_s
            wbw = m.write_bandwidth_bytes_per_s or m.bandwidth_bytes_per_s
            t_memory[..., i] = np.maximum(reads[..., i] / 8 / rb, writes[..., i] / 8 / wbw)
        else:
            t_memory[..., i] = (reads[..., i] + writes[..., i]) / 8 / m.bandwidth_bytes_per_s
    return finish("hierarchy", ga, target, wl, t_compute, t_memory, compute_energy(target, wl), e_memory)
