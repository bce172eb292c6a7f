"""A local Redis Cluster for the tests: three masters from the embedded server binary,
slots split evenly, no replicas; started once per session, stopped at its end."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from app.embedded_redis import free_port, server_binary

SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens this far above its port


@dataclass
class LocalCluster:
    root: Path
    masters: int = 3
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> LocalCluster:
        self.ports = [_cluster_port() for _ in range(self.masters)]
        for port in self.ports:
            home = self.root / f"node-{port}"
            home.mkdir(parents=True)
            self.processes.append(subprocess.Popen([
                str(server_binary()), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(home), "--save", "", "--appendonly", "no",
                "--logfile", str(home / "log"), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            ], start_new_session=True))  # fmt: skip
        nodes = [Redis(port=port, decode_responses=True) for port in self.ports]
        self._wait(lambda: all(node.ping() for node in nodes))
        share = SLOTS // self.masters
        for i, node in enumerate(nodes):
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * share - 1
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        for node in nodes[1:]:
            node.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
        self._wait(lambda: all(_ok(node, self.masters) for node in nodes))
        for node in nodes:
            node.close()
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(timeout=10)

    def _wait(self, ready: object, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the local cluster did not come up; logs in {self.root}")


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 above) is free too and exists."""
    while True:
        port = free_port()
        if port + BUS_OFFSET <= 65535 and _free(port + BUS_OFFSET):
            return port


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ok(node: Redis, masters: int) -> bool:
    info = node.execute_command("CLUSTER", "INFO")
    known = node.execute_command("CLUSTER", "NODES").count("master")
    return "cluster_state:ok" in info and known >= masters
