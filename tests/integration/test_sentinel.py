"""The whole system on a ``redis+sentinel://`` URL: a real master, a replica and three
Sentinels (the server binary in Sentinel mode); the web, beat and a worker find the
master through the Sentinels, for the store, the broker and the rate limiter."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from app.core.keys import Keys
from app.core.records import Instance
from app.core.settings import Settings
from app.core.store import Store
from app.embedded_redis import free_port, server_binary
from tests.integration.conftest import Processes, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow

SERVICE = "sbsvc"
ARGUMENTS = {
    "recipients": ["a@example.com"],
    "headers": {"from": "s@example.com", "subject": "via sentinel"},
    "content": {"text/plain": "hello"},
}


@dataclass
class SentinelSet:
    """One master, one replica, three Sentinels monitoring them as ``SERVICE``."""

    root: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelSet:
        self._server("master", self.master_port)
        self._server(
            "replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port),
            "--enable-debug-command", "local",
        )  # fmt: skip
        for port in self.sentinel_ports:
            home = self.root / f"sentinel-{port}"
            home.mkdir(parents=True)
            conf = home / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {home}\nlogfile {home / 'log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            self._spawn([str(server_binary()), str(conf), "--sentinel"])
        if not wait_until(self._ready, timeout=30):
            self.stop()
            raise AssertionError("the Sentinels did not see the replica and each other")
        return self

    def _server(self, name: str, port: int, *extra: str) -> None:
        home = self.root / name
        home.mkdir(parents=True)
        self._spawn([
            str(server_binary()), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(home), "--save", "", "--appendonly", "no",
            "--logfile", str(home / "log"), *extra,
        ])  # fmt: skip

    def _spawn(self, command: list[str]) -> None:
        self.processes.append(subprocess.Popen(command, start_new_session=True))

    def _ready(self) -> bool:
        try:
            for port in self.sentinel_ports:
                sentinel = Redis(port=port, socket_timeout=1, decode_responses=True)
                master = sentinel.execute_command("SENTINEL", "MASTER", SERVICE)
                if (master["num-slaves"], master["num-other-sentinels"]) != ("1", "2"):
                    return False
            return True
        except Exception:
            return False

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path_factory.mktemp("sentinel")).start()
    yield servers
    servers.stop()


@pytest.fixture
def settings(sentinel_set: SentinelSet, tmp_path: Path) -> Settings:
    """This module's processes reach Redis only through the Sentinels."""
    name = f"sbsentinel-{uuid.uuid4().hex[:10]}"
    return Settings(
        redis_url=sentinel_set.url,
        key_prefix=name,
        queue=name,
        mail_url=f"maildir://{tmp_path / 'mail'}",
        allow_private_refs=True,
        redis_replicas=1,
    )


@pytest.fixture
def store(redis: Redis, settings: Settings) -> Store:
    """As the web builds it from these settings: its writes wait for a replica."""
    return Store(redis, Keys(settings.key_prefix), replicas=settings.redis_replicas)


def test_store_broker_and_rate_limiter_all_run_through_the_sentinels(
    sentinel_set: SentinelSet,
    settings: Settings,
    web: Web,
    processes: Processes,
    smtp: SmtpSink,
    store: Store,
) -> None:
    processes.worker()
    processes.beat()
    arguments = ARGUMENTS
    response = web.call("send_message", {"uid": "m1", "arguments": arguments})
    assert response.status_code == 200, response.get_json()
    sent_id = response.get_json()["data"]["message"]["id"]
    event = {"uid": "tick", "schedule": "every 1 secs", "metadata": {"arguments": arguments}}
    assert web.call("create_scheduled_event", event).status_code == 200

    received = smtp.wait_for(3, timeout=30)
    assert len(received) >= 3, processes.log_text()[-3000:]
    ids = {m.message["X-Sendbeat-Instance"] for m in received}
    assert sent_id in ids and len(ids) == len(received)  # the send, then the event's runs

    # Everything is on the master the Sentinels name, and replicated.
    master = Redis(port=sentinel_set.master_port, decode_responses=True)
    assert master.hget(store.keys.instance(sent_id), "status") == "succeeded"
    assert any(master.scan_iter(f"{store.keys.rate_limits}*"))  # the limiter's counters


def test_an_accepted_send_is_on_a_replica_before_the_api_answers(
    sentinel_set: SentinelSet, web: Web, store: Store
) -> None:
    replica = Redis(port=sentinel_set.replica_port, decode_responses=True)
    stalled = threading.Thread(target=replica.execute_command, args=("DEBUG", "SLEEP", "0.8"))
    stalled.start()
    time.sleep(0.1)  # the replica now takes nothing for 0.7 s more
    began = time.monotonic()
    response = web.call("send_message", {"uid": "durable", "arguments": ARGUMENTS})
    took = time.monotonic() - began
    stalled.join()

    assert response.status_code == 200, response.get_json()
    sent_id = response.get_json()["data"]["message"]["id"]
    assert took > 0.5  # the answer waited for the replica (WAIT), not just the master
    assert replica.exists(store.keys.instance(sent_id))


def test_after_the_master_dies_every_process_finds_the_new_one_on_its_own(
    sentinel_set: SentinelSet,
    web: Web,
    processes: Processes,
    smtp: SmtpSink,
    store: Store,
) -> None:
    worker = [processes.worker()]
    beat = processes.beat()
    tick = create(web, {"uid": "tick", "schedule": "every 1 secs"})
    pulse = create(web, {"uid": "pulse", "schedule": "every 1 hours", "overlap": "allow"})
    assert len(smtp.wait_for(2, timeout=20)) >= 2
    triggers: list[int] = []  # a stream of manual triggers, through the failover
    done = threading.Event()

    def keep_triggering() -> None:
        client = web.client.application.test_client()
        while not done.is_set():
            response = client.post(
                f"/api/unstable/schedules/{pulse}/trigger",
                headers={"Authorization": f"Bearer {web.key}"},
            )
            triggers.append(response.status_code)
            time.sleep(0.2)

    restarts: list[int] = []

    def supervise() -> None:
        """What the deployments do (Restart=on-failure, Heroku, Kubernetes): kombu's
        Redis transport can make a worker exit when its broker connection dies
        (docs/operations.md); it is started again, not by hand."""
        while not done.is_set():
            if worker[-1].poll() is not None:
                restarts.append(worker[-1].returncode)
                worker.append(processes.worker(name=f"worker-{len(restarts)}"))
            time.sleep(0.2)

    stream = threading.Thread(target=keep_triggering)
    supervisor = threading.Thread(target=supervise)
    stream.start()
    supervisor.start()
    time.sleep(1)

    # The module's last test: its Sentinels now serve the promoted replica alone.
    sentinel_set.processes[0].kill()  # kill -9 the master
    killed = time.monotonic()
    answers: list[int] = []
    accepted = None
    while accepted is None and time.monotonic() < killed + 30:
        response = web.call("send_message", {"uid": f"m{len(answers)}", "arguments": ARGUMENTS})
        answers.append(response.status_code)
        if response.status_code == 200:
            accepted = response.get_json()["data"]["message"]["id"]
        else:
            time.sleep(0.5)
    assert accepted is not None, (answers, processes.log_text()[-3000:])
    assert set(answers[:-1]) <= {503}, answers  # "try again shortly", never a 500

    # Serving again within 30 s of the kill, no process restarted by hand: the send
    # accepted after the failover arrives, and the event keeps firing.
    def arrived() -> bool:
        return any(m.message["X-Sendbeat-Instance"] == accepted for m in smtp.messages)

    assert wait_until(arrived, timeout=killed + 30 - time.monotonic()), processes.log_text()[-4000:]
    before = len(smtp.messages)
    assert wait_until(lambda: len(smtp.messages) >= before + 2, timeout=10)
    done.set()
    stream.join()
    supervisor.join()
    assert beat.poll() is None  # beat rode through the failover
    assert len(restarts) <= 1, restarts  # the worker, at most once
    processes.stop(beat)

    # Nothing sent twice, and the ledger on the new master accounts for every email and
    # every trigger it accepted.
    ended = ("succeeded", "failed", "missed", "skipped", "cancelled")

    def runs(event_id: str) -> list[Instance]:
        return store.list_instances(event_id, 0, 10_000)[0]

    def settled() -> bool:
        return all(i.status in ended for event_id in (tick, pulse) for i in runs(event_id))

    assert wait_until(settled, 30), (runs(tick), runs(pulse))
    received = Counter(m.message["X-Sendbeat-Instance"] for m in smtp.wait_for(0, timeout=1))
    assert max(received.values()) == 1, received
    for instance_id in received:
        record = store.instance(instance_id)
        assert record is not None and record.status == "succeeded", (instance_id, record)
    ticks = [i.scheduled_for for i in runs(tick) if i.status == "succeeded"]
    assert len(ticks) == len(set(ticks))  # one send per occurrence
    assert set(triggers) <= {200, 503}, Counter(triggers)
    manual = runs(pulse)
    assert triggers.count(200) <= len(manual) <= len(triggers)  # no accepted trigger lost
    assert all(i.status == "succeeded" for i in manual)
    assert len(received) == len(ticks) + len(manual) + 1  # and the one send_message


def create(web: Web, event: dict[str, Any]) -> str:
    response = web.call("create_scheduled_event", {**event, "metadata": {"arguments": ARGUMENTS}})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["data"]["id"])
