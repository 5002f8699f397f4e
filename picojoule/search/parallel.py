"""Accuracy evaluations on Ray actors (``workers: N``), driven by the same ask/tell loop.

Each actor receives the model, the layer graph and the data once (through Ray's object store, so a cluster's
nodes need no copy of the files) and then evaluates one policy per call. ``ray.init`` starts a local Ray
(``num_cpus=workers``, no dashboard, ``RAY_AUTH_MODE=disabled`` unless set) or joins ``ray_address``.
Tested with ray 2.60.0. On a cluster every node needs picojoule installed, and the module of a
``package.module:function`` model importable.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
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

    def node(self) -> str:
        """The id of the Ray node this actor lives on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def evaluate(self, policy: Policy) -> tuple[dict[str, Any] | None, str | None]:
        result, error = safe_evaluate(self.evaluator, policy)
        if result is not None:
            result["node"] = self.node()  # the trial records where it was measured
        return result, error


def _import_ray(source: str) -> Any:
    try:
        import ray
    except ImportError:
        raise PicojouleError(f"{source}: field 'workers': evaluating on workers needs Ray: "
                             "pip install 'ray==2.60.0'") from None
    return ray


#: the address of a local Ray runtime: on loopback, so that it takes no network interface. Ray rewrites 127.0.0.1
#: (and "localhost") to the host's own address on Linux, not the rest of 127.0.0.0/8.
LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else None


def _loopback_host(address: str) -> str | None:
    """The host of ``address`` (HOST:PORT) if it is a loopback IP address (then this driver's node is there too)."""
    try:
        host = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    except ValueError:
        return None
    return str(host) if host.is_loopback else None


def init_ray(workers: int, address: str | None, source: str) -> bool:
    """Join ``address``, or start a local Ray for ``workers`` CPUs on loopback (no dashboard, token auth off),
    unless Ray is already up; returns whether this call started it (and so should shut it down)."""
    ray = _import_ray(source)
    if ray.is_initialized():
        return False
    if address:
        node_ip = _loopback_host(address)  # a cluster on loopback: this driver's node is on loopback as well
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                 **({"_node_ip_address": node_ip} if node_ip else {}))
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters enable token auth by default
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 **({"_node_ip_address": LOCAL_NODE_IP} if LOCAL_NODE_IP else {}))
    return True


class RayExecutor:
    """``workers`` actors, spread over the cluster's nodes; ``submit`` hands a policy to an idle one, ``collect``
    waits for the first result.

    A worker that dies mid-evaluation (killed, out of memory, a crash in native code, its node lost) is replaced
    and its policy evaluated once more on the fresh worker (the result says ``worker_died``); if that worker dies
    too, the trial fails with the reason and the search goes on. A worker that is never placed (it died while
    starting, or the live nodes have fewer CPUs than this executor has workers, e.g. after a node died) is given up
    instead of waited for forever: the capacity shrinks by one and its policy goes to the next idle worker."""

    poll_s = 1.0  # while a worker is not yet placed: how often to check that the live cluster can place it

    def __init__(self, problem: Problem, workers: int, address: str | None = None):
        self._started = init_ray(workers, address, problem.source)
        ray = self.ray = _import_ray(problem.source)
        self._actor_cls = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(EvaluatorActor)
        self._args = (ray.put(problem.evaluator()),)
        self.source, self.capacity = problem.source, workers
        self._unplaced: dict[Any, Any] = {}  # actor -> ref of its first call (node()), until that call returned
        self._idle = [self._new_actor() for _ in range(workers)]
        self._futures: dict[Any, tuple[Any, Any, Policy, int]] = {}  # ref -> (tag, actor, policy, deaths so far)
        self._waiting: list[tuple[Any, Policy, int]] = []  # policies of given-up workers, for the next idle one

    def _new_actor(self) -> Any:
        actor = self._actor_cls.remote(*self._args)
        self._unplaced[actor] = actor.node.remote()
        return actor

    @property
    def in_flight(self) -> int:
        return len(self._futures) + len(self._waiting)

    def submit(self, tag: Any, policy: Policy, deaths: int = 0) -> None:
        if not self._idle:
            self._waiting.append((tag, policy, deaths))
            return
        actor = self._idle.pop()
        self._futures[actor.evaluate.remote(policy)] = (tag, actor, policy, deaths)

    def collect(self) -> list[Outcome]:
        """Finished evaluations (at least one unless a worker died and its policy was resubmitted)."""
        ready: list[Any] = []
        while self._futures and not ready:
            ready, _ = self.ray.wait(list(self._futures), num_returns=1,
                                     timeout=self.poll_s if self._unplaced else None)
            if not ready:
                self._fit_cluster()
        out = []
        for ref in ready:
            tag, actor, policy, deaths = self._futures.pop(ref)
            try:
                result, error = self.ray.get(ref)
                self._idle.append(actor)
                if result is not None and deaths:
                    result["worker_died"] = deaths
            except self.ray.exceptions.RayError as e:
                if not self._placed(actor):  # it never ran the policy: no death to count
                    self._waiting.append((tag, policy, deaths))
                    self._give_up(actor)
                    continue
                self.ray.kill(actor)  # it died evaluating: replace it, retry the policy once
                self._idle.append(self._new_actor())
                if deaths == 0:
                    self.submit(tag, policy, deaths=1)
                    continue
                text = str(e).strip().splitlines()[0] if str(e).strip() else ""
                result, error = None, f"the worker died twice evaluating this policy ({type(e).__name__}: {text})"
            out.append((tag, result, error))
        while self._waiting and self._idle:
            self.submit(*self._waiting.pop(0))
        return out

    def _placed(self, actor: Any) -> bool:
        """Whether ``actor`` started on a node (its first call returned)."""
        ref = self._unplaced.get(actor)
        if ref is None:
            return True
        if not self.ray.wait([ref], timeout=0)[0]:
            return False
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError:
            return False
        del self._unplaced[actor]
        return True

    def _fit_cluster(self) -> None:
        """Give up unplaced workers while this executor has more workers than the live nodes have CPUs."""
        for actor in list(self._unplaced):
            self._placed(actor)
        cpus = sum(n["Resources"].get("CPU", 0) for n in self.ray.nodes() if n["Alive"])
        while self._unplaced and self.capacity > cpus:
            actor = next(iter(self._unplaced))
            for ref, (tag, owner, policy, deaths) in list(self._futures.items()):
                if owner == actor:
                    del self._futures[ref]
                    self._waiting.append((tag, policy, deaths))
            self._give_up(actor)

    def _give_up(self, actor: Any) -> None:
        """One worker fewer: ``actor``, never placed, is killed (its policy, if any, already in ``_waiting``)."""
        del self._unplaced[actor]
        if actor in self._idle:
            self._idle.remove(actor)
        self.ray.kill(actor)
        self.capacity -= 1
        if self.capacity == 0:
            raise PicojouleError(f"{self.source}: field 'workers': no worker could start on a live node of the "
                                 "Ray cluster")

    def close(self) -> None:
        for _, actor, _, _ in self._futures.values():
            self.ray.kill(actor)
        for actor in self._idle:
            self.ray.kill(actor)
        self._futures.clear()
        self._idle.clear()
        self._waiting.clear()
        self._unplaced.clear()
        if self._started:
            self.ray.shutdown()
