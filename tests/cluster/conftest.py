"""A real multi-node Ray cluster on one host, as README's "Search on a Ray cluster" runs one:
a head with no CPUs (the driver, the object store copy of the data, the dashboard when the
`cluster` extra is installed) and two worker nodes that run the trials.

Each node is a `ray start --block` in its own session, with its own ports (two raylets on one
host must not share a node-manager, object-manager, agent or worker port) and one CPU, so two
concurrent trials land on different nodes. Each node has its own temp dir under one short
root (a session folder per node, as on separate machines). Teardown stops exactly the
processes started here (their sessions, then anything still running from our temp dirs),
never `ray stop`, which would stop every Ray on the host.

Token auth is on as on the real cluster, with a throw-away token passed in the environment
(RAY_AUTH_TOKEN), so nothing is written to ~/.ray.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from testkit import stop_group

RAY = str(Path(sys.executable).with_name("ray"))
WORKER_CPUS = 1
WORKER_PORTS = 40  # worker processes per node (trial actors, the driver, job supervisors)
OBJECT_STORE_BYTES = 150 * 2**20


def _has_dashboard() -> bool:
    """Ray's own test for `ray[default]` (the dashboard and job server)."""
    from ray._private.utils import get_dashboard_dependency_error

    return get_dashboard_dependency_error() is None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


_TAKEN: set[int] = set()  # handed out in this session: worker ports are bound only when used


def free_ports(n: int) -> list[int]:
    """n consecutive free ports, away from the kernel's ephemeral range and Ray's defaults
    (worker ports 10002-19999), so no other component's random port falls among them."""
    for _ in range(500):
        base = random.randrange(20000, 32000 - n)
        block = range(base, base + n)
        if not _TAKEN.intersection(block) and all(_port_free(p) for p in block):
            _TAKEN.update(block)
            return list(block)
    raise RuntimeError(f"no {n} consecutive free ports")


NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


def _node_ports() -> list[str]:
    """Options that give one node its own ports: two raylets on one host share none."""
    ports = free_ports(len(NODE_PORTS) + WORKER_PORTS)
    workers = ports[len(NODE_PORTS):]
    return [*(f"{k}={v}" for k, v in zip(NODE_PORTS, ports, strict=False)),
            f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[-1]}"]


@dataclass
class Node:
    """One `ray start --block` process (a session leader) and its log."""

    name: str
    process: subprocess.Popen
    log: Path

    def raylet(self) -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name() == "raylet":
                        return child
        return None

    @property
    def node_id(self) -> str:
        raylet = self.raylet()
        assert raylet is not None, f"{self.name} has no raylet:\n{self.log.read_text()}"
        flags = dict(a.split("=", 1) for a in raylet.cmdline() if a.startswith("--node_id="))
        return flags["--node_id"]

    def alive(self) -> bool:
        return self.process.poll() is None and self.raylet() is not None

    def stop(self) -> None:
        stop_group(self.process, wait=10)  # `ray start --block` stops its node


@dataclass
class LocalCluster:
    root: Path  # holds each node's --temp-dir: short, Ray's socket paths stay under 108 bytes
    token: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    port: int = field(default_factory=lambda: free_ports(1)[0])
    dashboard_port: int = field(default_factory=lambda: free_ports(1)[0])
    dashboard: bool = field(default_factory=_has_dashboard)  # for `ray job submit`
    head: Node | None = None
    workers: list[Node] = field(default_factory=list)
    _count: int = 0

    @property
    def address(self) -> str:
        """The GCS address, as `ecgtune search --address` takes it."""
        from ray.util import get_node_ip_address

        return f"{get_node_ip_address()}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Environment of every node and client: the venv first on PATH (the job's entry
        point runs `ecgtune` from it), token auth with our token, no usage stats."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "MLFLOW_TRACKING_"))}
        env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_USAGE_STATS_ENABLED="0", PYTHONSAFEPATH="1")
        return env

    def _start(self, name: str, args: list[str]) -> Node:
        log = self.root / f"{name}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [RAY, "start", "--block", "--disable-usage-stats",
                 f"--object-store-memory={OBJECT_STORE_BYTES}", *_node_ports(), *args],
                stdout=out, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root,
                start_new_session=True,
            )
        node = Node(name, process, log)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text() or node.raylet() is None:
            if process.poll() is not None or time.monotonic() > deadline:
                node.stop()
                raise RuntimeError(f"{name} did not start:\n{log.read_text()}")
            time.sleep(0.5)
        return node

    def start_head(self) -> None:
        dashboard = [f"--include-dashboard={self.dashboard}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}"]
        (self.root / "head").mkdir()
        self.head = self._start("head", [
            "--head", f"--port={self.port}", "--num-cpus=0", f"--temp-dir={self.root / 'head'}",
            *dashboard, *self._client_server(),
        ])

    @staticmethod
    def _client_server() -> list[str]:
        """Ray Client's server (default port 10001) starts when its dependencies are there."""
        from ray._private.utils import get_ray_client_dependency_error

        if get_ray_client_dependency_error() is not None:
            return []
        return [f"--ray-client-server-port={free_ports(1)[0]}"]

    def add_worker(self) -> Node:
        self._count += 1
        name = f"worker{self._count}"
        (self.root / name).mkdir()
        node = self._start(name, [
            f"--address={self.address}", f"--num-cpus={WORKER_CPUS}",
            # Its own session folder, as on its own machine: nodes sharing one would share
            # runtime_resources/, where each node's runtime-env agent deletes the job's
            # working_dir once it no longer needs it, under the feet of the others.
            f"--temp-dir={self.root / name}",
        ])
        self.workers.append(node)
        return node

    def live_workers(self) -> list[Node]:
        return [w for w in self.workers if w.alive()]

    def ensure_workers(self, n: int = 2) -> list[Node]:
        """n live worker nodes (a test may have killed one)."""
        while len(self.live_workers()) < n:
            self.add_worker()
        return self.live_workers()[:n]

    def worker_of(self, node_id: str) -> Node:
        return next(w for w in self.workers if w.alive() and w.node_id == node_id)

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            node.stop()
        # Workers the raylets started and anything else that outlived its node: every such
        # process names our temp dir (its session dir) on its command line.
        root = str(self.root)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.pid != os.getpid() and any(root in a for a in proc.info["cmdline"] or ()):
                    proc.kill()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="ecgr")))
    try:
        cluster.start_head()
        cluster.ensure_workers(2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def cluster(ray_cluster: LocalCluster) -> LocalCluster:
    """The module's cluster with two live worker nodes."""
    ray_cluster.ensure_workers(2)
    return ray_cluster


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred synthetic records, prepared: seconds per tiny epoch on one CPU."""
    from ecgtune.data_prep import prepare, synthesize

    records = tmp_path_factory.mktemp("cluster-records")
    synthesize(records, 400, seed=3, workers=1)
    out = tmp_path_factory.mktemp("cluster-data")
    prepare(records, out, workers=1, shard_size=200, progress=False)
    return out
