"""Quantization: per-layer weight and input-activation bit-widths (HAQ's knobs).

Pricing pads each width up to the target's native operand widths, picks the compute mode that fits the wider
operand and charges that mode's peak rate and energy per MAC (scaled by the operand widths on
precision-scalable datapaths). A layer without weights computes at its activation width; a layer without MACs
runs at the activation width of the nearest conv/linear that reads it. Applying fake-quantizes weights per output
channel (MSE-chosen clipping) and inputs per tensor (:mod:`picojoule.spaces.quantize`); export writes
QuantizeLinear/DequantizeLinear pairs (:func:`picojoule.compilers.export.export_clone`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from picojoule.passes.base import CompressionPass, KnobField, PricingState, is_int

FLOAT_BITS = 32
#: the width of pinned first and last layers
PIN_BITS = 8


def _bits_field(name: str) -> KnobField:
    return KnobField(name, FLOAT_BITS, lambda v: is_int(v) and 1 <= v <= FLOAT_BITS, "an integer in 1..32",
                     integer=True, plural="integers in 1..32")


def default_bits(target: Any) -> tuple[int, ...]:
    """The target's native widths in 2..8 (or 8 if none), plus 16 where native."""
    native = target.compute.native_bits
    bits = [b for b in native if 2 <= b <= 8] or [PIN_BITS]
    return tuple(bits + [16] * (16 in native))


def _pad(bits: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Round each width up to the next supported one (the widest if none is wide enough)."""
    idx = np.minimum(np.searchsorted(widths, bits, side="left"), len(widths) - 1)
    return widths[idx]


_MODES: dict[int, tuple[Any, tuple[np.ndarray, ...]]] = {}


def _modes(target: Any) -> tuple[np.ndarray, ...]:
    """The target's native widths and its compute modes' widths, peaks and energies as arrays (cached per target
    object: targets are immutable)."""
    hit = _MODES.get(id(target))
    if hit is None or hit[0] is not target:
        c = target.compute
        hit = (target, (np.asarray(c.native_bits, dtype=np.float64),
                        np.asarray([m.bits for m in c.modes], dtype=np.float64),
                        np.asarray([m.peak_macs_per_s for m in c.modes]),
                        np.asarray([m.mac_energy_pj for m in c.modes])))
        _MODES[id(target)] = hit
    return hit[1]


class QuantizePass(CompressionPass):
    name = "quantize"
    order = 40
    keeps_counts = True
    fields = (_bits_field("w_bits"), _bits_field("a_bits"))

    def choices(self, layer, target, defaults):
        return {f.name: defaults.get(f.name, default_bits(target)) for f in self.fields}

    def pinned(self, layer):
        return {f.name: (PIN_BITS,) for f in self.fields}

    def price(self, st: PricingState) -> None:
        ga, compute = st.ga, st.target.compute
        native, mode_widths, peaks, energies = _modes(st.target)
        st.a_bits = _pad(st.pb.a_bits[:, ga.bits_from], native)
        st.w_bits = np.where(ga.has_weights, _pad(st.pb.w_bits, native), st.a_bits)  # no weights: activation width
        mode_idx = np.minimum(np.searchsorted(mode_widths, np.maximum(st.w_bits, st.a_bits)), len(mode_widths) - 1)
        st.mode_bits = mode_widths[mode_idx]
        st.peak_macs_per_s = peaks[mode_idx]
        mac_pj = energies[mode_idx]
        if compute.precision_scalable:
            mac_pj = mac_pj * (np.minimum(st.w_bits, st.mode_bits) * np.minimum(st.a_bits, st.mode_bits)) \
                / st.mode_bits**2
        st.mac_energy_pj = mac_pj

    def active(self, policy, graph) -> bool:
        return bool(self.bits(policy, graph, ()))

    @staticmethod
    def bits(policy, graph, split) -> dict[str, tuple[int, int]]:
        """(w_bits, a_bits) of each module to fake-quantize; both halves of a ``split`` layer take its bits."""
        bits = {}
        for layer in graph.compute_layers():
            lp = policy.for_layer(layer.name)
            if min(lp.w_bits, lp.a_bits) >= FLOAT_BITS:
                continue
            names = [f"{layer.name}.0", f"{layer.name}.1"] if layer.name in split else [layer.name]
            bits.update({name: (lp.w_bits, lp.a_bits) for name in names})
        return bits

    def apply(self, model, example, policy, graph, info, **options):
        from picojoule.spaces.quantize import quantize_model

        bits = self.bits(policy, graph, split=info.ranks.keys())
        info.quantized = list(bits)
        info.needs_calibration = any(a < FLOAT_BITS for _, a in bits.values())
        return quantize_model(model, bits)

    def export(self, model):
        from picojoule.compilers.export import export_clone

        return export_clone(model)


QUANTIZE = QuantizePass()
