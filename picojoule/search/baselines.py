"""Named reference policies that constraints and reports compare against.

* ``fp32``: the model as it is (float32, unpruned, no rank split);
* ``fp16``: every layer, the compute layers and the rest (attention matmuls, softmax, norms), at 16 bits: a
  model as a GPU runs it in half precision;
* ``uniform_int<N>``: every compute layer (conv, linear) at N-bit weights and N-bit input activations;
* ``uniform_w<N>a<M>``: every compute layer at N-bit weights and M-bit activations.

Like the policies the search decodes, a baseline lists the compute layers and leaves the rest (pooling,
element-wise ops) at the default. Baselines ignore the search space: ``uniform_int8`` is 8-bit everywhere
even where the space pins or narrows a layer.
"""

from __future__ import annotations

import re

from picojoule.errors import PicojouleError
from picojoule.graph import LayerGraph
from picojoule.policy import FLOAT_BITS, LayerPolicy, Policy

BASELINE_RE = re.compile(r"^(fp32|fp16|uniform_int(\d{1,2})|uniform_w(\d{1,2})a(\d{1,2}))$")
#: the baselines every report shows
REPORT_BASELINES = ("fp32", "uniform_int8")


def baseline_bits(name: str) -> tuple[int, int]:
    """(w_bits, a_bits) of a baseline name; a PicojouleError if it is not one."""
    m = BASELINE_RE.match(name)
    if not m:
        raise PicojouleError(f"unknown baseline '{name}': expected fp32, fp16, uniform_int<N> or uniform_w<N>a<M>")
    if m.group(1) == "fp32":
        return FLOAT_BITS, FLOAT_BITS
    if m.group(1) == "fp16":
        return 16, 16
    w, a = (m.group(2), m.group(2)) if m.group(2) else (m.group(3), m.group(4))
    w_bits, a_bits = int(w), int(a)
    if not (1 <= w_bits <= FLOAT_BITS and 1 <= a_bits <= FLOAT_BITS):
        raise PicojouleError(f"baseline '{name}': bit-widths must be in 1..{FLOAT_BITS}")
    return w_bits, a_bits


def baseline_policy(name: str, graph: LayerGraph) -> Policy:
    """The policy of baseline ``name`` on ``graph``."""
    w_bits, a_bits = baseline_bits(name)
    rest = LayerPolicy(w_bits=16, a_bits=16) if name == "fp16" else LayerPolicy()  # the layers no knob covers
    layers = {} if (w_bits, a_bits) == (FLOAT_BITS, FLOAT_BITS) else {
        layer.name: LayerPolicy(w_bits=w_bits, a_bits=a_bits) for layer in graph.compute_layers()}
    return Policy(rest, layers, {"model": graph.name, "provenance": {"tool": "picojoule", "baseline": name}})
