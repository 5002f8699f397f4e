"""Where accuracy evaluations run: in this process (``workers: 0``) or on Ray actors (``workers: N``).

Both take ``submit(tag, policy)`` while ``in_flight < capacity`` and hand back finished evaluations from
``collect()`` as ``(tag, result, error)``: ``result`` is the evaluator's dict, or None with ``error`` one line.
"""

from __future__ import annotations

import traceback
from collections import deque
from typing import Any, Protocol

from picojoule.search.problem import Evaluator, Job
from picojoule.policy import Policy

Outcome = tuple[Any, dict[str, Any] | None, str | None]


def safe_evaluate(evaluator: Evaluator, policy: Policy | Job) -> tuple[dict[str, Any] | None, str | None]:
    """The evaluator's result on a policy (its full measurement) or a :class:`Job` (a policy at a rung); or None and
    the error's first line (the trial then fails; the search goes on)."""
    try:
        return (policy(evaluator) if isinstance(policy, Job) else evaluator(policy)), None
    except Exception as e:  # any failure of one policy (a pruning the model cannot take, NaNs) fails its trial
        text = str(e).strip().splitlines()
        where = traceback.extract_tb(e.__traceback__)[-1]
        return None, f"{type(e).__name__}: {text[0] if text else ''} ({where.filename.split('/')[-1]}:{where.lineno})"


class Executor(Protocol):
    capacity: int

    @property
    def in_flight(self) -> int: ...

    def submit(self, tag: Any, policy: Policy) -> None: ...

    def collect(self) -> list[Outcome]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Evaluates one policy at a time, in this process, when collected."""

    capacity = 1

    def __init__(self, evaluator: Evaluator | None):
        self.evaluator = evaluator
        self._queue: deque[tuple[Any, Policy]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, tag: Any, policy: Policy) -> None:
        self._queue.append((tag, policy))

    def collect(self) -> list[Outcome]:
        if not self._queue:
            return []
        tag, policy = self._queue.popleft()
        assert self.evaluator is not None, "a search that measures no accuracy submits nothing"
        return [(tag, *safe_evaluate(self.evaluator, policy))]

    def close(self) -> None:
        self._queue.clear()
