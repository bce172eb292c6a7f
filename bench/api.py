"""How fast does the web process answer? create_scheduled_events latency and trigger
throughput, over HTTP, against gunicorn started as the Procfile starts it.

The benchmark:

1. starts its own Redis-compatible server (the embedded Valkey, on a free port; it
   never touches 127.0.0.1:6379) and creates a project with the store directly;
2. starts ``gunicorn --config deploy/gunicorn.conf.py "app:create_app()"`` (the
   Procfile's web line: gthread workers, WEB_CONCURRENCY workers x 4 threads, access
   log on) with ``MAIL_URL=console://`` and both rate limits off, on a free port, and
   waits for ``GET /healthz``;
3. create: POSTs ``/v.1.1/create_scheduled_events`` with 1,000 events (``every 5 mins``,
   a ~220-byte send_message payload each, fresh uids) ``--create-calls`` times from one
   client after one warm-up call, and reports the median and slowest call;
4. trigger: creates 200 events with ``"overlap": "allow"``, then for ``--seconds``
   fires ``POST /api/unstable/schedules/{id}/trigger`` (Bearer) round-robin over them
   from C client threads (one ``requests.Session`` each), for every C in ``--clients``.
   It counts answers by status, reports requests/s and the p50/p99 latency, and the
   CPU seconds the web processes, the Redis server and this load generator used.
   No worker runs, so every accepted trigger stays in the broker: the growth of
   ``LLEN <queue>`` must equal the number of 200 answers.

Every wait is bounded; gunicorn and the server are stopped in ``finally`` blocks.

    .venv/bin/python bench/api.py [--seconds 10] [--clients 8 16] [--web-concurrency 2]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from dispatch import code_version, cpu_seconds, stop  # noqa: E402

from app.core.keys import Keys  # noqa: E402
from app.core.redis_client import connect  # noqa: E402
from app.core.store import Store  # noqa: E402
from app.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

PREFIX = "sbapibench"
QUEUE = "sbapibench"
BATCH = 1000  # events per create_scheduled_events call (SENDBEAT_BATCH_LIMIT)
TRIGGER_EVENTS = 200
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0


# -- the workload ------------------------------------------------------------------------


def event(uid: str, **extra: Any) -> dict[str, Any]:
    """One create_scheduled_event body: the payload of bench/dispatch.py, every 5 mins."""
    arguments = {
        "recipients": ["alice@example.com", "bob@example.org"],
        "headers": {"from": "Reports <reports@example.com>", "subject": f"Report {uid}"},
        "content": {"text/plain": "Hello, here is your daily report: everything ran on time."},
    }
    return {"uid": uid, "schedule": "every 5 mins", "metadata": {"arguments": arguments}, **extra}


@dataclass
class Web:
    base: str
    key: str
    session: requests.Session = field(default_factory=requests.Session)

    def create_events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = self.session.post(
            f"{self.base}/v.1.1/create_scheduled_events",
            json={"api_key": self.key, "events": events},
            timeout=REQUEST_TIMEOUT,
        )
        if response.status_code != 200:
            raise RuntimeError(f"create_scheduled_events: {response.status_code} {response.text}")
        return list(response.json()["response"]["message"])


# -- processes and the server ------------------------------------------------------------


def web_env(redis_url: str, port: int, concurrency: int) -> dict[str, str]:
    """The environment tests/integration/conftest.py gives its processes, with no mail
    and no rate limits (they would measure the limiter, not the API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDBEAT_", "MAIL_"))}
    env.pop("BROKER_URL", None)
    env.update(
        REDIS_URL=redis_url,
        PORT=str(port),
        SENDBEAT_KEY_PREFIX=PREFIX,
        SENDBEAT_QUEUE=QUEUE,
        MAIL_URL="console://",
        SENDBEAT_RATE_LIMIT_MESSAGING="none",
        SENDBEAT_RATE_LIMIT_SCHEDULES="none",
        WEB_CONCURRENCY=str(concurrency),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_web(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The Procfile's web line, with the venv's gunicorn."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    command = [gunicorn, "--config", "deploy/gunicorn.conf.py", "app:create_app()"]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def wait_healthy(base: str, web: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({web.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer /healthz within {START_TIMEOUT:.0f} s")


def stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM gunicorn (it drains its workers), then SIGKILL whatever is left."""
    if process is None:
        return
    stop(process, timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def web_cpu(web: subprocess.Popen[bytes]) -> float:
    """CPU seconds of the gunicorn master and its workers."""
    master = psutil.Process(web.pid)
    total = 0.0
    for process in [master, *master.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


# -- measuring -----------------------------------------------------------------------------


@dataclass
class CreateResult:
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def events_per_second(self) -> float:
        return BATCH / self.median


def measure_create(web: Web, calls: int) -> CreateResult:
    web.create_events([event(f"warmup-{i:04d}") for i in range(BATCH)])  # not counted
    seconds = []
    for call in range(calls):
        batch = [event(f"create-{call}-{i:04d}") for i in range(BATCH)]
        started = time.perf_counter()
        created = web.create_events(batch)
        seconds.append(time.perf_counter() - started)
        if len(created) != BATCH:
            raise RuntimeError(f"created {len(created)} events, not {BATCH}")
    return CreateResult(seconds)


@dataclass
class TriggerResult:
    clients: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    queued: int  # growth of LLEN <queue> during the run
    web_cpu: float
    server_cpu: float
    client_cpu: float

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def fire_triggers(
    base: str, key: str, ids: list[str], clients: int, seconds: float
) -> tuple[float, list[float], dict[int, int]]:
    """C threads, each with its own Session, POST triggers round-robin over ``ids``
    until ``seconds`` have passed. Returns the elapsed time, the latencies and counts."""
    next_id = itertools.count()  # shared: the threads take ids in turn
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    start = threading.Barrier(clients + 1)
    stop_at = 0.0

    def client() -> None:
        session = requests.Session()
        mine: list[float] = []
        counts: dict[int, int] = {}
        start.wait()
        while time.perf_counter() < stop_at:
            with lock:
                event_id = ids[next(next_id) % len(ids)]
            url = f"{base}/api/unstable/schedules/{event_id}/trigger"
            began = time.perf_counter()
            try:
                status = session.post(url, headers=headers, timeout=REQUEST_TIMEOUT).status_code
            except requests.RequestException:
                status = 0  # no answer at all
            mine.append(time.perf_counter() - began)
            counts[status] = counts.get(status, 0) + 1
        session.close()
        with lock:
            latencies.extend(mine)
            for status, n in counts.items():
                statuses[status] = statuses.get(status, 0) + n

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at = began + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + REQUEST_TIMEOUT + 5)
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("a client thread did not finish")
    return time.perf_counter() - began, latencies, statuses


def measure_triggers(
    web: Web, redis: Redis, server: subprocess.Popen[bytes], clients: int, seconds: float
) -> TriggerResult:
    created = web.create_events(
        [event(f"trigger-c{clients}-{i:03d}", overlap="allow") for i in range(TRIGGER_EVENTS)]
    )
    ids = [record["id"] for record in created]
    server_pid = int(redis.info("server")["process_id"])
    queued_before = int(redis.llen(QUEUE))
    cpu_before = (web_cpu(server), cpu_seconds(server_pid), own_cpu())
    elapsed, latencies, statuses = fire_triggers(web.base, web.key, ids, clients, seconds)
    cpu_after = (web_cpu(server), cpu_seconds(server_pid), own_cpu())
    web_s, server_s, client_s = (a - b for a, b in zip(cpu_after, cpu_before, strict=True))
    queued = int(redis.llen(QUEUE)) - queued_before
    return TriggerResult(clients, elapsed, latencies, statuses, queued, web_s, server_s, client_s)


# -- report --------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def print_rows(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def print_report(args: argparse.Namespace, create: CreateResult, triggers: list[TriggerResult]):
    print(f"code: {code_version()}; {os.cpu_count()} CPUs; gunicorn gthread, ", end="")
    print(f"WEB_CONCURRENCY={args.web_concurrency} x 4 threads")
    print(f"command: {' '.join(['python', 'bench/api.py', *sys.argv[1:]])}")
    print()
    calls = ", ".join(ms(s) for s in create.seconds)
    print_rows(
        [
            ("create_scheduled_events", "events/call", "median ms", "max ms", "events/s"),
            ("1 client", f"{BATCH:,}", ms(create.median), ms(max(create.seconds)),
             f"{create.events_per_second:,.0f}"),
        ]
    )  # fmt: skip
    print(f"calls (ms): {calls}")
    print()
    header = ("trigger", "s", "requests", "200", "other", "req/s", "p50 ms", "p99 ms")
    rows = [(*header, "queued", "web CPU s", "Redis CPU s", "client CPU s")]
    for t in triggers:
        rows.append(
            (f"{t.clients} clients", f"{t.seconds:.1f}", f"{len(t.latencies):,}", f"{t.ok:,}",
             f"{t.failed:,}", f"{t.rate:,.0f}", ms(t.percentile(50)), ms(t.percentile(99)),
             f"{t.queued:,}", f"{t.web_cpu:.1f}", f"{t.server_cpu:.1f}", f"{t.client_cpu:.1f}")
        )  # fmt: skip
    print_rows(rows)
    for t in triggers:
        others = {s: n for s, n in t.statuses.items() if s != 200}
        if others:
            print(f"{t.clients} clients: non-200 answers by status (0 = no answer): {others}")
        verdict = "ok" if t.queued == t.ok else "MISMATCH"
        print(f"{t.clients} clients: queue grew by {t.queued:,}, 200 answers {t.ok:,}: {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per trigger run")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[8], help="concurrent client threads"
    )
    parser.add_argument("--web-concurrency", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--create-calls", type=int, default=5, help="timed create calls")
    parser.add_argument("--logs", type=Path, help="keep the gunicorn log in this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sendbeat-bench-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / "web.log"
        server = EmbeddedRedis(Path(tmp) / "redis", persistent=False).start()
        redis = connect(server.url)
        web_process = None
        try:
            _, key = Store(redis, Keys(PREFIX)).create_project("bench", int(time.time()))
            port = free_port()
            web = Web(f"http://127.0.0.1:{port}", key)
            web_process = start_web(web_env(server.url, port, args.web_concurrency), log)
            wait_healthy(web.base, web_process, log)
            print("create_scheduled_events ...", file=sys.stderr, flush=True)
            create = measure_create(web, args.create_calls)
            triggers = []
            for clients in args.clients:
                print(f"trigger, {clients} clients ...", file=sys.stderr, flush=True)
                triggers.append(measure_triggers(web, redis, web_process, clients, args.seconds))
        finally:
            stop_group(web_process)
            redis.close()
            server.stop()
    print_report(args, create, triggers)
    return 0 if all(t.queued == t.ok and not t.failed for t in triggers) else 1


if __name__ == "__main__":
    sys.exit(main())
