"""What the cost models share: the result arrays, compute time and compute energy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from picojoule.hwmodels.scales import vector_energy, vector_time
from picojoule.hwmodels.target import OP_KINDS, Target
from picojoule.hwmodels.workload import GraphArrays, Workload

#: energy of one element-wise op (add, max, compare) relative to a MAC at the same width:
#: Horowitz ISSCC 2014, 45 nm: int8 add 0.03 pJ vs int8 MAC 0.23 pJ, fp32 add 0.9 vs fp32 MAC 4.6.
ELEMENTWISE_ENERGY_RATIO = 0.15


@dataclass
class CostResult:
    """Cost of N policies over L layers: latency (N, L) s, energy (N, L, K) J by component, bound (N, L)."""

    model: str
    target: str
    layers: list[str]
    components: list[str]  # "compute", each memory level, "static"
    latency_s: np.ndarray
    energy_j: np.ndarray
    bound: np.ndarray  # 0 = compute, i = memory level i-1
    bound_names: list[str]
    macs: np.ndarray
    params: np.ndarray  # weights + biases per layer after pruning/low rank
    nonzeros: np.ndarray  # params less the zero weights of sparsity
    weight_bits: np.ndarray  # model size in bits per layer
    area_mm2: float = float("nan")  # the target's silicon (picojoule.hwmodels.area), nan where it cannot be estimated

    @property
    def average_power_w(self) -> np.ndarray:
        """(N,) energy / latency of each policy, W."""
        return self.total_energy_j / np.maximum(self.total_latency_s, 1e-30)

    @property
    def total_latency_s(self) -> np.ndarray:
        return self.latency_s.sum(axis=1)

    @property
    def total_energy_j(self) -> np.ndarray:
        return self.energy_j.sum(axis=(1, 2))

    @property
    def total_macs(self) -> np.ndarray:
        return self.macs.sum(axis=1)

    @property
    def total_params(self) -> np.ndarray:
        return self.params.sum(axis=1)

    @property
    def total_nonzeros(self) -> np.ndarray:
        return self.nonzeros.sum(axis=1)

    @property
    def size_bytes(self) -> np.ndarray:
        return self.weight_bits.sum(axis=1) / 8


def _sparse_factor(pattern: str, wl: Workload) -> np.ndarray | float:
    """Fraction of MACs still paid when the hardware exploits zero weights of ``pattern`` (an unstructured
    datapath uses every zero weight, a 2:4 one only 2:4 zeros)."""
    if not wl.sparse:
        return 1.0
    if pattern == "unstructured":
        return 1.0 - wl.zero_fraction
    if pattern == "2:4":
        return np.where(wl.two_four, 1.0 - wl.zero_fraction, 1.0)
    return 1.0


def channel_width(wl: Workload, reference: int) -> np.ndarray:
    """(N, L) each layer's width relative to ``reference``: sqrt(kept in x kept out channels) / reference."""
    return np.sqrt(np.maximum(wl.m * wl.c, 1.0)) / reference


def channel_scale(wl: Workload, exponent: float, reference: int) -> np.ndarray | float:
    """(N, L) factor on compute time for each layer's width: :func:`channel_width` ** ``exponent``."""
    return 1.0 if exponent == 0 else channel_width(wl, reference) ** exponent


def compute_time(ga: GraphArrays, target: Target, wl: Workload) -> np.ndarray:
    """Seconds of compute per layer at the layer's mode, the target's efficiency for its op kind and the
    layer's channel-width scale."""
    c = target.compute
    eff = np.asarray([c.efficiency[k] for k in OP_KINDS])[ga.kind]
    work = wl.macs * _sparse_factor(target.sparsity.skips, wl) + wl.ops
    return (work / (wl.peak_macs_per_s * eff) * channel_scale(wl, c.channel_exponent, c.reference_channels)
            + vector_time(ga, target, wl))


def compute_energy(target: Target, wl: Workload) -> np.ndarray:
    """Joules of arithmetic: MACs (minus gated zeros) plus element-wise ops, plus a scale format's vector ops."""
    macs = wl.macs * _sparse_factor(target.sparsity.gates, wl)
    return (macs + wl.ops * ELEMENTWISE_ENERGY_RATIO) * wl.mac_energy_pj * 1e-12 + vector_energy(target, wl)


def finish(model: str, ga: GraphArrays, target: Target, wl: Workload, t_compute: np.ndarray,
           t_memory: np.ndarray, e_compute: np.ndarray, e_memory: np.ndarray) -> CostResult:
    """Combine compute and per-level memory figures into a result.

    ``t_memory`` and ``e_memory`` are (N, L, levels). Latency is the slowest of compute and each
    level's transfers plus the target's per-layer overhead; static power is charged over it.
    """
    times = np.concatenate([t_compute[..., None], t_memory], axis=-1)
    bound = times.argmax(axis=-1)
    latency = times.max(axis=-1) + target.compute.layer_overhead_s
    if target.kernels is not None:  # measured kernels of the runtime deployed on, where they cover a layer
        latency, _ = target.kernels.layer_latency(ga, wl, latency)
    static = latency * target.power.static_w
    energy = np.concatenate([e_compute[..., None], e_memory, static[..., None]], axis=-1)
    levels = [m.name for m in target.memory]
    return CostResult(
        model=model, target=target.name, layers=ga.names, components=["compute", *levels, "static"],
        latency_s=latency, energy_j=energy, bound=bound, bound_names=["compute", *levels], macs=wl.macs,
        params=wl.weight_elems, nonzeros=wl.nonzero_weights, weight_bits=wl.weight_elems * wl.w_bits,
        area_mm2=target_area(target),
    )


_AREAS: dict[int, tuple[Target, float]] = {}


def target_area(target: Target) -> float:
    """:func:`picojoule.hwmodels.area.area_mm2` of ``target``, cached (targets are frozen)."""
    hit = _AREAS.get(id(target))
    if hit is not None and hit[0] is target:
        return hit[1]
    from picojoule.hwmodels.area import area_mm2

    try:
        value = float(area_mm2(target))
    except ValueError:  # a figure outside the scaling rules' range (e.g. a node they do not cover)
        value = float("nan")
    if len(_AREAS) > 256:
        _AREAS.clear()
    _AREAS[id(target)] = (target, value)
    return value
