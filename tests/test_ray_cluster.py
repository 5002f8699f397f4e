"""``ray_address`` against a real two-node Ray cluster on this machine, one of whose nodes dies mid-search."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from picojoule.search.engine import run_search
from picojoule.search.journal import TrialRecord

from test_search import DIGITS, REPO

# Linux: Ray runs multi-node clusters there only, and the nodes' processes are found in /proc.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a multi-node Ray cluster needs Linux")]

# The digits CNN, with a hook in its forward for the test to run the nodes by: node_b's forwards touch PJ_BUSY_MARK,
# and once PJ_BUSY_MARK.hold exists one touches PJ_BUSY_MARK.held and waits there until node_b is killed; node_a's
# forwards wait until PJ_BUSY_MARK exists (node_a's worker starts first and would otherwise take every trial).
_MARKED_MODEL = '''
import os
import time
from pathlib import Path

import torch

from picojoule.digits import DigitsCNN, pretrained_digits_cnn


class MarkedDigits(DigitsCNN):
    def forward(self, x):
        mark = os.environ.get("PJ_BUSY_MARK")
        while os.environ.get("PJ_AFTER_MARK") and not os.path.exists(os.environ["PJ_AFTER_MARK"]):
            time.sleep(0.01)
        if mark:
            Path(mark).touch()
            if os.path.exists(mark + ".hold"):
                Path(mark + ".held").touch()
                while True:
                    time.sleep(1)
        return super().forward(x)


def build(weights=None):
    model, _, test = pretrained_digits_cnn(progress=False)
    marked = MarkedDigits()
    marked.load_state_dict(model.state_dict())
    return marked.eval(), torch.zeros(1, *test.image_shape)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (a node's ``ray start`` and everything it started; Ray's workers
    make their own process groups, but stay in the session)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getsid(int(entry.name)) == sid:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(entry.name))
        except (OSError, IndexError):
            pass  # gone meanwhile
    return out


def _kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL a node: every process in the session its ``ray start --block`` leads. ``ray stop`` is no way to
    stop one node (it stops every Ray process of the machine's user, other clusters included)."""
    for pid in _session(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


class Cluster:
    """A head and a second node, each a ``ray start --block`` in its own session with its own temp dir, ports,
    1 CPU and a custom resource (``node_a``, ``node_b``) that tells them apart, on loopback addresses of their
    own (``--node-ip-address`` 127.0.0.2 and 127.0.0.3: Ray rewrites 127.0.0.1 to the host's own address), so no
    traffic goes to any other address."""

    def __init__(self, root: Path, pythonpath: str, **env: str):
        self.port = _free_port()
        self.address = f"127.0.0.2:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
        self.root, self.nodes, self.temps = root, {}, []
        self.start("node_a", "127.0.0.2", "--head", f"--port={self.port}", "--include-dashboard=false",
                   f"--dashboard-port={_free_port()}", **env)

    def start(self, name: str, ip: str, *args: str, **env: str) -> None:
        # Two raylets on one host: each needs its own temp dir (short: Unix socket paths are limited) and ports.
        temp = tempfile.mkdtemp(prefix=f"pj-{name}-")
        self.temps.append(temp)
        ports = ["node-manager", "object-manager", "metrics-export", "dashboard-agent-listen",
                 "dashboard-agent-grpc", "runtime-env-agent"]
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", *args, "--num-cpus=1",
               f'--resources={{"{name}": 1}}', f"--temp-dir={temp}", f"--object-store-memory={80 * 2**20}",
               "--disable-usage-stats", f"--node-ip-address={ip}", *(f"--{p}-port={_free_port()}" for p in ports)]
        log = open(self.root / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(cmd, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def wait_for(self, name: str, timeout: float = 90) -> None:
        """Until ``ray start`` says the node is up (it has registered with the head by then)."""
        deadline, log = time.monotonic() + timeout, self.root / f"{name}.log"
        while "Ray runtime started." not in log.read_text():
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray node {name} did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def close(self) -> None:
        for proc in self.nodes.values():
            _kill_node(proc)
        for temp in self.temps:
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    pytest.importorskip("ray")
    (tmp_path / "marked_digits.py").write_text(_MARKED_MODEL)
    busy = str(tmp_path / "b-busy")  # the nodes' workers import this checkout's picojoule and the marked model
    c = Cluster(tmp_path, f"{REPO}{os.pathsep}{tmp_path}", PJ_AFTER_MARK=busy)
    try:
        c.wait_for("node_a")
        c.start("node_b", "127.0.0.3", f"--address={c.address}", PJ_BUSY_MARK=busy)
        c.wait_for("node_b")
        yield c
    finally:
        c.close()


def test_search_on_a_two_node_cluster_survives_losing_a_node(cluster: Cluster, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray_address`` joins the cluster; the workers spread over both nodes; once both have measured trials,
    node_b is killed mid-evaluation: its policy is measured again on node_a, nothing finished is lost, and the
    search spends its budget on node_a alone (the worker node_b's replacement waits for is given up)."""
    import optuna
    import ray
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.syspath_prepend(str(tmp_path))
    busy = tmp_path / "b-busy"
    nodes: dict[str, str] = {}
    addresses: set[str] = set()
    finished: list[TrialRecord] = []
    before_kill: list[TrialRecord] = []
    killed = threading.Event()

    def kill_b_when_busy() -> None:
        deadline = time.monotonic() + 60
        while not Path(f"{busy}.held").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        before_kill.extend(finished)  # what the driver had finished when node_b died
        _kill_node(cluster.nodes["node_b"])
        killed.set()

    def callback(record: TrialRecord) -> None:
        if not nodes:
            nodes.update({name: n["NodeID"] for n in ray.nodes() for name in ("node_a", "node_b")
                          if name in n["Resources"]})
            addresses.update(n["NodeManagerAddress"] for n in ray.nodes())
        finished.append(record)
        both = {nodes["node_a"], nodes["node_b"]} <= {r.node for r in finished}
        if both and not killer.is_alive() and not killed.is_set():
            Path(f"{busy}.hold").touch()  # node_b's next forward stops there until it is killed
            killer.start()

    killer = threading.Thread(target=kill_b_when_busy, daemon=True)
    config = {**DIGITS, "model": "marked_digits:build", "data": "digits", "trials": 12,
              "strategy_options": {"population_size": 6}, "workers": 2, "ray_address": cluster.address}
    t = time.monotonic()
    res = run_search(config, tmp_path / "run", progress=False, callbacks=[callback])
    seconds = time.monotonic() - t
    assert killed.is_set() and cluster.nodes["node_b"].poll() is not None and sorted(nodes) == ["node_a", "node_b"]
    assert addresses == {"127.0.0.2", "127.0.0.3"}  # both nodes on loopback

    study = optuna.load_study(study_name="picojoule",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "run" / "journal.log"))))
    trials = {t.number: t for t in study.get_trials()}
    measured = {n: t.user_attrs["node"] for n, t in trials.items() if "eval_seconds" in t.user_attrs}
    assert measured == {r.number: r.node for r in res.records if r.node}  # the journal's attribute, read back
    assert set(measured.values()) == {nodes["node_a"], nodes["node_b"]}  # both nodes measured trials
    # the trial node_b was measuring when it died: measured again, on node_a
    retried = [n for n, t in trials.items() if t.user_attrs.get("worker_died")]
    assert len(retried) == 1 and measured[retried[0]] == nodes["node_a"]
    assert trials[retried[0]].state.name == "COMPLETE" and retried[0] not in {r.number for r in before_kill}
    # nothing finished is lost: every trial finished before the kill is in the journal as it was
    by_number = {r.number: r for r in res.records}
    assert {r.node for r in before_kill} >= {nodes["node_a"], nodes["node_b"]}
    for r in before_kill:
        assert (by_number[r.number].state, by_number[r.number].key, by_number[r.number].node) == (r.state, r.key, r.node)
        # (a front member gains test_accuracy after the search: the test split is measured once, at the end)
        kept = {k: v for k, v in by_number[r.number].metrics.items() if k != "test_accuracy"}
        assert kept == pytest.approx(r.metrics, nan_ok=True)
    # the budget is spent, nothing failed, and after the kill only node_a measured
    assert sum(r.counted for r in res.records) == 12 and all(r.state == "complete" for r in res.records)
    after = [r.node for r in finished[len(before_kill):] if r.node]
    assert after and set(after) == {nodes["node_a"]}
    print(f"\n{seconds:.1f} s search; measured on: "
          + ", ".join(f"{name} {sum(v == nid for v in measured.values())}" for name, nid in nodes.items()))
