"""Constraints a user writes as strings, parsed into a small program of bounds.

Grammar: ``<metric> <op> <bound>`` with ``op`` one of ``<=``, ``<``, ``>=``, ``>`` (a strict bound is
treated like its non-strict twin) and ``bound`` either an absolute figure with a unit, or a factor of a
named baseline (see :mod:`picojoule.search.baselines`)::

    energy <= 0.5 * uniform_int8        latency <= 2 ms          size <= 100 KB
    accuracy_drop <= 0.5                accuracy >= 0.98         accuracy >= 0.99 * fp32
    co2e <= 1 ug                        macs <= 0.5 * fp32       latency <= uniform_w4a8
    area <= 2 mm2                       power <= 300 mW

Units: energy J/mJ/uJ/µJ/nJ/pJ; latency s/ms/us/µs/ns; size B/KB/MB/GB (10^3) and KiB/MiB/GiB (2^10);
co2e g/mg/ug/µg/kg; area mm2/um2/cm2 (the target's silicon, :mod:`picojoule.hwmodels.area`); power W/mW/uW
(average: energy / latency); macs and params a plain count or K/M/G; accuracy a fraction or ``%``;
accuracy_drop percentage points below the float32 model (``pp`` or ``%`` optional).

A bound's *violation* is the relative excess ``(value - bound) / |bound|`` (the other way round for a
lower bound; unscaled when the bound is 0): zero or less is feasible, which is Optuna's convention for
``trial.set_constraint``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from picojoule.errors import PicojouleError
from picojoule.search.baselines import BASELINE_RE, baseline_bits
from picojoule.search.metrics import METRICS

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(<=|>=|<|>|=<|=>)\s*(.+?)\s*$")
_ABSOLUTE_RE = re.compile(rf"^({_NUM})\s*((?:[A-Za-zµμ%][A-Za-zµμ%0-9²]*)?)$")
_RELATIVE_RE = re.compile(rf"^(?:({_NUM})\s*(?:\*|x|×)\s*)?([A-Za-z_]\w*)$")

_SI = {"": 1.0, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "μ": 1e-6, "n": 1e-9, "p": 1e-12}
UNITS: dict[str, dict[str, float]] = {
    "energy": {f"{p}J": s for p, s in _SI.items()},
    "latency": {f"{p}s": s for p, s in _SI.items() if p != "p"},
    "size": {"B": 1.0, "bytes": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2.0**10, "MiB": 2.0**20,
             "GiB": 2.0**30},
    "co2e": {"g": 1.0, "mg": 1e-3, "ug": 1e-6, "µg": 1e-6, "μg": 1e-6, "kg": 1e3},
    "macs": {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9},
    "params": {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9},
    "accuracy": {"": 1.0, "%": 0.01},
    "accuracy_drop": {"": 1.0, "pp": 1.0, "%": 1.0},
    "area": {"mm2": 1.0, "mm²": 1.0, "um2": 1e-6, "µm2": 1e-6, "cm2": 100.0},
    "power": {f"{p}W": s for p, s in _SI.items() if p != "p"},
}
#: metrics whose absolute bound must carry a unit (a bare number would be ambiguous)
_UNIT_REQUIRED = ("energy", "latency", "size", "co2e", "area", "power")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``: bound = ``value`` (absolute, SI units) or ``factor`` x baseline ``baseline``."""

    text: str  # canonical form, also the constraint's key in the journal
    metric: str
    upper: bool  # True for <= (an upper bound), False for >=
    value: float | None = None
    factor: float = 1.0
    baseline: str | None = None

    @property
    def needs_accuracy(self) -> bool:
        return METRICS[self.metric].needs_accuracy

    def bound(self, baselines: Mapping[str, Mapping[str, float]]) -> float:
        """The bound in SI units, given each named baseline's metrics."""
        if self.baseline is None:
            assert self.value is not None
            return self.value
        return self.factor * float(baselines[self.baseline][self.metric])

    def violation(self, value: np.ndarray | float, bound: float) -> np.ndarray:
        """Relative excess over the bound: <= 0 where it holds."""
        scale = abs(bound) if bound != 0 else 1.0
        excess = (np.asarray(value, dtype=float) - bound) if self.upper else (bound - np.asarray(value, dtype=float))
        return excess / scale


def parse_constraint(text: str, where: str = "constraint") -> Constraint:
    """Parse one constraint string; a one-line PicojouleError naming ``where`` if it is malformed."""
    if not isinstance(text, str):
        raise PicojouleError(f"{where}: expected a string like 'energy <= 0.5 * uniform_int8', got {text!r}")
    m = _CONSTRAINT_RE.match(text)
    if not m:
        raise PicojouleError(f"{where}: '{text}': expected '<metric> <= <bound>' or '<metric> >= <bound>', "
                             "e.g. 'energy <= 0.5 * uniform_int8' or 'latency <= 2 ms'")
    metric, op, rhs = m.groups()
    if metric not in METRICS:
        raise PicojouleError(f"{where}: '{text}': unknown metric '{metric}' (expected one of {', '.join(METRICS)})")
    upper = op in ("<=", "<", "=<")
    if metric == "accuracy" and upper or metric != "accuracy" and not upper:
        want = ">=" if metric == "accuracy" else "<="
        raise PicojouleError(f"{where}: '{text}': {metric} takes a {'lower' if want == '>=' else 'upper'} bound "
                             f"('{metric} {want} ...')")
    if (rel := _RELATIVE_RE.match(rhs)) and BASELINE_RE.match(rel.group(2)):
        factor = float(rel.group(1)) if rel.group(1) else 1.0
        baseline = rel.group(2)
        baseline_bits(baseline)  # range check of the widths
        if metric == "accuracy_drop":
            raise PicojouleError(f"{where}: '{text}': accuracy_drop is measured from fp32 in percentage points; "
                                 "give a number, e.g. 'accuracy_drop <= 0.5'")
        if factor <= 0:
            raise PicojouleError(f"{where}: '{text}': the factor of a baseline must be positive, got {factor:g}")
        canonical = f"{metric} {'<=' if upper else '>='} {factor:g} * {baseline}"
        return Constraint(canonical, metric, upper, None, factor, baseline)
    if rel and not _ABSOLUTE_RE.match(rhs):
        raise PicojouleError(f"{where}: '{text}': unknown baseline '{rel.group(2)}' (expected fp32, "
                             "fp16, uniform_int<N> or uniform_w<N>a<M>)")
    absolute = _ABSOLUTE_RE.match(rhs)
    if not absolute:
        raise PicojouleError(f"{where}: '{text}': cannot read the bound '{rhs}': expected a number with a unit "
                             "or '<factor> * <baseline>'")
    number, unit = float(absolute.group(1)), absolute.group(2)
    units = UNITS[metric]
    if unit not in units or (unit == "" and metric in _UNIT_REQUIRED):
        raise PicojouleError(f"{where}: '{text}': {metric} needs a unit: one of "
                             f"{', '.join(u or '(none)' for u in units)}")
    canonical = f"{metric} {'<=' if upper else '>='} {number:g}{(' ' + unit) if unit else ''}"
    return Constraint(canonical, metric, upper, number * units[unit])


@dataclass(frozen=True)
class ConstraintProgram:
    """The parsed constraints of one search."""

    constraints: tuple[Constraint, ...] = ()

    @classmethod
    def parse(cls, texts: Sequence[str], where: str = "constraints") -> ConstraintProgram:
        parsed = tuple(parse_constraint(t, f"{where}[{i}]") for i, t in enumerate(texts))
        seen: set[str] = set()
        for i, c in enumerate(parsed):
            if c.text in seen:
                raise PicojouleError(f"{where}[{i}]: '{c.text}' is given twice")
            seen.add(c.text)
        return cls(parsed)

    def __len__(self) -> int:
        return len(self.constraints)

    def __iter__(self):
        return iter(self.constraints)

    @property
    def keys(self) -> list[str]:
        return [c.text for c in self.constraints]

    @property
    def baselines(self) -> list[str]:
        """The baselines the bounds refer to, in order of first mention."""
        return list(dict.fromkeys(c.baseline for c in self.constraints if c.baseline))

    @property
    def needs_accuracy(self) -> bool:
        return any(c.needs_accuracy for c in self.constraints)

    @property
    def hardware(self) -> list[Constraint]:
        """The constraints the cost model alone decides (no accuracy)."""
        return [c for c in self.constraints if not c.needs_accuracy]

    @property
    def accuracy_baselines(self) -> list[str]:
        """Baselines whose accuracy a bound needs."""
        return list(dict.fromkeys(c.baseline for c in self.constraints if c.baseline and c.needs_accuracy))

    def bounds(self, baselines: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Each constraint's bound in SI units."""
        return {c.text: c.bound(baselines) for c in self.constraints}

    def violations(self, metrics: Mapping[str, np.ndarray | float], bounds: Mapping[str, float],
                   hardware_only: bool = False) -> dict[str, np.ndarray]:
        """Violation of each constraint (or each hardware one) for the given metric values (scalars or (N,))."""
        return {c.text: c.violation(metrics[c.metric], bounds[c.text])
                for c in (self.hardware if hardware_only else self.constraints)}


def all_hold(violations: Mapping[str, np.ndarray | float]) -> np.ndarray:
    """Where every violation is <= 0 (True when there are none)."""
    values = [np.asarray(v) <= 0 for v in violations.values()]
    return np.logical_and.reduce(values) if values else np.asarray(True)
