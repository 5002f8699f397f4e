"""Eyeriss-style memory-hierarchy energy model (Chen et al., ISCA 2016; Yang et al., CVPR 2017).

Each MAC layer is mapped row-stationary onto the target's PE array and the accesses of weights (W),
input activations (I) and partial sums (O) are counted at four roles of the memory hierarchy:

* RF (``memory[0]``, per PE): every MAC reads a weight and an input and reads+writes a psum.
* NoC/array (``memory[1]``): deliveries into the PEs. A filter row stays in the RF while the PE
  slides along the Q output columns (weight reuse Q), an input is reused by the S taps of the
  sliding window (S / stride), and a psum accumulates over S taps x the channels whose filter rows
  fit in half the RF (at the layer's weight width: narrower weights, more channels per PE).
* Global buffer (``memory[-2]``, and any level between NoC and it): a filter row is broadcast to
  the PEs of min(P, cols) output rows, inputs are reused diagonally and psums accumulated
  vertically over min(R, rows) PE rows; never less than each tensor's size.
* DRAM (``memory[-1]``): once per tensor when the layer fits in the global buffer; otherwise the
  cheaper of two tilings: weight chunks resident and inputs re-streamed, or input chunks resident
  and weights re-streamed. Outputs are written once.

Accesses are weighted by the operand widths (psums at w_bits + a_bits, at most the target's psum_bits) and the
level's energy per bit. A low-rank layer is priced as its two parts; non-MAC layers move their
inputs and outputs once through every level. Latency: the slowest of compute and each level's
traffic over its bandwidth, as in the roofline.
"""

from __future__ import annotations

import numpy as np

from picojoule.hwmodels.common import CostResult, compute_energy, compute_time, finish
from picojoule.hwmodels.target import Target
from picojoule.hwmodels.workload import GraphArrays, Workload


def _conv_part(target: Target, p, q, r, s, stride, c, macs, w, i, o, wb, ab):
    """Bits moved at (rf, noc, glb, dram-read, dram-write) by one conv-like part, each (N, L)."""
    rows, cols = target.spatial.rows, target.spatial.cols
    if rows is None:  # a v2 array of other than two dimensions: its first dimension as rows, the rest as columns
        rows = target.dataflow.unroll[0].size
        cols = target.num_pes // rows
    rf_bits = target.memory[0].capacity_bytes * 8
    glb = target.memory[-2] if len(target.memory) >= 3 else target.memory[0]
    glb_bits = glb.capacity_bytes * glb.instances * 8
    psum = np.minimum(wb + ab, float(target.spatial.psum_bits))
    rf = macs * (wb + ab + 2 * psum)
    n_c = np.clip(np.floor(rf_bits / 2 / (s * wb)), 1, np.maximum(c, 1))
    noc_w, noc_i, noc_o = macs / np.maximum(q, 1), macs / np.maximum(s / stride, 1), macs / (s * n_c)
    noc = noc_w * wb + noc_i * ab + noc_o * psum
    glb_acc = (np.maximum(w, noc_w / np.minimum(p, cols)) * wb
               + np.maximum(i, noc_i / np.minimum(r, rows)) * ab
               + np.maximum(o, noc_o / np.minimum(r, rows)) * psum)
    w_bits, i_bits, o_bits = w * wb, i * ab, o * ab
    half = glb_bits / 2
    tiled = np.minimum(w_bits + i_bits * np.ceil(w_bits / half), i_bits + w_bits * np.ceil(i_bits / half))
    dram_read = np.where(w_bits + i_bits + o_bits <= glb_bits, w_bits + i_bits, tiled)
    return rf, noc, np.maximum(glb_acc, dram_read + o_bits), dram_read, o_bits


def eyeriss(ga: GraphArrays, target: Target, wl: Workload) -> CostResult:
    wb, ab = wl.w_bits, wl.a_bits
    p, q, s, stride = ga.out_rows, ga.out_cols, ga.kernel_w, ga.stride
    r = ga.k_area / s
    split = wl.rank > 0
    spatial = np.where(wl.m > 0, wl.out_elems / np.maximum(wl.m, 1), 0.0)
    # part 1: the layer itself, or the k x k C->r half of a split
    macs1 = np.where(split, spatial * wl.rank * wl.c * ga.k_area, wl.macs)
    w1 = np.where(split, wl.rank * wl.c * ga.k_area, wl.weight_elems)
    o1 = np.where(split, wl.mid_elems, wl.out_elems)
    part1 = _conv_part(target, p, q, r, s, stride, wl.c, macs1, w1, wl.in_elems, o1, wb, ab)
    # part 2: the 1 x 1 r->M half (zero where not split)
    one = np.ones_like(s)
    part2 = _conv_part(target, p, q, one, one, one, wl.rank, wl.macs - macs1, wl.weight_elems - w1,
                       wl.mid_elems, np.where(split, wl.out_elems, 0.0), wb, ab)
    rf, noc, glb_acc, dram_read, dram_write = (a + np.where(split, b, 0.0) for a, b in zip(part1, part2))
    # non-MAC layers: inputs and outputs once through every level
    flat_read, flat_write = wl.in_elems * ab, wl.out_elems * ab
    mac = ga.has_macs
    roles = {
        "rf": np.where(mac, rf, flat_read + flat_write),
        "noc": np.where(mac, noc, flat_read + flat_write),
        "glb": np.where(mac, glb_acc, flat_read + flat_write),
    }
    dram_read = np.where(mac, dram_read, flat_read)
    dram_write = np.where(mac, dram_write, flat_write)
    n = len(target.memory)
    on_chip = [roles["rf"]] + [roles["noc"] if i == 1 and n >= 4 else roles["glb"] for i in range(1, n - 1)]
    bits = np.stack([*on_chip, dram_read + dram_write], axis=-1)
    bw = np.asarray([m.bandwidth_bytes_per_s for m in target.memory])
    e_read = np.asarray([m.read_energy_pj_per_bit for m in target.memory])
    e_memory = bits * e_read
    e_memory[..., -1] = dram_read * target.dram.read_energy_pj_per_bit + dram_write * target.dram.write_pj_per_bit
    return finish("eyeriss", ga, target, wl, compute_time(ga, target, wl), bits / 8 / bw,
                  compute_energy(target, wl), e_memory * 1e-12)
