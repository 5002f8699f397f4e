"""The one interface every compression technique implements.

A :class:`CompressionPass` declares

* its **knobs** (:class:`KnobField`): the fields it adds to a layer's policy, their default (the
  uncompressed value), how a value is checked and how it is stored in a numeric policy array;
* its **choices** per layer on a target, the search space's default for that layer (:meth:`choices`), and
  the values a pinned or excluded layer takes;
* how it changes a layer's work **for pricing** (:meth:`price`, a stage of
  :func:`picojoule.hwmodels.workload.workload` that reads and writes a :class:`PricingState`);
* how it **applies to weights** (:meth:`apply`: a torch model in, a torch model out) and what it keeps true
  during fine-tuning (:meth:`after_step`);
* how it **exports** to ONNX (:meth:`export`: the model in the form the ONNX exporter should see).

The cheap, pure parts (knobs, choices, pricing) only use numpy; :meth:`apply` and :meth:`export` import torch
and the code that touches weights when they are called. A pass registers itself in
:data:`picojoule.passes.PASSES`; the policy, the space, validation, apply, export, the projector and DDPG read
that registry, so a new technique is one module plus its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from picojoule.errors import PicojouleError

if TYPE_CHECKING:  # for annotations only: passes sit below the policy, the graph's users and torch
    from picojoule.graph import Layer, LayerGraph


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class KnobField:
    """One per-layer field of a policy.

    ``valid`` says whether a value is allowed (``expected`` says what is, in an error); ``encode`` turns a
    value into the float stored in a policy array (``decode`` back). ``group``: one value per pruning group
    (a policy may set it on any member). ``searchable``: a space may make it a knob (else it is fixed per
    target)."""

    name: str
    default: Any
    valid: Callable[[Any], bool]
    expected: str
    integer: bool = False
    encode: Callable[[Any], float] = float
    decode: Callable[[float], Any] = _identity
    group: bool = False
    searchable: bool = True
    plural: str = ""  # ``expected`` of a list of choices, e.g. "integers in 1..32"

    def check(self, value: Any, where: str) -> None:
        if not self.valid(value):
            raise PicojouleError(f"{where}: field '{self.name}': expected {self.expected}, got {value!r}")

    def to_value(self, x: float) -> Any:
        """A policy array's float as this field's value."""
        value = self.decode(x)
        return int(value) if self.integer else float(value) if isinstance(value, (float, np.floating)) else value


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


_CONSTANTS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _constants(n: int, layers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read-only (n, layers) arrays of ones, zeros and False, made once per shape (the inner loop of a search
    prices batches of the same shape again and again)."""
    arrays = (np.ones((n, layers)), np.zeros((n, layers)), np.zeros((n, layers), dtype=bool))
    for a in arrays:
        a.flags.writeable = False
    if len(_CONSTANTS) >= 64:  # many shapes: keep the newest
        del _CONSTANTS[next(iter(_CONSTANTS))]
    _CONSTANTS[(n, layers)] = arrays
    return arrays


class PricingState:
    """What the pricing stages share for N policies over one graph's L layers: the graph's static arrays
    (``ga``), the target, the policy arrays (``pb``) and the (N, L) arrays the stages write. The workload
    starts every layer dense and unpruned; each pass's :meth:`CompressionPass.price` changes what it governs."""

    def __init__(self, ga: Any, target: Any, pb: Any, batch: int):
        self.ga, self.target, self.pb, self.batch = ga, target, pb, batch
        self.n = n = len(pb)
        # the defaults are shared, read-only arrays: a stage replaces an array, it never writes into one
        ones, self.zero, self.no = _CONSTANTS.get((n, ga.n_layers)) or _constants(n, ga.n_layers)
        self.k_out, self.k_in, self.k_a, self.k_b = ones, ones, ones, ones  # kept channel fractions
        self.cout, self.cin = ga.cout, ga.cin_dense  # per layer (L,), broadcast until a stage prunes
        self.spatial = ga.spatial * batch
        self.rank = self.mid = self.zero
        self.macs: np.ndarray = self.zero  # set by dense()
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []  # set by dense()
        self.zeros = self.zero  # zero weights a sparsity pass made
        self.pattern = self.zero  # 0: unstructured zeros, 1: 2:4

    def dense(self) -> None:
        """MACs and the weight matrix of every layer at its kept channels, unsplit: the workload calls it after
        the stages that change channels (``CompressionPass.changes_channels``), before the others.
        ``parts`` holds each layer's weight matrices as (rows, K) arrays: the layer's own (or a low-rank split's
        first half), and a split's second half once a low-rank stage split layers."""
        ga = self.ga
        k_in = self.cin * ga.k_area
        # masks as 0/1 factors: a multiply is one ufunc call where np.where is a Python-level dispatch
        self.macs = self.spatial * self.cout * k_in * ga.macs_factor
        self.parts = [(self.cout * ga.weights_factor, k_in * ga.weights_factor)]


class CompressionPass:
    """A compression technique (see the module doc). Subclasses set ``name``, ``order`` (apply and pricing
    order: lower first) and ``fields``, and override what they need."""

    name: str = ""
    order: int = 0
    fields: tuple[KnobField, ...] = ()
    #: extra keys of a space override's ``defaults`` and ``layers`` entries, each a list of choices
    #: validated by ``valid`` of the field it stands for, e.g. ``rank_fractions`` (``keep``'s rule)
    override_keys: Mapping[str, str] = {}
    #: what a layer needs for the pass to apply, for errors ("" if every compute layer has its knobs)
    needs: str = ""
    #: the pass changes no MACs, parameter or non-zero count (apply counts them before the first such pass)
    keeps_counts: bool = False
    #: the pricing stage changes channel counts (it runs before the dense MACs and weights are computed)
    changes_channels: bool = False

    # -- the space -----------------------------------------------------------------------------------

    def applies(self, layer: Layer, target: Any) -> bool:
        """Whether ``layer`` has this pass's knobs on ``target`` (a compute layer: conv or linear)."""
        return True

    def choices(self, layer: Layer, target: Any, defaults: Mapping[str, tuple]) -> dict[str, tuple]:
        """The space's choices of each field for ``layer`` on ``target``; ``defaults`` holds the user's
        ``defaults`` overrides (field or override key -> choices). Fields not returned stay at their default."""
        return {}

    def customise(self, layer: Layer, current: dict[str, tuple], values: Mapping[str, tuple], where: str) -> None:
        """Apply a ``layers`` override entry's ``values`` (field or override key -> choices) to ``layer``'s
        ``current`` choices. The default sets each field given (when the pass applies to the layer)."""
        for f in self.fields:
            if f.name in values and not f.group:
                current[f.name] = values[f.name]

    def pinned(self, layer: Layer) -> dict[str, tuple]:
        """The fixed choices of a pinned first/last layer (default: uncompressed)."""
        return {f.name: (f.default,) for f in self.fields if not f.group}

    def capacity(self, field: KnobField, layer: Layer, value: Any) -> float:
        """How much of the layer a choice keeps (more is costlier and more accurate): the projector lowers a
        knob towards less capacity."""
        return float(field.encode(value))

    # -- checking against a graph ---------------------------------------------------------------------

    def validate(self, policy: Any, graph: LayerGraph, source: str) -> None:
        """Raise a one-line error where ``policy`` sets this pass's fields in a way ``graph`` cannot take."""

    # -- pricing -------------------------------------------------------------------------------------

    def price(self, st: PricingState) -> None:
        """Change the layers' work in ``st`` as this pass does (a stage of the workload)."""

    # -- weights -------------------------------------------------------------------------------------

    def active(self, policy: Any, graph: LayerGraph) -> bool:
        """Whether the policy asks anything of this pass on ``graph``."""
        return any(getattr(policy.for_layer(layer.name), f.name) != f.default
                   for layer in graph.compute_layers() for f in self.fields)

    def apply(self, model: Any, example: Any, policy: Any, graph: LayerGraph, info: Any, **options: Any) -> Any:
        """Apply the pass to ``model`` (a copy the caller owns) and note what was done in ``info``
        (:class:`picojoule.spaces.apply.ApplyInfo`); returns the model (may be a new object)."""
        return model

    def after_step(self, model: Any) -> None:
        """Restore what an optimizer step may have undone (e.g. zeroed weights); called by fine-tuning."""

    def export(self, model: Any) -> Any:
        """The model as the ONNX exporter should see it (default: unchanged)."""
        return model
