"""A real two-node Ray cluster on one machine, for tests: a head and a second raylet (`ray start
--head` + `ray start --address=...`), each with its own CPUs, object store and a custom resource
naming it, so actors land on two nodes and objects move between them. Stopping it (or losing the
second node) kills only the processes it started -- matched by its own temp dir and GCS port, and
their descendants -- never another Ray on the machine (`ray stop` would kill every one)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent  # the ray and python of the environment the tests run in


def _free_base(span: int = 80) -> int:
    """A base port with `span` free ports above it (probed, not reserved)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("", 0))
            base = s.getsockname()[1]
        if base + span < 65000 and all(_free(base + i) for i in range(0, span, 7)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
            return True
        except OSError:
            return False


def _ports(base: int) -> list[str]:
    return [f"--node-manager-port={base}", f"--object-manager-port={base + 1}",
            f"--dashboard-agent-listen-port={base + 2}", f"--dashboard-agent-grpc-port={base + 3}",
            f"--runtime-env-agent-port={base + 4}", f"--metrics-export-port={base + 5}",
            f"--min-worker-port={base + 10}", f"--max-worker-port={base + 70}"]


@dataclass
class TwoNodes:
    head_cpus: int = 2
    node2_cpus: int = 2
    object_store_bytes: int = 300_000_000
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="c2n", dir="/tmp")))  # short: socket paths
    gcs_port: int = 0
    bases: dict = field(default_factory=dict)
    env: dict = field(default_factory=lambda: {**os.environ, "RAY_AUTH_MODE": "disabled"})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self) -> "TwoNodes":
        self.env.pop("RAY_ADDRESS", None)
        self.gcs_port = _free_base(4)
        self.bases = {"head": _free_base(), "node2": _free_base()}
        self._ray("start", "--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
                  '--resources={"cropi_head": 1}', "--include-dashboard=false", f"--ray-client-server-port={self.bases['head'] + 6}",
                  *_ports(self.bases["head"]))
        self.start_node2()
        return self

    def start_node2(self) -> None:
        self._ray("start", f"--address={self.address}", f"--num-cpus={self.node2_cpus}",
                  '--resources={"cropi_node2": 1}', *_ports(self.bases["node2"]))
        self.wait_nodes(2)

    def _ray(self, *args: str) -> None:
        out = subprocess.run([str(BIN / "ray"), *args, f"--temp-dir={self.tmp}", "--disable-usage-stats",
                              f"--object-store-memory={self.object_store_bytes}"],
                             env=self.env, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def alive_nodes(self) -> list[dict]:
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))" % self.address)
        out = subprocess.run([str(BIN / "python"), "-c", code], env=self.env, capture_output=True, text=True,
                             timeout=120)
        import json

        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []

    def wait_nodes(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.alive_nodes()) == n:
                return
            time.sleep(1.0)
        raise RuntimeError(f"the cluster at {self.address} did not reach {n} live nodes in {timeout:.0f} s")

    def _mine(self) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["cmdline"]):
            c = " ".join(p.info["cmdline"] or [])
            if str(self.tmp) in c or f":{self.gcs_port}" in c:
                out.append(p)
        return out

    def node2_processes(self) -> list[psutil.Process]:
        """The second node's raylet and everything under it (its workers and agents)."""
        flag = f"--node_manager_port={self.bases['node2']}"
        raylets = [p for p in self._mine() if flag in " ".join(p.cmdline())]
        return [q for r in raylets for q in [r, *r.children(recursive=True)]]

    def kill_node2(self) -> list[int]:
        """Lose the second node: SIGKILL its raylet and every process under it at once."""
        procs = self.node2_processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        return [p.pid for p in procs]

    def stop(self) -> None:
        procs = self._mine()
        procs += [c for p in procs for c in _children(p)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
