"""Policy: one choice of weight bits, activation bits, keep ratio, rank and sparsity per layer.

A policy document is YAML or JSON::

    version: 1                           # format version; a newer one than this code reads is an error
    provenance: {tool: picojoule, ...}   # optional: where the policy came from (search, import, hand)
    default: {w_bits: 8, a_bits: 8, keep: 1.0}
    layers:
      conv1: {w_bits: 8, a_bits: 8}      # any subset of the fields; the rest come from default
      layer3.0.conv1: {keep: 0.5, rank: 16}

``w_bits``/``a_bits`` of 32 mean float32 (not quantised); a layer's ``a_bits`` are the bits of its
input activations (HAQ's convention); ``keep`` is the fraction of output channels kept; ``rank`` 0
or null means no low-rank split; ``sparsity`` is the fraction of weights that are zero and
``sparsity_pattern`` how they lie (``unstructured``, or ``2:4`` at sparsity 0.5), priced only where the target
gates or skips zeros. The fields come from the compression passes (:mod:`picojoule.passes`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from picojoule.errors import PicojouleError
from picojoule.passes import FIELD_BY_NAME, FIELDS
from picojoule.passes.quantize import FLOAT_BITS
from picojoule.yamlfile import read_text

#: the policy document format this code writes and the newest it reads
POLICY_VERSION = 1
#: the per-layer knobs, in the order of LayerPolicy's fields and PolicyBatch's arrays (from the pass registry)
KNOBS = tuple(f.name for f in FIELDS)


class _LayerPolicyBase:
    def check(self, where: str) -> None:
        """Raise a one-line error naming ``where`` and the field if a value is out of range."""
        for f in FIELDS:
            f.check(getattr(self, f.name), where)


#: The knobs of one layer: a frozen dataclass with one field per knob of the registered compression passes
#: (:data:`picojoule.passes.FIELDS`): ``w_bits``, ``a_bits``, ``keep``, ``rank``, ``sparsity``,
#: ``sparsity_pattern``; each defaults to its uncompressed value.
LayerPolicy = make_dataclass("LayerPolicy", [(f.name, Any, field(default=f.default)) for f in FIELDS],
                             bases=(_LayerPolicyBase,), frozen=True)
LayerPolicy.__module__, LayerPolicy.__qualname__ = __name__, "LayerPolicy"  # importable by name (pickling, Ray)

_FIELDS = set(KNOBS)


def _check_version(version: Any, source: str) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PicojouleError(f"{source}: field 'version': expected a positive integer, got {version!r}")
    if version > POLICY_VERSION:
        raise PicojouleError(f"{source}: field 'version': policy format {version} is newer than this picojoule "
                             f"reads (up to {POLICY_VERSION}); upgrade picojoule")


def _layer_policy(data: Any, base: LayerPolicy, where: str) -> LayerPolicy:
    if not isinstance(data, dict):
        raise PicojouleError(f"{where}: expected a mapping of {sorted(_FIELDS)}, got {type(data).__name__}")
    unknown = set(data) - _FIELDS
    if unknown:
        raise PicojouleError(f"{where}: unknown field '{sorted(unknown)[0]}' (expected {', '.join(sorted(_FIELDS))})")
    values = {k: (0 if k == "rank" and v is None else v) for k, v in data.items()}
    lp = replace(base, **values)
    lp.check(where)
    return lp


def _check_top_level(data: dict[str, Any], source: str) -> None:
    """Other top-level keys are metadata (model, target, provenance, ...), but a misspelt 'default' or 'layers',
    or a layer field written without 'default:', would silently mean float32 everywhere: refuse those."""
    import difflib

    for key in data:
        if key in ("version", "default", "layers"):
            continue
        if key in FIELD_BY_NAME:
            raise PicojouleError(f"{source}: field '{key}' at the top level: layer fields go under 'default:' "
                                 "(every layer) or 'layers: {NAME: ...}'")
        close = difflib.get_close_matches(str(key), ["default", "layers", "version"], n=1, cutoff=0.75)
        if close:
            raise PicojouleError(f"{source}: unknown field '{key}': did you mean '{close[0]}'?")


@dataclass
class Policy:
    """A per-layer compression policy: a default plus per-layer overrides, keyed by layer name."""

    default: LayerPolicy = field(default_factory=LayerPolicy)
    layers: dict[str, LayerPolicy] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # model, target, provenance, objectives

    def for_layer(self, name: str) -> LayerPolicy:
        return self.layers.get(name, self.default)

    @classmethod
    def uniform(cls, w_bits: int = FLOAT_BITS, a_bits: int = FLOAT_BITS, keep: float = 1.0) -> Policy:
        return cls(LayerPolicy(w_bits, a_bits, keep))

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> Policy:
        if not isinstance(data, dict):
            raise PicojouleError(f"{source}: expected a mapping with 'default' and/or 'layers'")
        _check_version(data.get("version", POLICY_VERSION), source)
        _check_top_level(data, source)
        default = _layer_policy(data.get("default", {}), LayerPolicy(), f"{source}: default")
        layers_data = data.get("layers") or {}
        if not isinstance(layers_data, dict):
            raise PicojouleError(f"{source}: field 'layers': expected a mapping of layer name to fields")
        layers = {str(k): _layer_policy(v, default, f"{source}: layer '{k}'") for k, v in layers_data.items()}
        meta = {k: v for k, v in data.items() if k not in ("version", "default", "layers")}
        return cls(default, layers, meta)

    @property
    def provenance(self) -> Any:
        """Where this policy came from (``meta['provenance']``), or None."""
        return self.meta.get("provenance")

    def to_dict(self) -> dict[str, Any]:
        """The policy document; every listed layer stays listed (as ``{}`` where it equals the default)."""
        default = asdict(self.default)
        layers = {
            name: {k: v for k, v in asdict(lp).items() if v != default[k]} for name, lp in self.layers.items()
        }
        meta = {k: v for k, v in self.meta.items() if k != "version"}
        return {"version": POLICY_VERSION, **meta, "default": default, "layers": layers}

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        text = read_text(path, "policy")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise PicojouleError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                 f"{str(e).splitlines()[0]}") from None
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data = self.to_dict()
        path.write_text(json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False))


def group_keeps(policy: Policy, graph: Any, source: str = "policy") -> list[float]:
    """The keep ratio of each pruning group of ``graph`` (a LayerGraph), in group order.

    A group takes the keep that its compute layers set away from the policy's default (all such
    values must agree: a one-line error names the layer otherwise), else the default keep. So a
    policy may set ``keep`` on any one member of a group, or on all of them alike."""
    keeps = []
    for group in graph.groups:
        chosen: tuple[str, float] | None = None
        for layer in graph.compute_layers():
            keep = policy.for_layer(layer.name).keep
            if layer.group != group.id or keep == policy.default.keep:
                continue
            if chosen is not None and keep != chosen[1]:
                raise PicojouleError(f"{source}: layer '{layer.name}': field 'keep': expected {chosen[1]} like "
                                     f"'{chosen[0]}' (same pruning group), got {keep}")
            chosen = chosen or (layer.name, keep)
        keeps.append(chosen[1] if chosen else policy.default.keep)
    return keeps


class PolicyBatch:
    """N policies over one graph's L layers: each knob of :data:`KNOBS` an (N, L) float array (attributes
    ``pb.w_bits``, ``pb.keep``, ...; a non-numeric field holds its encoded value, e.g. ``sparsity_pattern``'s
    index). Knobs not given are filled with their default."""

    def __init__(self, **arrays: np.ndarray):
        unknown = set(arrays) - set(KNOBS)
        if unknown:
            raise TypeError(f"PolicyBatch: unknown knob '{sorted(unknown)[0]}'")
        shape = next(iter(arrays.values())).shape
        for k in KNOBS:  # plain attributes: the cost models read them in their inner loop
            field = FIELD_BY_NAME[k]
            setattr(self, k, arrays[k] if k in arrays else np.full(shape, field.encode(field.default)))

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every knob's (N, L) array, by name."""
        return {k: getattr(self, k) for k in KNOBS}

    def __len__(self) -> int:
        return getattr(self, KNOBS[0]).shape[0]

    @classmethod
    def uniform(cls, n: int, n_layers: int, **values: Any) -> PolicyBatch:
        values = {k: FIELD_BY_NAME[k].encode(values.get(k, FIELD_BY_NAME[k].default)) for k in KNOBS}
        return cls(**{k: np.full((n, n_layers), float(v)) for k, v in values.items()})


def kept_channels(channels, keep):
    """Channels left when ``keep`` of ``channels`` are kept: rounded to nearest (ties to even), at least one.
    The one rule shared by the cost models and by the code that really prunes (scalars or arrays)."""
    kept = np.maximum(np.rint(np.asarray(channels, dtype=np.float64) * keep), 1.0)
    return int(kept) if kept.ndim == 0 else kept
