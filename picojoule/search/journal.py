"""The run's memory: an Optuna study in ``JournalStorage`` on ``run_dir/"journal.log"`` (:class:`RunJournal`, a
``JournalFileBackend`` that Optuna's own tools and optuna-dashboard read as usual).

Every trial is stored with its knob indices as integer params (one per knob, named like the knob) and, as
user attributes, its ``metrics`` (SI units; accuracy null where it was not measured), whether it was
``evaluated`` for accuracy, and any ``error``; a policy proposed again carries ``duplicate_of`` (the trial that
first tried it; told that trial's result, not counted against the budget), and one drawn at random after a run of
repeats says so in ``drawn``. Study user attributes hold the baselines' metrics and ``test_accuracy`` (trial
number -> top-1 on the test split, measured once after the search for the Pareto front), read back as the
``test_accuracy`` metric, and ``finetuned`` (trial number -> the final fine-tune of a winner: its accuracy on both
splits afterwards, steps, seconds, weights file), read back as ``finetuned_accuracy`` and
``finetuned_test_accuracy``. Everything the reports show is read back from here, so a resumed run reports the trials
of every session.

A trial a killed process left RUNNING is failed on resume (a failed trial without an ``error`` is an
*interrupted* one), and its params are enqueued once more (``retry_of``); a retry that is interrupted
again is failed for good. The trial budget counts finished trials except interrupted ones.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._storage import JournalOperation  # the record kinds (optuna 5.0)
from optuna.trial import FrozenTrial, TrialState

from picojoule.errors import PicojouleError
from picojoule.policy import Policy
from picojoule.spaces.space import Space

STUDY_NAME = "picojoule"
#: study user attribute: trial number (as a string) -> accuracy on the test split
TEST_ACCURACY = "test_accuracy"
#: study user attribute: trial number (as a string) -> the final fine-tune of that winner (see final_finetune.py)
FINETUNED = "finetuned"
#: the metrics a final fine-tune adds to a winner: its accuracy on the validation and test splits afterwards
FINETUNED_ACCURACY, FINETUNED_TEST_ACCURACY = "finetuned_accuracy", "finetuned_test_accuracy"
#: what each such metric is read from in a FINETUNED entry
FINETUNED_METRICS = {FINETUNED_ACCURACY: "accuracy", FINETUNED_TEST_ACCURACY: "test_accuracy"}
JOURNAL = "journal.log"
_STATES = {TrialState.COMPLETE: "complete", TrialState.FAIL: "fail", TrialState.RUNNING: "running",
           TrialState.WAITING: "waiting", TrialState.PRUNED: "pruned"}


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO and warns that multivariate TPE is experimental: keep the bar readable
    while the block (or the decorated function) runs; Optuna's verbosity and the warnings filters are restored
    afterwards."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _repair_tail(path: Path) -> None:
    """Drop a half-written last line (a process killed mid-append) so that appends stay parseable."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class _RunLockHeld:
    """No per-write file lock: the search holds the run directory's own lock (``rundir.run_lock``), so no other
    process writes this journal (readers such as optuna-dashboard need no lock)."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class RunJournal(JournalFileBackend):
    """The run's journal file, written by the one process that holds the run's lock.

    Every append reaches the operating system at once (a killed process loses nothing); it is fsynced to disk
    when it finishes a trial, not after each of a trial's dozens of param records (a machine crash loses at most
    the trial that was running, which resume retries). Optuna's default locks and fsyncs every record, which
    made the journal, not the search, the bottleneck of cost-only trials.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, lock_obj=_RunLockHeld())  # type: ignore[arg-type]

    def append_logs(self, logs: Sequence[dict]) -> None:
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with open(self._file_path, "ab") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            if any(log.get("op_code") == JournalOperation.SET_TRIAL_STATE_VALUES for log in logs):
                os.fsync(f.fileno())


def open_study(run_dir: Path | None, directions: list[str], sampler: optuna.samplers.BaseSampler,
               resume: bool) -> optuna.Study:
    """Create the run's study, or load it to resume; ``run_dir`` None: a new study in memory."""
    if run_dir is None:
        return optuna.create_study(study_name=STUDY_NAME, storage=optuna.storages.InMemoryStorage(), sampler=sampler,
                                   directions=directions)
    path = run_dir / JOURNAL
    if resume:
        _repair_tail(path)
    storage = JournalStorage(RunJournal(str(path)))
    if not resume:
        return optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, directions=directions)
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
    except KeyError:
        raise PicojouleError(f"{path}: no picojoule study to resume") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise PicojouleError(f"{path}: the journal's objectives differ from the config's; start a new run")
    return study


def knob_distributions(space: Space) -> dict[str, IntDistribution]:
    """Each knob as an Optuna integer param over its choice indices."""
    return {k.name: IntDistribution(0, len(k.choices) - 1) for k in space.knobs}


def knob_params(space: Space, vec: np.ndarray) -> dict[str, int]:
    """A choice-index vector as Optuna params."""
    return {k.name: int(i) for k, i in zip(space.knobs, vec)}


@dataclass(eq=False)
class TrialRecord:
    """One trial as the journal holds it."""

    number: int
    state: str  # complete | fail | running | waiting
    vec: np.ndarray | None
    metrics: dict[str, float] = field(default_factory=dict)  # NaN where not measured
    constraints: dict[str, float] = field(default_factory=dict)  # violation of each bound (<= 0 holds)
    evaluated: bool = False
    error: str | None = None
    retry_of: int | None = None
    interrupted: bool = False
    warm_start: str | None = None
    node: str | None = None  # the id of the Ray node that measured it (workers: N)
    duplicate_of: int | None = None  # the trial that first tried this policy (this one is not counted)
    drawn: str | None = None  # why the engine drew this policy instead of the strategy
    #: an infeasible proposal the engine lowered onto the hardware bounds (``repair``): told, not counted; the
    #: lowered policy is measured as the next trial, whose ``repaired_from`` names this one
    repaired: bool = False
    repaired_from: int | None = None
    #: multi-fidelity: {"rung", "rungs", "accuracies" (one per rung reached), "images", "finetune_steps"}
    fidelity: dict | None = None
    screened: dict | None = None  # not measured: the accuracy predictor's {"predicted", "std", ...}
    policy: Policy | None = field(default=None, repr=False)  # set on a finished search's Pareto-front trials

    @property
    def full_fidelity(self) -> bool:
        """Whether its accuracy is the full measurement (the last rung), as a Pareto-front member's must be."""
        return self.fidelity is None or self.fidelity["rung"] == self.fidelity["rungs"] - 1

    @property
    def images(self) -> int:
        """Validation images its measurement read, over every rung (0: not measured, or by a metric callable)."""
        return int((self.fidelity or {}).get("images") or 0)

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.constraints.values())

    @property
    def counted(self) -> bool:
        """Whether this trial spends one of the budget's trials (a repeat of a tried policy does not)."""
        return (self.state in ("complete", "fail", "pruned") and not self.interrupted and self.duplicate_of is None
                and not self.repaired)

    @property
    def key(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self.vec) if self.vec is not None else ()


def finetuned_metrics(entry: dict | None) -> dict[str, float]:
    """The metrics a stored final fine-tune (a FINETUNED entry) gives its trial (NaN where not measured)."""
    if not entry:
        return {}
    return {m: math.nan if entry.get(k) is None else float(entry[k]) for m, k in FINETUNED_METRICS.items()}


def _record(trial: FrozenTrial, space: Space, tests: dict[str, float], tuned: dict[str, dict]) -> TrialRecord:
    attrs = trial.user_attrs
    names = [k.name for k in space.knobs]
    vec = np.asarray([trial.params[n] for n in names], dtype=np.int64) if all(n in trial.params for n in names) \
        else None
    metrics = {k: (math.nan if v is None else float(v)) for k, v in (attrs.get("metrics") or {}).items()}
    if str(trial.number) in tests:
        metrics[TEST_ACCURACY] = float(tests[str(trial.number)])
    metrics.update(finetuned_metrics(tuned.get(str(trial.number))))
    return TrialRecord(
        number=trial.number, state=_STATES.get(trial.state, trial.state.name.lower()), vec=vec, metrics=metrics,
        constraints=dict(trial.constraints), evaluated=bool(attrs.get("evaluated", False)), error=attrs.get("error"),
        retry_of=attrs.get("retry_of"), interrupted=trial.state == TrialState.FAIL and "error" not in attrs,
        warm_start=attrs.get("warm_start"), node=attrs.get("node"), duplicate_of=attrs.get("duplicate_of"),
        drawn=attrs.get("drawn"), fidelity=attrs.get("fidelity"),
        screened=attrs.get("screened"), repaired=bool(attrs.get("repaired")), repaired_from=attrs.get("repaired_from"))


def read_records(study: optuna.Study, space: Space) -> list[TrialRecord]:
    """Every trial of the study, in trial-number order (with its test accuracy and final fine-tune where they were
    measured)."""
    tests = study.user_attrs.get(TEST_ACCURACY) or {}
    tuned = study.user_attrs.get(FINETUNED) or {}
    return [_record(t, space, tests, tuned) for t in study.get_trials(deepcopy=False)]


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the trials a killed run left RUNNING; enqueue each once more unless it was a retry already.

    Returns the numbers of the trials re-enqueued.
    """
    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.user_attrs.get("retry_of") is None:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            retried.append(trial.number)
    return retried
