"""Weight sparsity: a fraction of each layer's weights set to zero, unstructured or 2:4 (the ``sparsity`` knob).

* ``unstructured``: the ``round(s * n)`` weights of smallest magnitude in each weight matrix are zero.
* ``2:4`` (NVIDIA's semi-structured sparsity, ``sparsity: 0.5``): in every group of four consecutive weights
  along a row of the (out, in * kh * kw) weight matrix, the two of smallest magnitude are zero; the
  ``K mod 4`` weights at a row's end that form no group stay dense.

A low-rank layer's two halves are each sparsified. Pricing counts the zeros by the same rule
(:func:`zero_count`) and lets a target use them as it says (``sparsity.gates`` saves energy, ``skips`` saves
time): an ``unstructured`` target uses every zero weight, a ``2:4`` target only 2:4 zeros. Weights are stored
and moved dense (no compressed format is priced). The search space offers the knob only on targets that gate
or skip zeros: ``sparsity: [0, 0.5]`` at 2:4 where the target's pattern is 2:4 (a100, h100), else
:data:`DEFAULT_SPARSITY` unstructured (eyeriss). Applying zeroes the weights and keeps a ``weight_mask`` buffer
that fine-tuning re-applies after every optimizer step (:meth:`SparsityPass.after_step`); the exported ONNX
holds the zeros.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.passes.base import CompressionPass, KnobField, PricingState, is_number

PATTERNS = ("unstructured", "2:4")
DEFAULT_SPARSITY = (0.0, 0.25, 0.5, 0.75)
MASK = "weight_mask"


def zero_count(rows: Any, k: Any, sparsity: Any, two_four: Any) -> Any:
    """Zero weights of a (rows, k) weight matrix at ``sparsity`` (``two_four``: 2:4, else unstructured);
    scalars or arrays. The rule shared by pricing and by :func:`sparsify`."""
    rows, k = np.asarray(rows, dtype=np.float64), np.asarray(k, dtype=np.float64)
    unstructured = np.rint(np.asarray(sparsity, dtype=np.float64) * rows * k)
    out = np.where(np.asarray(two_four, dtype=bool), rows * np.floor(k / 4) * 2, unstructured)
    return int(out) if out.ndim == 0 else out


def hardware_pattern(target: Any) -> str | None:
    """The zero pattern ``target`` gates or skips: '2:4', 'unstructured' or None."""
    used = {target.sparsity.gates, target.sparsity.skips} - {"none"}
    return "2:4" if "2:4" in used else ("unstructured" if used else None)


class SparsityPass(CompressionPass):
    name = "sparsity"
    order = 30
    fields = (
        KnobField("sparsity", 0.0, lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)",
                  plural="numbers in [0, 1)"),
        KnobField("sparsity_pattern", "unstructured", lambda v: v in PATTERNS, f"one of {', '.join(PATTERNS)}",
                  encode=lambda v: float(PATTERNS.index(v)), decode=lambda x: PATTERNS[int(x)], searchable=False),
    )

    def applies(self, layer, target) -> bool:
        return layer.op in ("conv", "linear")

    def choices(self, layer, target, defaults):
        pattern = hardware_pattern(target)
        if "sparsity" in defaults:  # the user's choices: at 2:4 where the target's pattern is and they fit it
            fits = pattern == "2:4" and set(defaults["sparsity"]) <= {0.0, 0.5}
            return {"sparsity": defaults["sparsity"], "sparsity_pattern": ("2:4" if fits else "unstructured",)}
        if pattern == "2:4":
            return {"sparsity": (0.0, 0.5), "sparsity_pattern": ("2:4",)}
        if pattern == "unstructured":
            return {"sparsity": DEFAULT_SPARSITY}
        return {}

    def capacity(self, field, layer, value) -> float:
        return 1.0 - float(field.encode(value))  # more zeros, less capacity

    def validate(self, policy, graph, source) -> None:
        for name, lp in [("default", policy.default), *policy.layers.items()]:
            if lp.sparsity_pattern == "2:4" and lp.sparsity not in (0, 0.5):
                where = f"{source}: default" if name == "default" else f"{source}: layer '{name}'"
                raise PicojouleError(f"{where}: field 'sparsity': 2:4 sparsity zeroes half the weights; expected "
                                     f"0 or 0.5, got {lp.sparsity}")

    def price(self, st: PricingState) -> None:
        s = st.pb.sparsity
        if not np.logical_or.reduce(s, axis=None):  # (a ufunc: no Python-level call)
            return
        two_four = st.pb.sparsity_pattern == 1
        st.pattern = two_four.astype(np.float64)
        st.zeros = sum(zero_count(rows, k, s, two_four) for rows, k in st.parts)

    def active(self, policy, graph) -> bool:
        return any(policy.for_layer(layer.name).sparsity > 0 for layer in graph.compute_layers())

    def apply(self, model, example, policy, graph, info, **options):
        from picojoule.spaces.quantize import get_layer

        for layer in graph.compute_layers():
            lp = policy.for_layer(layer.name)
            if lp.sparsity <= 0:
                continue
            names = [f"{layer.name}.0", f"{layer.name}.1"] if layer.name in info.ranks else [layer.name]
            for name in names:
                zeros = sparsify(get_layer(model, name, "policy"), lp.sparsity, lp.sparsity_pattern == "2:4")
                info.zeros[name] = zeros
        return model

    def after_step(self, model) -> None:
        import torch

        with torch.no_grad():
            for module in model.modules():
                mask = getattr(module, MASK, None)
                if mask is not None:
                    module.weight.mul_(mask)


def sparsify(module: Any, sparsity: float, two_four: bool) -> int:
    """Zero ``module``'s weights of smallest magnitude in place (see the module doc) and register the mask as
    the buffer ``weight_mask``; returns how many weights are zero by the mask."""
    import torch

    with torch.no_grad():
        w = module.weight.detach().reshape(module.weight.shape[0], -1)
        rows, k = w.shape
        mask = torch.ones_like(w)
        if two_four:
            full = (k // 4) * 4
            groups = w[:, :full].abs().reshape(rows, -1, 4)
            smallest = torch.argsort(groups, dim=-1, stable=True)[..., :2]
            mask[:, :full] = torch.ones_like(groups).scatter_(-1, smallest, 0.0).reshape(rows, full)
        else:
            n_zero = zero_count(rows, k, sparsity, False)
            order = torch.argsort(w.abs().flatten(), stable=True)[:n_zero]
            mask.view(-1)[order] = 0.0
        mask = mask.reshape(module.weight.shape)
        module.weight.mul_(mask)
        module.register_buffer(MASK, mask)
    return int((mask == 0).sum())


SPARSITY = SparsityPass()
