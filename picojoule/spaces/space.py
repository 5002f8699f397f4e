"""The search space: the values each compression knob of one model on one target may take.

Knobs, in graph order (a knob with a single choice is a fixed value, not a knob):

* per compute layer (conv, linear): ``w_bits`` and ``a_bits``. Default: the target's native operand
  widths in 2..8 (8 if it has none there), plus 16 where native. A user may list any width in 1..32;
  the cost model prices a non-native width padded to the next native one.
* per pruning group: one ``keep`` knob, carried by the group's anchor; a decoded policy gives the
  same keep to every compute layer whose output channels lie in the group. Default
  :data:`DEFAULT_KEEP`.
* per rankable layer (conv with groups == 1, linear): ``rank``, 0 (no split) plus the ranks
  ``round(f * max_rank)`` (at least 1) for f in :data:`DEFAULT_RANK_FRACTIONS` that really save MACs:
  ``r * (cin*k*k + cout) < cout * cin*k*k``.
* per compute layer, on targets that gate or skip zero weights: ``sparsity``, ``[0, 0.5]`` at 2:4 where the
  target's pattern is 2:4 (a100, h100), else ``[0, 0.25, 0.5, 0.75]`` unstructured (eyeriss); elsewhere only
  where the overrides list it.

The knobs and their defaults come from the compression passes (:mod:`picojoule.passes`).

``rest_bits`` (default 32) is the width of the layers no knob covers: the attention matmuls, softmax, norms and
element-wise ops, and the defaults of decoded policies. 32 prices them in float32; 16 in 16-bit floats, as a GPU
runs a transformer outside its quantized linears (compare with the ``fp16`` baseline then). Excluded layers stay
at 32. The width is priced, not emulated when a policy is applied: those layers compute in float32 then (a 16-bit
float changes a transformer's outputs far less than the searched integer widths do).

``pin_first_last`` (default true) fixes the first and last compute layers at 8-bit weights and
activations, no rank split and no sparsity. Their pruning groups are fixed at keep 1.0 only when no other layer
shares them: a ResNet stem's group is also the residual stream of the first stage, which stays
prunable (pin it with ``layers: {conv1: {pin: {keep: 1.0}}}``).

Overrides, a YAML mapping (every key optional)::

    pin_first_last: true
    rest_bits: 32                            # or 16
    defaults: {w_bits: [4, 8], a_bits: [8], keep: [0.5, 1.0], rank_fractions: [0.25], sparsity: [0, 0.5]}
    layers:                                  # fnmatch patterns on layer names, applied in order
      "layer3.*": {w_bits: [2, 4], rank: [0, 8, 16]}   # or rank_fractions: [...]
      "layer1.0.conv1": {pin: {keep: 1.0}}   # one fixed value per field
      "layer2.*.conv2": {exclude: true}      # left uncompressed: 32-bit, keep 1.0, no rank

Rules: a pattern must match some compute layer, and each field it sets must apply to one of them
(``keep`` to a prunable layer, ``rank`` to a rankable one); ``keep`` set through a layer changes its
whole group. Wildcard patterns leave the pinned first/last layers alone: name one exactly to change
it. ``exclude`` wins over everything else, and fixes the layer's whole pruning group at keep 1.0.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.graph import Layer, LayerGraph
from picojoule.hwmodels.target import Target, load_target
from picojoule.passes import FIELD_BY_NAME, FIELDS, OWNER, PASSES
from picojoule.passes.prune import DEFAULT_KEEP, PRUNE
from picojoule.passes.quantize import FLOAT_BITS, PIN_BITS
from picojoule.policy import KNOBS, LayerPolicy, Policy, PolicyBatch
from picojoule.yamlfile import read_yaml

#: the kinds of knob a space may have (the searchable fields of the compression passes)
KNOB_KINDS = tuple(f.name for f in FIELDS if f.searchable)
#: per-layer fields (every field but the group-wide keep)
_LAYER_FIELDS = tuple(f.name for f in FIELDS if not f.group)
#: extra override keys of the passes (e.g. rank_fractions) -> the field whose rule checks their values
_EXTRA_KEYS = {key: rule for p in PASSES for key, rule in p.override_keys.items()}
_KEY_OWNER = {**OWNER, **{key: p for p in PASSES for key in p.override_keys}}
_TOP_KEYS = ("pin_first_last", "rest_bits", "defaults", "layers")
#: the widths ``rest_bits`` may take
REST_BITS = (16, 32)
_DEFAULT_KEYS = (*KNOB_KINDS, *_EXTRA_KEYS)
_ENTRY_KEYS = (*_DEFAULT_KEYS, "pin", "exclude")
_PIN_KEYS = KNOB_KINDS


@dataclass(frozen=True)
class Knob:
    """One searchable choice. ``layer`` is the layer whose value it is (a keep knob: its group's anchor);
    ``group`` is the pruning group of a keep knob; ``columns`` the graph layer indices it writes."""

    name: str
    kind: str  # one of KNOB_KINDS
    choices: tuple[float, ...]
    layer: str
    group: int | None = None
    columns: tuple[int, ...] = ()


# --------------------------------------------------------------------------------------------------
# choice lists: validation and defaults

def _choices(value: Any, key: str, where: str) -> tuple:
    """``value`` as a sorted tuple of distinct valid choices for ``key``; else a one-line error."""
    field = FIELD_BY_NAME[_EXTRA_KEYS.get(key, key)]
    if not isinstance(value, list) or not value or not all(field.valid(v) for v in value):
        raise PicojouleError(f"{where}: key '{key}': expected a non-empty list of {field.plural}, got {value!r}")
    cast = int if field.integer else float
    return tuple(sorted({cast(v) for v in value}))


def _mapping(value: Any, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(value, dict):
        raise PicojouleError(f"{where}: expected a mapping with keys {', '.join(keys)}, got {value!r}")
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise PicojouleError(f"{where}: unknown key '{unknown[0]}' (expected {', '.join(keys)})")
    return value


def _flag(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise PicojouleError(f"{where}: key '{key}': expected true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# the draft: per-layer and per-group choices while overrides apply


@dataclass
class _Draft:
    graph: LayerGraph
    target: Target
    layers: dict[str, dict[str, tuple]]  # compute layer -> {per-layer field: choices}
    keep: dict[int, tuple]  # group id -> keep choices
    pinned: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)
    rest_bits: int = 32

    def apply(self, pattern: str, entry: Any, where: str) -> None:
        """Apply one ``layers`` entry to the compute layers ``pattern`` matches."""
        entry = _mapping(entry, _ENTRY_KEYS, where)
        matched = [layer for layer in self.graph.compute_layers() if fnmatch.fnmatchcase(layer.name, pattern)]
        if not matched:
            raise PicojouleError(f"{where}: pattern matches no compute layer of model '{self.graph.name}'")
        for key in _EXTRA_KEYS:  # an extra key stands for its pass's own field
            given = [f.name for f in _KEY_OWNER[key].fields if f.name in entry]
            if key in entry and given:
                raise PicojouleError(f"{where}: give '{given[0]}' or '{key}', not both")
        values = {k: _choices(v, k, where) for k, v in entry.items() if k not in ("pin", "exclude")}
        for k, v in _mapping(entry.get("pin", {}), _PIN_KEYS, f"{where}: key 'pin'").items():
            if k in values:
                raise PicojouleError(f"{where}: key '{k}' is given both as choices and in 'pin'")
            if isinstance(v, list):
                raise PicojouleError(f"{where}: key 'pin': '{k}' takes a single value, got {v!r}")
            values[k] = _choices([v], k, f"{where}: key 'pin'")
        targets = [layer for layer in matched if layer.name not in self.pinned or layer.name == pattern]
        for key in values:  # each key must apply to some matched layer
            owner = _KEY_OWNER[key]
            if owner.needs and not any(owner.applies(layer, self.target) for layer in matched):
                raise PicojouleError(f"{where}: key '{key}': no matched layer has {owner.needs}")
        for layer in targets:
            self._set(layer, values, where)
        if "exclude" in entry:
            names = {layer.name for layer in targets}
            excluded = _flag(entry["exclude"], "exclude", where)
            self.excluded = self.excluded | names if excluded else self.excluded - names

    def _set(self, layer: Layer, values: dict, where: str) -> None:
        if "keep" in values and layer.group >= 0:
            self.keep[layer.group] = values["keep"]
        for p in PASSES:
            mine = {k: v for k, v in values.items() if _KEY_OWNER[k] is p}
            if mine and p.applies(layer, self.target):
                p.customise(layer, self.layers[layer.name], mine, where)

    def finish(self) -> None:
        """Excluded layers: uncompressed (every field at its default), their whole pruning group unpruned."""
        for name in self.excluded:
            self.layers[name] = {k: (FIELD_BY_NAME[k].default,) for k in _LAYER_FIELDS}
            group = self.graph[name].group
            if group >= 0:
                self.keep[group] = (1.0,)


def _draft(graph: LayerGraph, target: Target, overrides: Any, source: str) -> _Draft:
    data = _mapping({} if overrides is None else overrides, _TOP_KEYS, source)
    d = _mapping(data.get("defaults") or {}, _DEFAULT_KEYS, f"{source}: defaults")
    defaults = {k: _choices(v, k, f"{source}: defaults") for k, v in d.items()}
    compute = graph.compute_layers()
    layer_passes = [p for p in PASSES if p is not PRUNE]
    draft = _Draft(graph, target, {layer.name: {k: v for p in layer_passes if p.applies(layer, target)
                                                for k, v in p.choices(layer, target, defaults).items()}
                                   for layer in compute},
                   {g.id: PRUNE.choices(None, target, defaults)["keep"] for g in graph.groups})
    if compute and _flag(data.get("pin_first_last", True), "pin_first_last", source):
        draft.pinned = {compute[0].name, compute[-1].name}
        for name in draft.pinned:
            draft.layers[name] = {k: v for p in layer_passes for k, v in p.pinned(graph[name]).items()}
        for g in graph.groups:
            if set(g.members) <= draft.pinned:
                draft.keep[g.id] = (1.0,)
    layers = data.get("layers") or {}
    if not isinstance(layers, dict):
        raise PicojouleError(f"{source}: key 'layers': expected a mapping of layer-name pattern to settings")
    for pattern, entry in layers.items():
        draft.apply(str(pattern), entry, f"{source}: layers['{pattern}']")
    rest = data.get("rest_bits", 32)
    if isinstance(rest, bool) or rest not in REST_BITS:
        raise PicojouleError(f"{source}: key 'rest_bits': expected one of {', '.join(map(str, REST_BITS))}, "
                             f"got {rest!r}")
    draft.rest_bits = int(rest)
    draft.finish()
    return draft


# --------------------------------------------------------------------------------------------------
# the space


class Space:
    """The knobs of one graph on one target, and the maps between choice-index vectors and policies."""

    def __init__(self, graph: LayerGraph, target: Target | str, overrides: Any = None, source: str = "space"):
        """The space of ``graph`` on ``target`` (a Target, a bundled name or a YAML path), narrowed or widened
        by ``overrides`` (a mapping, see the module doc; ``source`` names it in errors)."""
        target = load_target(target)
        draft = _draft(graph, target, overrides, source)
        self.graph, self.target = graph, target
        self.pinned, self.excluded = sorted(draft.pinned), sorted(draft.excluded)
        self.rest_bits = draft.rest_bits
        self.knobs: list[Knob] = []
        self._fixed = {k: np.full(len(graph), FIELD_BY_NAME[k].encode(FIELD_BY_NAME[k].default)) for k in KNOBS}
        if self.rest_bits != FLOAT_BITS:  # the layers no knob covers (compute layers are set below)
            rest = [j for j, layer in enumerate(graph.layers) if layer.name not in draft.layers]
            for kind in ("w_bits", "a_bits"):
                self._fixed[kind][rest] = FIELD_BY_NAME[kind].encode(self.rest_bits)
        members = {g.id: tuple(graph.index(layer.name) for layer in graph.compute_layers() if layer.group == g.id)
                   for g in graph.groups}
        anchors = {graph.index(g.anchor): g for g in graph.groups}
        for layer in graph.compute_layers():
            j = graph.index(layer.name)
            for kind in KNOBS:
                if not FIELD_BY_NAME[kind].group:
                    if kind in draft.layers[layer.name]:
                        self._slot(kind, draft.layers[layer.name][kind], layer.name, (j,))
                elif j in anchors:
                    g = anchors[j]
                    self._slot(kind, draft.keep[g.id], layer.name, members[g.id], g.id)
        self._n_choices = np.asarray([len(k.choices) for k in self.knobs], dtype=np.int64)
        self._tables = {kind: self._table(kind) for kind in KNOB_KINDS}
        self._rows = {kind: np.arange(len(table[0])) for kind, table in self._tables.items()}

    def _slot(self, kind: str, choices: tuple, layer: str, columns: tuple[int, ...], group: int | None = None):
        if len(choices) == 1:
            self._fixed[kind][list(columns)] = FIELD_BY_NAME[kind].encode(choices[0])
        else:
            self.knobs.append(Knob(f"{layer}.{kind}", kind, choices, layer, group, columns))

    def _table(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(knob dims, padded table of encoded choices, target columns, source knob per column) of one kind."""
        encode = FIELD_BY_NAME[kind].encode
        dims = [d for d, k in enumerate(self.knobs) if k.kind == kind]
        width = max((len(self.knobs[d].choices) for d in dims), default=1)
        table = np.asarray([[encode(c) for c in self.knobs[d].choices] + [encode(self.knobs[d].choices[-1])] *
                            (width - len(self.knobs[d].choices)) for d in dims], dtype=np.float64)
        cols = [(c, i) for i, d in enumerate(dims) for c in self.knobs[d].columns]
        return (np.asarray(dims, dtype=np.int64), table.reshape(len(dims), width),
                np.asarray([c for c, _ in cols], dtype=np.int64), np.asarray([i for _, i in cols], dtype=np.int64))

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def build(cls, graph: LayerGraph, target: Target | str, overrides: dict | None = None,
              source: str = "space") -> Space:
        """The space of ``graph`` on ``target``, narrowed or widened by ``overrides`` (see the module doc)."""
        return cls(graph, target, overrides, source)

    @classmethod
    def load(cls, graph: LayerGraph, target: Target, path: str | Path) -> Space:
        """The space with the overrides of a YAML file."""
        return cls.build(graph, target, read_yaml(path, "space overrides"), str(path))

    # -- size --------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Number of knobs (length of a choice-index vector)."""
        return len(self.knobs)

    @property
    def n_choices(self) -> np.ndarray:
        """Choices per knob, shape (D,)."""
        return self._n_choices.copy()

    @property
    def size(self) -> int:
        """Number of distinct policies."""
        return math.prod(len(k.choices) for k in self.knobs)

    @property
    def log10_size(self) -> float:
        return float(sum(math.log10(len(k.choices)) for k in self.knobs))

    # -- vectors <-> policies ----------------------------------------------------------------------

    def _check(self, idx: np.ndarray, ndim: int) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim != ndim or idx.shape[-1] != self.dim or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"expected {ndim}-d integer choice indices with {self.dim} columns, got shape {idx.shape}")
        if ((idx < 0) | (idx >= self._n_choices)).any():
            raise ValueError("choice index out of range")
        return idx

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` choice-index vectors, each knob uniform over its choices: shape (n, D)."""
        return rng.integers(0, self._n_choices, size=(n, self.dim), dtype=np.int64)

    def encode(self, policy: Policy) -> np.ndarray:
        """The choice-index vector nearest to ``policy`` (per knob, the nearest choice; ties: the smaller)."""
        vec = np.empty(self.dim, dtype=np.int64)
        for d, knob in enumerate(self.knobs):
            encode = FIELD_BY_NAME[knob.kind].encode
            value = encode(getattr(policy.for_layer(knob.layer), knob.kind))
            vec[d] = np.argmin(np.abs(np.asarray([encode(c) for c in knob.choices]) - value))
        return vec

    def decode(self, vec: np.ndarray) -> Policy:
        """The policy of one choice-index vector: every compute layer listed, the rest float."""
        vec = self._check(vec, 1)
        values = {kind: self._fixed[kind].copy() for kind in KNOBS}
        for knob, i in zip(self.knobs, vec):
            values[knob.kind][list(knob.columns)] = FIELD_BY_NAME[knob.kind].encode(knob.choices[i])
        layers = {}
        for layer in self.graph.compute_layers():
            j = self.graph.index(layer.name)
            layers[layer.name] = LayerPolicy(**{k: FIELD_BY_NAME[k].to_value(values[k][j]) for k in KNOBS})
        return Policy(self.rest_policy(), layers, {"model": self.graph.name, "target": self.target.name})

    def rest_policy(self) -> LayerPolicy:
        """The policy of the layers no knob covers (the default of decoded policies): ``rest_bits`` wide."""
        return (LayerPolicy() if self.rest_bits == FLOAT_BITS
                else LayerPolicy(w_bits=self.rest_bits, a_bits=self.rest_bits))

    def decode_batch(self, idx: np.ndarray) -> PolicyBatch:
        """The (N, L) arrays of N choice-index vectors (N, D), vectorised; equal to stacking :meth:`decode`."""
        idx = self._check(idx, 2)
        n = idx.shape[0]
        out = {kind: np.repeat(self._fixed[kind][None], n, axis=0) for kind in KNOBS}
        for kind, (dims, table, cols, src) in self._tables.items():
            if len(dims):
                values = table[self._rows[kind], idx[:, dims]]  # (N, D_kind)
                out[kind][:, cols] = values[:, src]
        return PolicyBatch(**out)

    def uniform_policy(self, w_bits: int, a_bits: int, keep: float = 1.0) -> Policy:
        """The policy nearest to uniform ``w_bits``/``a_bits``/``keep`` with no rank split; pinned and
        excluded layers keep their fixed values, and each knob snaps to its nearest choice."""
        return self.decode(self.encode(Policy.uniform(w_bits, a_bits, keep)))

    def describe(self) -> str:
        """A short human summary: knob counts by kind, size, pinned and excluded layers."""
        counts = ", ".join(f"{sum(k.kind == kind for k in self.knobs)} {kind}" for kind in KNOB_KINDS)
        lines = [f"{self.graph.name} on {self.target.name}: {self.dim} knobs ({counts}), "
                 f"10^{self.log10_size:.1f} policies"]
        if self.pinned:
            lines.append(f"pinned at {PIN_BITS}-bit, no rank split, dense: {', '.join(self.pinned)}")
        if self.excluded:
            lines.append(f"excluded (float, unpruned): {', '.join(self.excluded)}")
        if self.rest_bits != FLOAT_BITS:
            lines.append(f"the layers no knob covers at {self.rest_bits} bits")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Space({self.graph.name!r}, {self.target.name!r}, knobs={self.dim}, log10_size={self.log10_size:.1f})"
