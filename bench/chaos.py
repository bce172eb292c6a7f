"""A seeded, bounded fault-injection run of sendbeat on real processes, and its verdict.

This program owns a whole private installation for the length of one run, and the checks
made on it afterwards. It treats sendbeat as a black box: processes are started by their
command lines, driven over HTTP, emails are counted at this program's own SMTP server, and
execution records are read back from the store (``{prefix}:instance:{id}``, the one place
that still holds those of deleted events and of ``send_message``) and compared with what
the API lists for every event that still exists.

1. **Setup**, on loopback and free ports: a store Redis and a separate broker Redis
   (``redis-server``, AOF with ``appendfsync always``, so a restart loses nothing; the
   broker being another server, sendbeat takes its publish-then-confirm path); the web
   (the Procfile's gunicorn line, one worker); ``--beats`` beats and ``--workers`` workers
   (the Procfile's lines, ``--concurrency 2``), each in its own process group; a project
   and its key (``flask --app app project create``); and an aiosmtpd server in this
   process that answers each message as the seed draws it: mostly 250 at once, sometimes
   after 2-5 s, sometimes ``451`` or ``550``, and, with faults on, sometimes only after
   longer than the send lease. With ``--skew`` (the default) the first beat slot runs
   under ``faketime +90s`` and the first worker slot under ``faketime -90s`` (beat1, w1
   and their replacements): sendbeat is meant to trust Redis' clock alone, so skewed
   processes must change nothing.
2. **Workload** for ``--minutes``, planned from the seed: events ``every N secs`` (N from 2
   to 20) and one-time ones (``in 1 minutes``, ``at <ISO>``) with 1-3 recipients, each
   with a lifecycle of updates, pauses, resumes and deletes; manual triggers;
   ``send_message`` calls. A call that changes an event is repeated until its answer is
   definite (not a 5xx), so what the event went through is known.
3. **Faults** at seeded moments, each printed with its time: ``kill -9`` a worker or a beat
   (another one is started), SIGSTOP a worker for longer than the lease, restart the store
   or the broker (SIGTERM, so the AOF is whole; same port and directory). A beat or worker
   that ends on its own is started again, as a process manager would, and reported.
4. **Settling**: no new work; every process up again; every event still active paused
   (nothing is resumed); then a bounded wait until no execution is queued, running or
   retrying and the SMTP server has been quiet for a few seconds.
5. **Checks** (``CHECKS``), printed as Markdown tables, with evidence for each kind of
   problem found: the execution record, its SMTP transactions and its log lines. The exit
   status is 1 when a fatal check is not zero (2 when the run itself went wrong). A second
   email of one execution to one recipient counts as an SMTP-window re-send, not as a
   duplicate, only when it has the first copy's Message-ID and the first copy's client
   could not have read its 250: this program stopped or killed that client (its process
   group, found from its TCP port) within ``WRITE_WINDOW`` of the 250, and the client had
   not spoken again on its connection when the second copy began.

Where a moment is uncertain the checks give way instead of guessing: an occurrence within
``MARGIN`` seconds of a pause, delete, schedule change or resume may have a record or not;
an occurrence while its event is paused may have one record or none; a trigger or
``send_message`` that got no answer or a 5xx may have left a record or not. An email that
ends after a pause or delete answered is allowed when its SMTP transaction began before the
answer, or at most ``IN_FLIGHT`` after it (the worker's check of the event comes a NOOP round
trip before its MAIL FROM).

    .venv/bin/python bench/chaos.py                      # short: 2 min of chaos, ~2.5 in all
    .venv/bin/python bench/chaos.py --seed 7 --minutes 30 --keep /tmp/chaos   # long
    .venv/bin/python bench/chaos.py --no-faults --no-skew  # every fatal check must be 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import itertools
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.policy import default as default_policy
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import redis
import requests
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.keys import Keys  # noqa: E402
from app.core.records import Instance  # noqa: E402

HOST = "127.0.0.1"
PREFIX = "chaos"  # SENDBEAT_KEY_PREFIX and SENDBEAT_QUEUE
LEASE = 10  # SENDBEAT_SEND_LEASE and SENDBEAT_VISIBILITY_TIMEOUT: short, so faults heal fast
RETRIES = 2  # SENDBEAT_RETRIES, for send_message and events that do not set theirs
SKEW = 90  # seconds, for the skewed beat (ahead) and worker (behind)
MARGIN = 2.0  # seconds either side of an edge (pause, delete, update, resume) left open
START_TIMEOUT = 90.0
CALL_TIMEOUT = 10.0
SURE_WITHIN = 60.0  # a call that changes an event is repeated this long for a definite answer
QUIET = 3.0  # seconds without an SMTP transaction before the run counts as settled
WRITE_WINDOW = 1.0  # seconds after a 250 in which a sender records it (the SMTP window)
# A copy whose SMTP transaction began this soon after a pause or delete answered was
# checked before it: the worker's check and its MAIL FROM are a NOOP round trip apart.
IN_FLIGHT = 0.25
CELERY = (sys.executable, "-m", "celery", "--app", "workers.main")
SCRUBBED_PREFIXES = ("SENDBEAT_", "MAIL_", "FAKETIME")
SCRUBBED = frozenset({"BROKER_URL", "REDIS_URL", "PORT", "WEB_CONCURRENCY", "LD_PRELOAD"})
FINISHED = frozenset({"succeeded", "failed", "cancelled", "missed", "skipped"})
NOT_SENT = frozenset({"failed", "cancelled", "missed", "skipped"})
OK = "250 2.0.0 Message accepted for delivery"
GONE = "421 4.4.2 client went away"  # the answer to a client that is no longer there
DAY = 86400
# The sitecustomize of the processes run under faketime (it says why).
FAKETIME_SHIM = ROOT / "tests" / "faketime"

# The workload's rates (per second) and sizes.
INITIAL_EVENTS = 20
CREATE_RATE = 0.1
TRIGGER_RATE = 0.25
SEND_RATE = 0.4
FAULT_EVERY = 20.0  # seconds of chaos per fault (at least one fault of each kind)
FAULT_KINDS = ("kill-worker", "kill-beat", "stop-worker", "restart-store", "restart-broker")


class HarnessError(Exception):
    """Raised when the run cannot go on (a process does not start, an answer makes no sense
    for the request sent): its results would mean nothing."""


def clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S.%f")[:-3]


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def code_version() -> str:
    """The commit under test, and whether app/ or workers/ differ from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "app", "workers"], capture_output=True, text=True
        )
    except OSError:
        return "unknown (no git)"
    version = head.stdout.strip() or "unknown (not a git checkout)"
    return version + (" + local changes in app/ or workers/" if dirty.stdout.strip() else "")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} within {timeout:.0f} s")
        time.sleep(0.2)


class Say:
    """Prints a line stamped with the UTC time and the seconds since the chaos began."""

    def __init__(self) -> None:
        self.origin = time.time()
        self.lock = threading.Lock()

    def __call__(self, text: str) -> None:
        now = time.time()
        with self.lock:
            print(f"[{clock(now)} {now - self.origin:+7.1f}s] {text}", flush=True)


# -- processes -------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    ready: str = ""  # a log line that says the process is up
    ended_by_us: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the whole process group (a worker's pool children too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def is_ready(self) -> bool:
        return self.ready in self.log.read_text(errors="replace")

    def why(self) -> str:
        """The line of its log that says why it ended (its first CRITICAL, else its last)."""
        lines = self.log.read_text(errors="replace").strip().splitlines() or [""]
        return next((line for line in lines if "CRITICAL" in line), lines[-1]).strip()


class Supervisor:
    """Starts every process of the run, each in its own process group, and stops them all
    whatever happens; once stopping, it starts nothing more."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.env: dict[str, str] = {}
        self.started: list[Service] = []
        self.lock = threading.Lock()
        self.closed = False

    def spawn(self, name: str, command: list[str], ready: str = "", skew: str = "") -> Service:
        env = self.skewed_env() if skew else self.env
        if skew:
            command = ["faketime", "-f", skew, *command]
        log = self.logs / f"{name}.log"
        with self.lock, log.open("ab") as out:
            if self.closed:
                raise HarnessError(f"not starting {name}: the run is stopping")
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            service = Service(name, process, log, ready)
            self.started.append(service)
        return service

    def skewed_env(self) -> dict[str, str]:
        path = os.pathsep.join([str(FAKETIME_SHIM), self.env["PYTHONPATH"]])
        return {**self.env, "PYTHONPATH": path, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def kill(self, service: Service) -> None:
        """SIGKILL the process and its children at once, as a lost machine would."""
        service.ended_by_us = True
        service.signal(signal.SIGKILL)
        service.process.wait(30)

    def stop_all(self) -> None:
        with self.lock:
            self.closed = True
        for service in self.started:
            service.ended_by_us = True
            service.signal(signal.SIGCONT)
            service.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for service in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(max(0.1, deadline - time.monotonic()))
        for service in self.started:
            service.signal(signal.SIGKILL)
            service.process.wait()

    def surprises(self) -> list[str]:
        """Processes that ended without being told to."""
        return [
            f"{s.name} (exit {s.process.returncode}: {s.why()})"
            for s in self.started
            if not s.ended_by_us and not s.alive
        ]


@dataclass
class RedisServer:
    name: str
    port: int
    directory: Path
    supervisor: Supervisor
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.service is not None and self.service.alive

    def start(self) -> None:
        options = f"--port {self.port} --bind {HOST} --appendonly yes --appendfsync always"
        command = ["redis-server", *options.split(), "--save", "", "--dir", str(self.directory)]
        self.service = self.supervisor.spawn(self.name, command)
        wait_for(self.answers, START_TIMEOUT, f"{self.name} did not answer")

    def stop(self) -> None:
        """SIGTERM: Redis syncs its AOF and exits, so the next start loses nothing."""
        assert self.service is not None
        self.service.ended_by_us = True
        self.service.process.terminate()
        self.service.process.wait(30)

    def answers(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(self.client().ping())
        return False

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=10)


def process_env(store: RedisServer, broker: RedisServer, sink_port: int) -> dict[str, str]:
    """The environment of every sendbeat process: nothing inherited configures it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED
    }
    env.update(
        REDIS_URL=store.url,
        BROKER_URL=broker.url,
        MAIL_URL=f"smtp://{HOST}:{sink_port}",
        SENDBEAT_KEY_PREFIX=PREFIX,
        SENDBEAT_QUEUE=PREFIX,
        SENDBEAT_SEND_LEASE=str(LEASE),
        SENDBEAT_VISIBILITY_TIMEOUT=str(LEASE),
        SENDBEAT_RETRIES=str(RETRIES),
        SENDBEAT_ALLOW_PRIVATE_REFS="1",
        SENDBEAT_RATE_LIMIT_MESSAGING="none",
        SENDBEAT_RATE_LIMIT_SCHEDULES="none",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    return env


@dataclass
class Cluster:
    """The installation under test. Beats and workers sit in numbered slots; a replacement
    takes its predecessor's slot, and with it the slot's clock skew (slot 0 of each)."""

    supervisor: Supervisor
    store: RedisServer
    broker: RedisServer
    web_port: int
    skew: bool
    beats: dict[int, Service] = field(default_factory=dict)
    workers: dict[int, Service] = field(default_factory=dict)
    started: Counter[str] = field(default_factory=Counter)

    @property
    def web_url(self) -> str:
        return f"http://{HOST}:{self.web_port}"

    def start_web(self) -> None:
        self.supervisor.env.update(PORT=str(self.web_port), WEB_CONCURRENCY="1")
        options = f"--config deploy/gunicorn.conf.py --bind {HOST}:{self.web_port}"
        self.supervisor.spawn(
            "web", [sys.executable, "-m", "gunicorn", *options.split(), "app:create_app()"]
        )

    def start_beat(self, slot: int) -> Service:
        name = self.name("beat")
        schedule = self.supervisor.logs / f"{name}.db"
        command = [*CELERY, "beat", "--loglevel", "INFO", "--schedule", str(schedule)]
        skew = f"+{SKEW}s" if self.skew and slot == 0 else ""
        self.beats[slot] = self.supervisor.spawn(name, command, "beat: Starting...", skew)
        return self.beats[slot]

    def start_worker(self, slot: int) -> Service:
        name = self.name("w")
        options = "worker --loglevel INFO --without-gossip --without-mingle --concurrency 2"
        command = [*CELERY, *options.split(), "--hostname", f"{name}@%h"]
        skew = f"-{SKEW}s" if self.skew and slot == 0 else ""
        self.workers[slot] = self.supervisor.spawn(name, command, "ready.", skew)
        return self.workers[slot]

    def name(self, role: str) -> str:
        self.started[role] += 1
        return f"{role}{self.started[role]}"

    def web_answers(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.web_url}/healthz", timeout=2).status_code == 200
        return False

    def wait_ready(self) -> None:
        celery = [*self.beats.values(), *self.workers.values()]

        def ready() -> bool:
            dead = [s.name for s in celery if not s.alive]
            if dead:
                raise HarnessError(f"{', '.join(dead)} exited while starting (see its log)")
            return all(s.is_ready() for s in celery) and self.web_answers()

        wait_for(ready, START_TIMEOUT, "the web, beats and workers did not all start")

    def revive(self) -> list[str]:
        """A new process in every slot whose process is gone; what was replaced."""
        replaced = []
        for slots, start in ((self.beats, self.start_beat), (self.workers, self.start_worker)):
            for slot, service in list(slots.items()):
                if not service.alive:
                    replaced.append(f"{service.name} by {start(slot).name}")
        return replaced

    def heal(self) -> list[str]:
        """Everything up again after the faults; what was replaced."""
        for server in (self.store, self.broker):
            if not server.alive:
                server.start()
        replaced = self.revive()
        self.wait_ready()
        return replaced


def start_cluster(args: argparse.Namespace, supervisor: Supervisor, sink_port: int) -> Cluster:
    store = RedisServer("store", free_port(), supervisor.logs / "store", supervisor)
    broker = RedisServer("broker", free_port(), supervisor.logs / "broker", supervisor)
    for server in (store, broker):
        server.directory.mkdir()
        server.start()
    supervisor.env = process_env(store, broker, sink_port)
    cluster = Cluster(supervisor, store, broker, free_port(), args.skew)
    cluster.start_web()
    for slot in range(args.beats):
        cluster.start_beat(slot)
    for slot in range(args.workers):
        cluster.start_worker(slot)
    cluster.wait_ready()
    return cluster


def create_project(env: dict[str, str]) -> str:
    """The API key, which the operator command prints alone on its last line."""
    command = [sys.executable, "-m", "flask", "--app", "app", "project", "create", PREFIX]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise HarnessError(f"project create failed: {done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


# -- the SMTP server -------------------------------------------------------------------------


def client_group(port: int) -> int:
    """The process group of the local process whose TCP socket has this port (everything is
    on loopback), found through /proc; 0 when it cannot be found."""
    local = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        inode = next((row[9] for row in rows if row[1] == local), "0")
        target = f"socket:[{inode}]"
        for fds in Path("/proc").glob("[0-9]*/fd"):
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) == target for fd in fds.iterdir()):
                    return os.getpgid(int(fds.parent.name))
    return 0


@dataclass
class Transaction:
    """One message handed over in an SMTP DATA, and what became of it."""

    session: int  # the SMTP connection, numbered by the sink
    client: int  # the process group of the client (its beat or worker), 0 when not found
    instance: str  # the X-Sendbeat-Instance header: the execution id
    recipients: tuple[str, ...]  # envelope
    to: str  # header
    message_id: str
    data_start: float  # the message received, before the answer
    began: float  # MAIL FROM: the transaction began
    data_end: float = 0.0  # the answer decided
    reply: str = ""
    delivered: bool = False  # 250 written to a client still connected
    acknowledged: float = math.inf  # when the client next spoke on the connection (it read
    # the answer by then)


@dataclass(frozen=True)
class Behaviour:
    delay: float
    reply: str


class Sink:
    """An aiosmtpd handler that answers each message as the seed draws it and records every
    transaction. A message whose client went away before the answer is not delivered: its
    sender never heard that it was taken (RFC 5321 4.1.1.4)."""

    def __init__(self, rng: random.Random, faults: bool) -> None:
        self.rng = rng
        self.faults = faults
        self.transactions: list[Transaction] = []
        self.lock = threading.Lock()
        self.sessions = itertools.count(1)

    def pick(self) -> Behaviour:
        roll = self.rng.random()
        if roll < 0.04:
            return Behaviour(0.0, "550 5.1.1 no such user")
        if roll < 0.11:
            return Behaviour(0.0, "451 4.3.0 try later")
        if roll < 0.14:
            return Behaviour(self.rng.uniform(2, 5), OK)
        if roll < 0.145 and self.faults:
            return Behaviour(self.rng.uniform(LEASE + 1, LEASE + 4), OK)
        return Behaviour(0.0, OK)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.heard(session)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.chaos_began = time.time()
        return "250 OK"

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        self.heard(session)
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.heard(session)
        return "221 Bye"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.heard(session)
        transaction = self.record(session, envelope)
        behaviour = self.pick()
        try:
            await asyncio.sleep(behaviour.delay)
        except asyncio.CancelledError:  # the connection was lost while the answer was held
            transaction.data_end, transaction.reply = time.time(), GONE
            raise
        transaction.data_end = time.time()
        if server.transport is None or server._reader.at_eof():
            transaction.reply = GONE
            return GONE
        transaction.reply = behaviour.reply
        transaction.delivered = behaviour.reply == OK
        session.chaos_last = transaction
        return behaviour.reply

    @staticmethod
    def heard(session: Any) -> None:
        """The client spoke again, so it read the answer to its last message."""
        last = getattr(session, "chaos_last", None)
        if last is not None:
            last.acknowledged = time.time()
            session.chaos_last = None

    def record(self, session: Any, envelope: Any) -> Transaction:
        if not hasattr(session, "chaos_number"):
            session.chaos_number = next(self.sessions)
            session.chaos_client = client_group(session.peer[1])
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        transaction = Transaction(
            session=session.chaos_number,
            client=session.chaos_client,
            instance=str(message.get("X-Sendbeat-Instance", "")).strip(),
            recipients=tuple(r.lower() for r in envelope.rcpt_tos),
            to=str(message.get("To", "")),
            message_id=str(message.get("Message-ID", "")).strip(),
            data_start=time.time(),
            began=getattr(envelope, "chaos_began", 0.0) or time.time(),
        )
        with self.lock:
            self.transactions.append(transaction)
        return transaction

    def snapshot(self) -> list[Transaction]:
        with self.lock:
            return list(self.transactions)

    def quiet_for(self) -> float:
        with self.lock:
            last = max((t.data_end or t.data_start for t in self.transactions), default=0.0)
        return time.time() - last


# -- the HTTP API --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (connection refused or dropped, timeout)
    body: Any
    asked: float
    answered: float

    @property
    def data(self) -> Any:
        return self.body.get("data") if isinstance(self.body, dict) else None

    @property
    def definite(self) -> bool:
        """Below 500: the server said what happened (a 5xx or no answer says nothing)."""
        return 0 < self.status < 500


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key
        self.http = requests.Session()

    def request(self, verb: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        asked = time.time()
        headers = {"Authorization": f"Bearer {self.key}"}
        try:
            response = self.http.request(
                verb, self.base + path, json=body, headers=headers, timeout=CALL_TIMEOUT
            )
        except requests.RequestException as exc:
            return Answer(0, str(exc), asked, time.time())
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        return Answer(response.status_code, payload, asked, time.time())

    def messaging(self, method: str, body: dict[str, Any]) -> Answer:
        return self.request("POST", f"/v.1.1/{method}", {"api_key": self.key, **body})

    def schedule(self, verb: str, event_id: str, action: str = "") -> Answer:
        path = f"/api/unstable/schedules/{event_id}" + (f"/{action}" if action else "")
        return self.request(verb, path)

    def executions(self, uid: str) -> dict[str, str]:
        """Every execution of the event that the API lists: id -> status."""
        found: dict[str, str] = {}
        page = 0
        while True:
            page += 1
            body = {"uid": uid, "page": page, "per_page": 1000}
            answer = self.messaging("list_scheduled_event_instances", body)
            if answer.status != 200:
                raise HarnessError(f"list_scheduled_event_instances {uid}: {answer.body}")
            listed = answer.data["scheduled_event_instances"]
            found.update((item["uid"], item["status"]) for item in listed)
            if not listed or len(found) >= answer.data["total"]:
                return found


# -- the workload ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventPlan:
    index: int
    uid: str
    step: int | None  # every N secs; None: one-time
    ahead: int | None  # one-time "at <ISO>": seconds after the request; None: "in 1 minutes"
    recipients: tuple[str, ...]
    policies: tuple[tuple[str, Any], ...]  # retries, overlap, catchup_window, when set

    def schedule(self, now: float) -> str:
        if self.step is not None:
            return f"every {self.step} secs"
        if self.ahead is None:
            return "in 1 minutes"
        return "at " + iso(now + self.ahead)


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the chaos began
    action: str  # create | update | pause | resume | delete | trigger | send
    event: int = -1  # the EventPlan's index
    value: Any = None  # update: the new N (None: a new subject); trigger: which; send: to


def arrival_times(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    """A Poisson process of ``rate`` per second between ``start`` and ``end``."""
    times, at = [], start
    while True:
        at += rng.expovariate(rate)
        if at >= end:
            return times
        times.append(at)


def recipients(rng: random.Random, name: str) -> tuple[str, ...]:
    return tuple(f"{name}-r{k}@example.com" for k in range(rng.randint(1, 3)))


def plan_event(rng: random.Random, index: int, seed: int) -> EventPlan:
    uid = f"chaos-{seed}-{index:04d}"
    step = rng.randint(2, 20) if rng.random() < 0.8 else None
    ahead = rng.randint(20, 50) if step is None and rng.random() < 0.5 else None
    policies: list[tuple[str, Any]] = []
    if rng.random() < 0.7:
        policies.append(("retries", rng.randint(0, 3)))
    if rng.random() < 0.1:
        policies.append(("overlap", "allow"))
    if rng.random() < 0.2:
        policies.append(("catchup_window", rng.choice([5, 30, 300])))
    return EventPlan(index, uid, step, ahead, recipients(rng, uid), tuple(policies))


def lifecycle(rng: random.Random, plan: EventPlan, at: float) -> list[Step]:
    """Create, then perhaps update, pause (and resume), delete, in that order."""
    steps = [Step(at, "create", plan.index)]
    if rng.random() < 0.25:
        at += rng.uniform(5, 60)
        change = rng.randint(2, 20) if plan.step and rng.random() < 0.6 else None
        steps.append(Step(at, "update", plan.index, change))
    if rng.random() < 0.3:
        at += rng.uniform(5, 60)
        steps.append(Step(at, "pause", plan.index))
        if rng.random() < 0.6:
            at += rng.uniform(3, 40)
            steps.append(Step(at, "resume", plan.index))
    if rng.random() < 0.85:
        steps.append(Step(at + rng.uniform(30, 300), "delete", plan.index))
    return steps


def plan_workload(
    rng: random.Random, seconds: float, seed: int
) -> tuple[list[EventPlan], list[Step]]:
    initial = [rng.uniform(0, 5) for _ in range(INITIAL_EVENTS)]
    starts = sorted(initial + arrival_times(rng, CREATE_RATE, 5, seconds))
    plans = [plan_event(rng, index, seed) for index in range(len(starts))]
    steps = [s for plan, at in zip(plans, starts, strict=True) for s in lifecycle(rng, plan, at)]
    for at in arrival_times(rng, TRIGGER_RATE, 5, seconds):
        steps.append(Step(at, "trigger", value=rng.random()))
    for n, at in enumerate(arrival_times(rng, SEND_RATE, 0, seconds)):
        steps.append(Step(at, "send", value=recipients(rng, f"send{n}")))
    return plans, sorted((s for s in steps if s.at < seconds), key=lambda s: s.at)


def arguments(to: tuple[str, ...], subject: str) -> dict[str, Any]:
    return {
        "recipients": list(to),
        "headers": {"from": "Chaos <chaos@example.com>", "subject": subject},
        "content": {"text/plain": "Sent by bench/chaos.py."},
    }


# -- what each event went through ------------------------------------------------------------


class Grid(Protocol):
    def occurrences(self, start: float, end: float) -> Iterator[int]: ...

    def contains(self, at: int) -> bool: ...


@dataclass(frozen=True)
class Every:
    """``every N secs``: the UTC seconds since midnight that are multiples of N, the count
    restarting at each midnight (docs/schedules.md)."""

    step: int

    def occurrences(self, start: float, end: float) -> Iterator[int]:
        at = self.first_from(math.ceil(start))
        while at < end:
            yield at
            at = self.first_from(at + 1)

    def first_from(self, moment: int) -> int:
        midnight = moment - moment % DAY
        at = midnight - (-(moment - midnight) // self.step) * self.step
        return min(at, midnight + DAY)

    def contains(self, at: int) -> bool:
        return at % DAY % self.step == 0


@dataclass(frozen=True)
class Once:
    at: int

    def occurrences(self, start: float, end: float) -> Iterator[int]:
        if start <= self.at < end:
            yield self.at

    def contains(self, at: int) -> bool:
        return at == self.at


@dataclass
class Window:
    """A stretch of time in which every occurrence of ``grid`` must have one record."""

    grid: Grid
    start: float
    end: float = math.inf


@dataclass
class Tracked:
    """One event as the answers to our requests describe it."""

    plan: EventPlan
    id: str = ""
    state: str = "planned"  # active | paused | deleted
    grids: list[Grid] = field(default_factory=list)  # every schedule it ever had
    windows: list[Window] = field(default_factory=list)
    quiet: list[list[float]] = field(default_factory=list)  # [pause/delete answered, resume asked]
    triggers: Counter[str] = field(default_factory=Counter)  # ok | busy | unsure
    updates: int = 0

    def watch(self, grid: Grid, start: float) -> None:
        if grid not in self.grids:
            self.grids.append(grid)
        self.windows.append(Window(grid, start))

    def unwatch(self, asked: float) -> None:
        if self.windows and self.windows[-1].end == math.inf:
            self.windows[-1].end = asked - MARGIN

    def hush(self, answered: float) -> None:
        if not (self.quiet and self.quiet[-1][1] == math.inf):
            self.quiet.append([answered, math.inf])

    def unhush(self, asked: float) -> None:
        self.quiet[-1][1] = asked


@dataclass(frozen=True)
class SendCall:
    id: str
    recipients: tuple[str, ...]


class Driver:
    """Carries out the workload's steps over HTTP and notes what each answer means."""

    def __init__(self, api: Api, plans: list[EventPlan], seed: int, say: Say) -> None:
        self.api = api
        self.seed = seed
        self.say = say
        self.events = [Tracked(plan) for plan in plans]
        self.sends: list[SendCall] = []
        self.unsure_sends = 0
        self.calls: Counter[str] = Counter()  # "pause 200", "trigger 409", "send 500", ...

    def run(self, steps: list[Step], until: float, sink: Sink) -> None:
        progress = time.time() + 30
        for step in steps:
            time.sleep(max(0.0, self.say.origin + step.at - time.time()))
            if time.time() >= until:
                return
            getattr(self, f"do_{step.action}")(step)
            if time.time() >= progress:
                progress += 30
                self.say(self.progress(sink))

    def progress(self, sink: Sink) -> str:
        states = Counter(e.state for e in self.events)
        delivered = sum(t.delivered for t in sink.snapshot())
        return (
            f"workload: {states['active']} events active, {states['paused']} paused, "
            f"{states['deleted']} deleted; {len(self.sends)} sends; {delivered} emails"
        )

    def sure(self, what: str, call: Callable[[], Answer]) -> tuple[float, Answer, int]:
        """Repeat a call that changes an event until its answer is definite; the first
        attempt's time, the answer and the number of attempts."""
        deadline = time.monotonic() + SURE_WITHIN
        first, attempts = 0.0, 0
        while True:
            answer = call()
            first, attempts = first or answer.asked, attempts + 1
            self.calls[f"{what} {answer.status or 'no answer'}"] += 1
            if answer.definite:
                return first, answer, attempts
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{what}: no definite answer in {SURE_WITHIN:.0f} s: "
                    f"{answer.status} {answer.body}"
                )
            time.sleep(0.5)

    @staticmethod
    def expect(what: str, answer: Answer, ok: bool) -> None:
        if not ok:
            raise HarnessError(f"{what}: unexpected answer {answer.status} {answer.body}")

    def do_create(self, step: Step) -> None:
        event = self.events[step.event]
        plan = event.plan
        body = {
            "uid": plan.uid,
            "schedule": plan.schedule(time.time()),
            "metadata": {"arguments": arguments(plan.recipients, plan.uid)},
            **dict(plan.policies),
        }
        _, answer, attempts = self.sure(
            "create", lambda: self.api.messaging("create_scheduled_event", body)
        )
        if answer.status == 200:
            record, start = answer.data, float(epoch(answer.data["scheduled_at"]))
        else:  # an attempt that got no answer did create it: its first run is unknown
            self.expect("create", answer, answer.status == 400 and attempts > 1)
            record, start = self.lookup(plan.uid)
        event.id, event.state = record["id"], "active"
        grid = Every(plan.step) if plan.step else Once(epoch(record["scheduled_at"]))
        event.watch(grid, start)

    def lookup(self, uid: str) -> tuple[dict[str, Any], float]:
        body = {"uid": uid}
        _, answer, _ = self.sure("get", lambda: self.api.messaging("get_scheduled_event", body))
        self.expect("get", answer, answer.status == 200)
        return answer.data, answer.answered + MARGIN

    def do_update(self, step: Step) -> None:
        event = self.events[step.event]
        if event.state != "active":
            return
        event.updates += 1
        plan = event.plan
        subject = f"{plan.uid} v{event.updates}"
        body: dict[str, Any] = {"uid": plan.uid}
        if step.value:
            body["schedule"] = f"every {step.value} secs"
        else:
            body["metadata"] = {"arguments": arguments(plan.recipients, subject)}
        asked, answer, _ = self.sure(
            "update", lambda: self.api.messaging("update_scheduled_event", body)
        )
        self.expect("update", answer, answer.status == 200)
        if step.value:
            event.unwatch(asked)
            event.watch(Every(step.value), epoch(answer.data["scheduled_at"]))

    def do_pause(self, step: Step) -> None:
        event = self.events[step.event]
        if event.state == "active":
            self.pause(event)

    def pause(self, event: Tracked) -> None:
        asked, answer, _ = self.sure("pause", lambda: self.api.schedule("PUT", event.id, "pause"))
        self.expect("pause", answer, answer.status == 200)
        event.unwatch(asked)
        event.hush(answer.answered)
        event.state = "paused"

    def do_resume(self, step: Step) -> None:
        event = self.events[step.event]
        if event.state != "paused":
            return
        asked, answer, _ = self.sure("resume", lambda: self.api.schedule("PUT", event.id, "resume"))
        self.expect("resume", answer, answer.status == 200)
        event.unhush(asked)
        event.watch(event.windows[-1].grid, answer.answered + MARGIN)
        event.state = "active"

    def do_delete(self, step: Step) -> None:
        event = self.events[step.event]
        if event.state not in ("active", "paused"):
            return
        asked, answer, attempts = self.sure("delete", lambda: self.api.schedule("DELETE", event.id))
        gone = answer.status == 200 or (answer.status == 404 and attempts > 1)
        self.expect("delete", answer, gone)
        event.unwatch(asked)
        event.hush(answer.answered)
        event.state = "deleted"

    def do_trigger(self, step: Step) -> None:
        active = [e for e in self.events if e.state == "active"]
        if not active:
            return
        event = active[int(step.value * len(active))]
        answer = self.api.schedule("POST", event.id, "trigger")
        self.calls[f"trigger {answer.status or 'no answer'}"] += 1
        self.expect("trigger", answer, answer.status in (200, 409) or not answer.definite)
        event.triggers[{200: "ok", 409: "busy"}.get(answer.status, "unsure")] += 1

    def do_send(self, step: Step) -> None:
        uid = f"send-{self.seed}-{len(self.sends) + self.unsure_sends:05d}"
        answer = self.api.messaging(
            "send_message", {"uid": uid, "arguments": arguments(step.value, uid)}
        )
        self.calls[f"send {answer.status or 'no answer'}"] += 1
        self.expect("send_message", answer, answer.status == 200 or not answer.definite)
        if answer.status == 200:
            self.sends.append(SendCall(answer.data["message"]["id"], step.value))
        else:
            self.unsure_sends += 1

    def settle(self) -> None:
        """Pause every event still active: no new work, and nothing is resumed."""
        for event in self.events:
            if event.state == "active":
                self.pause(event)


# -- faults ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the chaos began
    kind: str  # one of FAULT_KINDS
    hold: float  # seconds stopped or down (stop-worker, restart-*)
    pick: float  # which worker or beat, as a fraction of the slots


HOLDS = {"stop-worker": (LEASE + 3, LEASE + 8), "restart-store": (1, 5), "restart-broker": (1, 5)}


def plan_faults(rng: random.Random, seconds: float) -> list[Fault]:
    """Spread evenly, each kind at least once, all begun 20 s before the chaos ends."""
    count = max(len(FAULT_KINDS), round(seconds / FAULT_EVERY))
    kinds = [FAULT_KINDS[i % len(FAULT_KINDS)] for i in range(count)]
    rng.shuffle(kinds)
    slot = (seconds - 30) / count
    return [
        Fault(
            10 + i * slot + rng.uniform(0, slot / 2),
            kind,
            rng.uniform(*HOLDS.get(kind, (0, 0))),
            rng.random(),
        )
        for i, kind in enumerate(kinds)
    ]


class Chaos(threading.Thread):
    """Applies the faults at their moments. ``ending`` cuts a hold short: a stopped worker
    is always continued, a stopped server always started again."""

    def __init__(self, cluster: Cluster, faults: list[Fault], say: Say) -> None:
        super().__init__(name="chaos", daemon=True)
        self.cluster = cluster
        self.faults = faults
        self.say = say
        self.ending = threading.Event()
        self.applied: Counter[str] = Counter()
        self.stops: list[tuple[int, float, float]] = []  # process group, SIGSTOP, SIGCONT
        self.kills: list[tuple[int, float]] = []  # process group, SIGKILL
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for fault in self.faults:
                if self.idle_until(self.say.origin + fault.at):
                    return
                getattr(self, fault.kind.replace("-", "_"))(fault)
                self.applied[fault.kind] += 1
            self.idle_until(math.inf)
        except BaseException as exc:  # the main thread raises it again
            self.error = exc

    def idle_until(self, moment: float) -> bool:
        """Wait for ``moment``, meanwhile starting a beat or worker that ended on its own
        again, as a process manager would; True when the chaos is ending."""
        while time.time() < moment:
            if self.ending.wait(min(1.0, moment - time.time())):
                return True
            for replaced in self.cluster.revive():
                self.say(f"ended on its own: {replaced} (as a process manager would)")
        return False

    def kill_worker(self, fault: Fault) -> None:
        self.kill("worker", self.cluster.workers, self.cluster.start_worker, fault)

    def kill_beat(self, fault: Fault) -> None:
        self.kill("beat", self.cluster.beats, self.cluster.start_beat, fault)

    def kill(
        self, role: str, slots: dict[int, Service], start: Callable[[int], Service], fault: Fault
    ) -> None:
        slot = int(fault.pick * len(slots))
        old = slots[slot]
        self.kills.append((old.process.pid, time.time()))
        self.cluster.supervisor.kill(old)
        new = start(slot)
        self.say(f"FAULT kill -9 {role} {old.name} (pid {old.process.pid}); started {new.name}")

    def stop_worker(self, fault: Fault) -> None:
        worker = self.cluster.workers[int(fault.pick * len(self.cluster.workers))]
        stopped = time.time()
        worker.signal(signal.SIGSTOP)
        self.say(f"FAULT SIGSTOP worker {worker.name} for {fault.hold:.1f} s (lease {LEASE} s)")
        try:
            self.ending.wait(fault.hold)
        finally:
            worker.signal(signal.SIGCONT)
            self.stops.append((worker.process.pid, stopped, time.time()))
            self.say(f"FAULT end: SIGCONT worker {worker.name}")

    def restart_store(self, fault: Fault) -> None:
        self.restart(self.cluster.store, fault)

    def restart_broker(self, fault: Fault) -> None:
        self.restart(self.cluster.broker, fault)

    def restart(self, server: RedisServer, fault: Fault) -> None:
        server.stop()
        self.say(f"FAULT {server.name} Redis stopped (SIGTERM) for {fault.hold:.1f} s")
        try:
            self.ending.wait(fault.hold)
        finally:
            server.start()
            self.say(f"FAULT end: {server.name} Redis answers again on port {server.port}")


# -- settling and reading back -------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """An execution record as the store holds it."""

    id: str
    event_id: str
    trigger: str
    status: str
    scheduled_for: int
    started_at: float | None
    attempts: int
    error: str
    delivered: tuple[str, ...]  # recipients it lists as accepted ("delivered", result.accepted)

    @classmethod
    def from_hash(cls, execution: str, raw: dict[str, str]) -> Record:
        """Read as sendbeat reads it (copies noted late by a stale attempt included)."""
        record = Instance.from_hash(execution, raw)
        delivered = record.delivered + (record.result or {}).get("accepted", [])
        return cls(
            id=execution,
            event_id=record.event_id,
            trigger=record.trigger,
            status=record.status,
            scheduled_for=record.scheduled_for,
            started_at=record.started_at,
            attempts=record.attempts,
            error=record.error or "",
            delivered=tuple(sorted({address.lower() for address in delivered})),
        )

    def line(self) -> str:
        started = clock(self.started_at) if self.started_at else "-"
        return (
            f"record {self.id}: trigger {self.trigger}, {self.status}, scheduled_for "
            f"{clock(self.scheduled_for)}, started_at {started}, attempts {self.attempts}, "
            f"delivered {list(self.delivered)}, error {self.error!r}"
        )


def read_records(client: redis.Redis) -> dict[str, Record]:
    keys = list(client.scan_iter(match=Keys(PREFIX).instance("*"), count=1000))
    records: dict[str, Record] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.hgetall(key)
        for key, raw in zip(chunk, pipe.execute(), strict=True):
            if raw:
                execution = key.rsplit(":", 1)[1]
                records[execution] = Record.from_hash(execution, raw)
    return records


def unfinished(client: redis.Redis) -> int:
    with contextlib.suppress(redis.RedisError):
        return sum(r.status not in FINISHED for r in read_records(client).values())
    return -1


def wait_settled(store: RedisServer, sink: Sink, bound: float, say: Say) -> float:
    """Poll until no execution is queued, running or retrying and the SMTP server has been
    quiet for QUIET seconds, twice in a row, or until ``bound``; the seconds it took."""
    started = time.monotonic()
    calm = 0
    while calm < 2 and time.monotonic() - started < bound:
        time.sleep(1)
        busy = unfinished(store.client())
        calm = calm + 1 if busy == 0 and sink.quiet_for() > QUIET else 0
    took = time.monotonic() - started
    say(f"settled in {took:.1f} s" if calm >= 2 else f"not settled after {bound:.0f} s")
    return took


# -- the checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    fatal: bool
    meaning: str


CHECKS = (
    Check(
        "lost occurrences",
        True,
        "an occurrence due while its event was active (edges excepted) with no record",
    ),
    Check(
        "lost triggers and sends",
        True,
        "a trigger or send_message answered 200 whose record is missing",
    ),
    Check("duplicate records", True, "a second record of one occurrence"),
    Check(
        "unexpected records",
        True,
        "a record on none of its event's schedules, or more than the requests made",
    ),
    Check("stuck", True, "a record still queued, running or retrying after settling"),
    Check(
        "duplicate emails",
        True,
        "another email of one execution to one recipient, but for SMTP-window re-sends",
    ),
    Check(
        "smtp-window re-sends",
        False,
        "another email with the first copy's Message-ID whose client was stopped or killed "
        "within 1 s of that copy's 250 and had not spoken since: the window RFC 5321 leaves open",
    ),
    Check(
        "ledger lies",
        False,
        "an email with no record, or whose record is failed, cancelled, missed or skipped "
        "without listing it as delivered; a succeeded record with a recipient that got none",
    ),
    Check(
        "partial deliveries",
        False,
        "an email of a failed or cancelled record that lists its recipient as delivered",
    ),
    Check(
        "sent after pause/delete",
        True,
        "an email whose SMTP transaction began after the pause or delete answered "
        "(more than IN_FLIGHT later)",
    ),
    Check(
        "finished after pause/delete",
        False,
        "an email whose transaction began before the answer and ended after it (allowed)",
    ),
    Check(
        "sent early",
        True,
        "an email whose DATA began more than 1 s before its record's scheduled_for",
    ),
    Check(
        "API differs from store",
        False,
        "an execution of a live event that the API lists with another status, or not at all",
    ),
)


@dataclass(frozen=True)
class Finding:
    check: str  # a CHECKS name
    execution: str  # the execution the evidence is about ("" when there is none)
    text: str


@dataclass
class Evidence:
    """What the checks read: the records, the SMTP transactions, what the requests did."""

    records: dict[str, Record]
    transactions: list[Transaction]
    events: list[Tracked]  # those created
    sends: list[SendCall]
    unsure_sends: int
    listed: dict[str, dict[str, str]]  # event id -> execution id -> status, from the API
    chaos: Chaos  # which process groups it stopped and killed, and when
    names: dict[int, str]  # process group -> process name

    @cached_property
    def by_event(self) -> dict[str, list[Record]]:
        grouped: dict[str, list[Record]] = defaultdict(list)
        for record in self.records.values():
            grouped[record.event_id].append(record)
        return grouped

    @cached_property
    def tracked(self) -> dict[str, Tracked]:
        return {event.id: event for event in self.events}

    @cached_property
    def of_execution(self) -> dict[str, list[Transaction]]:
        grouped: dict[str, list[Transaction]] = defaultdict(list)
        for transaction in sorted(self.transactions, key=lambda t: t.data_start):
            grouped[transaction.instance].append(transaction)
        return grouped

    @cached_property
    def emails(self) -> dict[tuple[str, str], list[Transaction]]:
        """Delivered emails by (execution, recipient), oldest first."""
        grouped: dict[tuple[str, str], list[Transaction]] = defaultdict(list)
        for execution, transactions in self.of_execution.items():
            for transaction in filter(lambda t: t.delivered, transactions):
                for recipient in transaction.recipients:
                    grouped[(execution, recipient)].append(transaction)
        return grouped

    @cached_property
    def sent_to(self) -> dict[str, tuple[str, ...]]:
        return {send.id: send.recipients for send in self.sends}

    def intended(self, record: Record) -> tuple[str, ...]:
        if record.trigger == "api":
            return self.sent_to.get(record.id, ())
        event = self.tracked.get(record.event_id)
        return event.plan.recipients if event else ()


def check_occurrences(evidence: Evidence) -> Iterator[Finding]:
    for event in evidence.events:
        by_time: dict[int, list[Record]] = defaultdict(list)
        for record in evidence.by_event.get(event.id, []):
            if record.trigger == "schedule":
                by_time[record.scheduled_for].append(record)
        for at, same in by_time.items():
            first, *extra = sorted(same, key=lambda r: (r.started_at or math.inf, r.id))
            text = f"{event.plan.uid}: {len(same)} records of the occurrence at {clock(at)}; "
            text += f"the first: {first.id} ({first.status})"
            yield from (Finding("duplicate records", record.id, text) for record in extra)
            if not any(grid.contains(at) for grid in event.grids):
                text = f"{event.plan.uid}: a record at {clock(at)}, on none of its schedules"
                yield from (Finding("unexpected records", r.id, text) for r in same)
        for window in event.windows:
            for at in window.grid.occurrences(window.start, window.end):
                if at not in by_time:
                    yield Finding("lost occurrences", "", lost(event, window, at, by_time))


def lost(event: Tracked, window: Window, at: int, by_time: dict[int, list[Record]]) -> str:
    times = sorted(by_time)
    near = [t for t in times if t < at][-2:] + [t for t in times if t > at][:2]
    records = ", ".join(f"{clock(t)} {'/'.join(r.status for r in by_time[t])}" for t in near)
    return (
        f"{event.plan.uid} (id {event.id}, {window.grid}): no record of the occurrence at "
        f"{clock(at)}, due while active from {clock(window.start)} to {clock(window.end)}; "
        f"records around it: {records or 'none'}"
    )


def check_requests(evidence: Evidence) -> Iterator[Finding]:
    """Triggers and sends: a record for each 200, and none beyond the requests that may
    have made one (those that got no answer or a 5xx)."""
    for event in evidence.events:
        manual = [r for r in evidence.by_event.get(event.id, []) if r.trigger == "manual"]
        ok, unsure = event.triggers["ok"], event.triggers["unsure"]
        text = f"{event.plan.uid}: {ok} triggers answered 200 ({unsure} unanswered or 5xx), "
        text += f"{len(manual)} manual records"
        for _ in range(ok - len(manual)):
            yield Finding("lost triggers and sends", "", text)
        for record in manual[ok + unsure :]:
            yield Finding("unexpected records", record.id, text)
    sent = {s.id for s in evidence.sends}
    for missing in sent - evidence.records.keys():
        yield Finding("lost triggers and sends", missing, "send_message answered 200, no record")
    extra = [r for r in evidence.records.values() if r.trigger == "api" and r.id not in sent]
    text = f"{len(extra)} api records that no 200 named, {evidence.unsure_sends} sends unanswered"
    for record in extra[evidence.unsure_sends :]:
        yield Finding("unexpected records", record.id, text)
    for record in evidence.records.values():
        if record.event_id and record.event_id not in evidence.tracked:
            yield Finding("unexpected records", record.id, "a record of an unknown event")


def check_stuck(evidence: Evidence) -> Iterator[Finding]:
    for record in evidence.records.values():
        if record.status not in FINISHED:
            yield Finding("stuck", record.id, f"still {record.status} after settling")


def check_emails(evidence: Evidence) -> Iterator[Finding]:
    for (execution, recipient), copies in evidence.emails.items():
        first = copies[0]
        for copy in copies[1:]:
            window = copy.message_id == first.message_id and interrupted(evidence, first, copy)
            check = "smtp-window re-sends" if window else "duplicate emails"
            yield Finding(check, execution, f"{len(copies)} emails to {recipient}")
        yield from ledger(evidence, execution, recipient, first)
    for record in evidence.records.values():
        for recipient in evidence.intended(record) if record.status == "succeeded" else ():
            if (record.id, recipient) not in evidence.emails:
                yield Finding("ledger lies", record.id, f"succeeded, no email to {recipient}")


def interrupted(evidence: Evidence, first: Transaction, repeat: Transaction) -> bool:
    """Whether the first copy's client could not have read its 250 before the repeat began:
    it was stopped or killed while its transaction was under way or within WRITE_WINDOW
    after the 250, and had not spoken again. (A client killed just as its message reached
    the server left it accepted: the server never hears that nobody read its 250.)"""
    if first.acknowledged <= repeat.data_start:
        return False
    window = (first.began - WRITE_WINDOW, first.data_end + WRITE_WINDOW)
    stopped = any(
        group == first.client and start <= window[1] and end >= window[0]
        for group, start, end in evidence.chaos.stops
    )
    killed = any(
        group == first.client and window[0] <= at <= window[1] for group, at in evidence.chaos.kills
    )
    return stopped or killed


def ledger(
    evidence: Evidence, execution: str, recipient: str, first: Transaction
) -> Iterator[Finding]:
    record = evidence.records.get(execution)
    if record is None:
        yield Finding("ledger lies", execution, f"an email to {recipient} has no record")
    elif record.status in NOT_SENT and recipient in record.delivered:
        yield Finding("partial deliveries", execution, f"{record.status}; {recipient} has it")
    elif record.status in NOT_SENT:
        text = f"{record.status}, yet {recipient} got it at {clock(first.data_start)}"
        yield Finding("ledger lies", execution, text)


def check_timing(evidence: Evidence) -> Iterator[Finding]:
    """Emails sent early, or after their event's pause or delete answered."""
    for (execution, recipient), copies in evidence.emails.items():
        record = evidence.records.get(execution)
        for copy in copies if record else ():
            early = record.scheduled_for - copy.data_start
            if early > 1:
                text = f"to {recipient}: DATA at {clock(copy.data_start)}, {early:.1f} s early"
                yield Finding("sent early", execution, text)
            yield from after_quiet(evidence, record, recipient, copy)


def after_quiet(
    evidence: Evidence, record: Record, recipient: str, copy: Transaction
) -> Iterator[Finding]:
    """A pause or delete stops an execution before its next copy: a copy may finish after
    the answer only when its transaction began before it, or at most IN_FLIGHT later (the
    worker checked the event just before it began)."""
    event = evidence.tracked.get(record.event_id)
    for since, until in event.quiet if event else ():
        if since < copy.data_start < until:
            check = "sent after pause/delete"
            if copy.began <= since + IN_FLIGHT:
                check = "finished after pause/delete"
            text = f"{event.plan.uid} to {recipient}: MAIL at {clock(copy.began)}, "
            text += f"DATA at {clock(copy.data_start)}, after the pause or delete answered "
            text += f"at {clock(since)}"
            yield Finding(check, record.id, text)


def check_listing(evidence: Evidence) -> Iterator[Finding]:
    for event_id, listed in evidence.listed.items():
        stored = {r.id: r.status for r in evidence.by_event.get(event_id, [])}
        for execution in stored.keys() | listed.keys():
            if stored.get(execution) != listed.get(execution):
                text = (
                    f"the API lists {listed.get(execution)}, the store has {stored.get(execution)}"
                )
                yield Finding("API differs from store", execution, text)


def run_checks(evidence: Evidence) -> dict[str, list[Finding]]:
    found: dict[str, list[Finding]] = {check.name: [] for check in CHECKS}
    checks = (
        check_occurrences,
        check_requests,
        check_stuck,
        check_emails,
        check_timing,
        check_listing,
    )
    for check in checks:
        for finding in check(evidence):
            found[finding.check].append(finding)
    return found


# -- the report ------------------------------------------------------------------------------


class Logs:
    """Every process log of the run, to quote the lines that name an execution."""

    def __init__(self, directory: Path) -> None:
        self.lines = [
            (path.stem, line.strip())
            for path in sorted(directory.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
        ]

    def naming(self, execution: str, limit: int = 12) -> list[str]:
        return [f"  {name}: {line}" for name, line in self.lines if execution in line][:limit]


def describe(execution: str, evidence: Evidence, logs: Logs) -> list[str]:
    record = evidence.records.get(execution)
    lines = [record.line() if record else f"no record of {execution}"]
    event = evidence.tracked.get(record.event_id) if record else None
    if event:
        quiet = [f"{clock(a)}-{clock(b) if b < math.inf else ''}" for a, b in event.quiet]
        lines.append(f"event {event.plan.uid}: schedules {event.grids}, quiet {quiet}")
    for t in evidence.of_execution.get(execution, []):
        lines.append(smtp_line(t, evidence.names.get(t.client, "client unknown")))
    return lines + logs.naming(execution)


def smtp_line(t: Transaction, client: str) -> str:
    to = ",".join(t.recipients) + ("" if t.to == ",".join(t.recipients) else f" (To: {t.to})")
    heard = f" (client spoke again {clock(t.acknowledged)})" if t.acknowledged < math.inf else ""
    return (
        f"  smtp session {t.session} ({client}) DATA {clock(t.data_start)}-{clock(t.data_end)} "
        f"to {to} {t.message_id} -> {t.reply}{heard}"
    )


def checks_table(found: dict[str, list[Finding]]) -> list[str]:
    lines = ["| check | count | verdict | what it counts |", "|---|---:|---|---|"]
    for check in CHECKS:
        count = len(found[check.name])
        verdict = "ok" if not count else ("**FAIL**" if check.fatal else "note")
        lines.append(f"| {check.name} | {count} | {verdict} | {check.meaning} |")
    return lines


def examples(
    found: dict[str, list[Finding]], evidence: Evidence, logs: Logs, limit: int
) -> list[str]:
    lines: list[str] = []
    for check in CHECKS:
        for finding in found[check.name][:limit]:
            lines += ["", f"**{check.name}**: {finding.text}"]
            if finding.execution:
                lines += ["", "```text", *describe(finding.execution, evidence, logs), "```"]
    return lines


def counted(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items())) or "none"


@dataclass
class Outcome:
    code: str  # the version under test, when the run began
    driver: Driver
    chaos: Chaos
    evidence: Evidence
    settled: float
    surprises: list[str]


def run_facts(args: argparse.Namespace, seed: int, outcome: Outcome) -> list[tuple[str, str]]:
    driver, evidence = outcome.driver, outcome.evidence
    calls, events = driver.calls, evidence.events
    skew = f"beat slot 0 +{SKEW} s, worker slot 0 -{SKEW} s" if args.skew else "none"
    every = sum(bool(e.plan.step) for e in events)
    changes = ", ".join(f"{w} {calls[f'{w} 200']}" for w in ("update", "pause", "resume", "delete"))
    unsure = sum(e.triggers["unsure"] for e in events)
    indefinite = sum(n for call, n in calls.items() if call.split(" ", 1)[1][0] not in "234")
    statuses = Counter(r.status for r in evidence.records.values())
    return [
        ("seed", str(seed)),
        ("code", outcome.code),
        (
            "chaos",
            f"{args.minutes:g} min, {args.beats} beats, {args.workers} workers, "
            f"lease {LEASE} s, skew: {skew}",
        ),
        ("faults", counted(outcome.chaos.applied)),
        ("events created", f"{len(events)} ({every} every N secs, {len(events) - every} one-time)"),
        ("changes answered 200", changes),
        (
            "triggers",
            f"{calls['trigger 200']} answered 200, {calls['trigger 409']} 409, "
            f"{unsure} unanswered or 5xx",
        ),
        (
            "send_message",
            f"{len(driver.sends)} answered 200, {driver.unsure_sends} unanswered or 5xx",
        ),
        ("calls answered 5xx or not at all", str(indefinite)),
        ("SMTP answers", counted(Counter(t.reply.split(" ")[0] for t in evidence.transactions))),
        ("emails delivered", str(sum(t.delivered for t in evidence.transactions))),
        ("execution records", f"{len(evidence.records)} ({counted(statuses)})"),
        ("settled in", f"{outcome.settled:.1f} s"),
        ("processes that ended on their own", ", ".join(outcome.surprises) or "none"),
    ]


def report(args: argparse.Namespace, seed: int, outcome: Outcome, logs: Path) -> bool:
    """Print the run and the checks as Markdown; True when no fatal check failed."""
    found = run_checks(outcome.evidence)
    lines = ["", f"## Chaos run, seed {seed}", "", "| run | |", "|---|---|"]
    facts = run_facts(args, seed, outcome)
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in facts]
    lines += ["", *checks_table(found)]
    shown = examples(found, outcome.evidence, Logs(logs), args.examples)
    if shown:
        lines += ["", "### Examples", *shown]
    print("\n".join(lines), flush=True)
    return not any(found[check.name] for check in CHECKS if check.fatal)


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, seed: int, logs: Path, say: Say) -> Outcome:
    sink = Sink(random.Random(f"{seed}:smtp"), faults=args.faults)
    controller = Controller(sink, hostname=HOST, port=free_port())
    controller.start()
    supervisor = Supervisor(logs)
    chaos: Chaos | None = None
    code = code_version()
    try:
        cluster = start_cluster(args, supervisor, controller.port)
        api = Api(cluster.web_url, create_project(supervisor.env))
        rng = random.Random(seed)
        plans, steps = plan_workload(rng, args.minutes * 60, seed)
        faults = plan_faults(rng, args.minutes * 60) if args.faults else []
        driver = Driver(api, plans, seed, say)
        say.origin = time.time()
        say(f"chaos begins: {len(plans)} events planned, {len(faults)} faults")
        chaos = Chaos(cluster, faults, say)
        chaos.start()
        driver.run(steps, say.origin + args.minutes * 60, sink)
        settled = settle(cluster, driver, chaos, sink, say)
        evidence = collect(cluster, driver, chaos, sink)
        return Outcome(code, driver, chaos, evidence, settled, supervisor.surprises())
    finally:  # stopping first: the chaos thread can start nothing once the supervisor closes
        if chaos is not None:
            chaos.ending.set()
        supervisor.stop_all()
        controller.stop()


def settle(cluster: Cluster, driver: Driver, chaos: Chaos, sink: Sink, say: Say) -> float:
    chaos.ending.set()
    chaos.join()
    if chaos.error is not None:
        raise chaos.error
    replaced = cluster.heal()
    say(f"settling: no new work; every process up again (replaced: {replaced or 'none'})")
    driver.settle()
    say("settling: every active event paused; waiting for the executions to finish")
    return wait_settled(cluster.store, sink, max(120.0, 3.0 * LEASE), say)


def collect(cluster: Cluster, driver: Driver, chaos: Chaos, sink: Sink) -> Evidence:
    created = [e for e in driver.events if e.id]
    listed = {e.id: driver.api.executions(e.plan.uid) for e in created if e.state == "paused"}
    records = read_records(cluster.store.client())
    names = {service.process.pid: service.name for service in cluster.supervisor.started}
    return Evidence(
        records, sink.snapshot(), created, driver.sends, driver.unsure_sends, listed, chaos, names
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="the run's seed (default: a random one)")
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes of chaos (2)")
    parser.add_argument("--keep", type=Path, help="keep the process logs in this new directory")
    parser.add_argument(
        "--skew",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run one beat {SKEW} s ahead and one worker {SKEW} s behind",
    )
    parser.add_argument(
        "--faults",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="kill, stop and restart processes, and answer some SMTP messages only after the lease",
    )
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--beats", type=int, default=2)
    parser.add_argument("--examples", type=int, default=2, help="examples per problem (2)")
    args = parser.parse_args(argv)
    if args.minutes < 1 or args.workers < 1 or args.beats < 1:
        parser.error("--minutes must be at least 1, --workers and --beats at least 1")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: give a new or empty directory")
    return args


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does: every process is stopped."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    say = Say()
    say(
        f"seed {seed}, {args.minutes:g} minutes, faults {'on' if args.faults else 'off'}, "
        f"skew {'on' if args.skew else 'off'}"
    )
    with contextlib.ExitStack() as stack:
        logs = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        logs.mkdir(parents=True, exist_ok=True)
        try:
            outcome = run(args, seed, logs, say)
        except HarnessError as exc:
            say(f"the run is void: {exc}")
            return 2
        except KeyboardInterrupt:
            say("interrupted; every process is stopped")
            return 130
        ok = report(args, seed, outcome, logs)
    if args.keep:
        print(f"\nlogs: {args.keep}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
