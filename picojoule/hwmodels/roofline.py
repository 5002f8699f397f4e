"""Roofline cost model: each layer moves its compulsory traffic (weights, inputs, outputs, low-rank
intermediate, once each) through every memory level; latency is the slowest of compute and each
level's transfer time; energy is arithmetic + traffic x energy per bit at each level + static."""

from __future__ import annotations

import numpy as np

from picojoule.hwmodels.common import CostResult, compute_energy, compute_time, finish
from picojoule.hwmodels.target import Target
from picojoule.hwmodels.workload import GraphArrays, Workload


def roofline(ga: GraphArrays, target: Target, wl: Workload) -> CostResult:
    read_bits = wl.weight_elems * wl.w_bits + (wl.in_elems + wl.mid_elems) * wl.a_bits
    write_bits = (wl.out_elems + wl.mid_elems) * wl.a_bits
    bw = np.asarray([m.bandwidth_bytes_per_s for m in target.memory])
    e_read = np.asarray([m.read_energy_pj_per_bit for m in target.memory])
    e_write = np.asarray([m.write_pj_per_bit for m in target.memory])
    t_memory = ((read_bits + write_bits) / 8)[..., None] / bw
    e_memory = (read_bits[..., None] * e_read + write_bits[..., None] * e_write) * 1e-12
    return finish("roofline", ga, target, wl, compute_time(ga, target, wl), t_memory,
                  compute_energy(target, wl), e_memory)
