"""Accuracy evaluations on Ray actors (``workers: N``), driven by the same ask/tell loop.

Each actor receives the model, the layer graph and the data once (through Ray's object store, so a cluster's
nodes need no copy of the files) and then evaluates one policy per call. ``ray.init`` starts a local Ray
(``num_cpus=workers``, no dashboard, ``RAY_AUTH_MODE=disabled`` unless set) or joins ``ray_address``.
Tested with ray 2.60.0. On a cluster every node needs picojoule installed, and the module of a
``package.module:function`` model importable.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from picojoule.errors import PicojouleError
from picojoule.search.executors import Outcome, safe_evaluate
from picojoule.search.problem import Evaluator, Problem
from picojoule.policy import Policy


class EvaluatorActor:
    """Holds one :class:`Evaluator` (model, data and metric sent once) and evaluates policies on request."""

    def __init__(self, evaluator: Evaluator, threads: int = 1):
        torch.set_num_threads(threads)
        self.evaluator = evaluator

    def evaluate(self, policy: Policy) -> tuple[dict[str, Any] | None, str | None]:
        return safe_evaluate(self.evaluator, policy)


def _import_ray(source: str) -> Any:
    try:
        import ray
    except ImportError:
        raise PicojouleError(f"{source}: field 'workers': evaluating on workers needs Ray: "
                             "pip install 'ray==2.60.0'") from None
    return ray


def init_ray(workers: int, address: str | None, source: str) -> bool:
    """Join ``address``, or start a local Ray for ``workers`` CPUs (no dashboard, token auth off), unless Ray is
    already up; returns whether this call started it (and so should shut it down)."""
    ray = _import_ray(source)
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters enable token auth by default
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


class RayExecutor:
    """``workers`` actors; ``submit`` hands a policy to an idle one, ``collect`` waits for the first result.

    A worker that dies mid-evaluation (killed, out of memory, a crash in native code) is replaced and its policy
    evaluated once more on the fresh worker (the result says ``worker_died``); if that worker dies too, the trial
    fails with the reason and the search goes on."""

    def __init__(self, problem: Problem, workers: int, address: str | None = None):
        self._started = init_ray(workers, address, problem.source)
        ray = self.ray = _import_ray(problem.source)
        self._actor_cls = ray.remote(num_cpus=1)(EvaluatorActor)
        self._args = (ray.put(problem.evaluator()),)
        self.capacity = workers
        self._idle = [self._actor_cls.remote(*self._args) for _ in range(workers)]
        self._futures: dict[Any, tuple[Any, Any, Policy, int]] = {}  # ref -> (tag, actor, policy, deaths so far)

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def submit(self, tag: Any, policy: Policy, deaths: int = 0) -> None:
        actor = self._idle.pop()
        self._futures[actor.evaluate.remote(policy)] = (tag, actor, policy, deaths)

    def collect(self) -> list[Outcome]:
        """Finished evaluations (at least one unless a worker died and its policy was resubmitted)."""
        if not self._futures:
            return []
        ready, _ = self.ray.wait(list(self._futures), num_returns=1)
        out = []
        for ref in ready:
            tag, actor, policy, deaths = self._futures.pop(ref)
            try:
                result, error = self.ray.get(ref)
                self._idle.append(actor)
                if result is not None and deaths:
                    result["worker_died"] = deaths
            except self.ray.exceptions.RayError as e:  # the actor died: replace it, retry the policy once
                self.ray.kill(actor)
                self._idle.append(self._actor_cls.remote(*self._args))
                if deaths == 0:
                    self.submit(tag, policy, deaths=1)
                    continue
                text = str(e).strip().splitlines()[0] if str(e).strip() else ""
                result, error = None, f"the worker died twice evaluating this policy ({type(e).__name__}: {text})"
            out.append((tag, result, error))
        return out

    def close(self) -> None:
        for _, actor, _, _ in self._futures.values():
            self.ray.kill(actor)
        for actor in self._idle:
            self.ray.kill(actor)
        self._futures.clear()
        self._idle.clear()
        if self._started:
            self.ray.shutdown()
