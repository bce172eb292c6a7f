"""How many messages per second does a worker get into an SMTP server? End to end:
send_message requests queued through the API, one real Celery worker, a local SMTP sink.

The benchmark:

1. starts its own Redis-compatible server (the embedded Valkey, on a free port; it
   never touches 127.0.0.1:6379), creates a project with the store, and starts an
   aiosmtpd SMTP server in this process on a free port whose handler only counts
   messages (and notes each one's ``X-Sendbeat-Instance`` header), with no delay;
2. queues N messages with the Flask test client of ``app.create_app(settings)`` in this
   process: ``POST /v.1.1/send_message`` with a ~200-byte payload (one recipient:
   sendbeat sends one message per recipient), one after the other, before any worker
   runs. Each call stores a queued execution record and publishes its task message
   (LLEN must then be N);
3. starts ONE real worker process, ``python -m celery --app workers.main worker
   --concurrency C --without-gossip --without-mingle --loglevel INFO`` (the Procfile line
   with C pool processes), no beat, with the environment of
   tests/integration/conftest.py and ``MAIL_URL=smtp://127.0.0.1:<sink>``;
4. measures from the first message the sink receives to the N-th (**msgs/s** = N /
   that span, the worker draining a full queue), and also from the worker's start,
   boot included; then checks that every execution record ends ``succeeded`` and the
   sink got exactly N messages, one per execution.

Every wait is bounded (``--timeout`` for the sending); the worker, the SMTP server and
the Redis server are stopped in ``finally`` blocks.

    .venv/bin/python bench/send.py [--n 2000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from dispatch import code_version, stop  # noqa: E402

from app import create_app  # noqa: E402
from app.core.keys import Keys  # noqa: E402
from app.core.records import InstanceStatus  # noqa: E402
from app.core.redis_client import connect  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.core.store import Store  # noqa: E402
from app.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

PREFIX = "sbsendbench"
QUEUE = "sbsendbench"
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 30.0  # for the last records to turn succeeded after the last message
INSTANCE_HEADER = re.compile(rb"^X-Sendbeat-Instance:\s*(\S+)", re.I | re.M)


# -- the SMTP sink ---------------------------------------------------------------------------


@dataclass
class CountingSink:
    """An aiosmtpd handler that accepts everything at once and counts it."""

    times: list[float] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        found = INSTANCE_HEADER.search(envelope.content)
        with self.lock:
            self.times.append(time.time())
            self.instances.append(found.group(1).decode() if found else "")
        return "250 Message accepted for delivery"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.times)


# -- the workload ------------------------------------------------------------------------


def arguments(i: int) -> dict[str, Any]:
    """send_message arguments like bench/dispatch.py's, with one recipient: sendbeat sends
    one message per recipient, so one request is one message."""
    return {
        "recipients": ["alice@example.com"],
        "headers": {"from": "Reports <reports@example.com>", "subject": f"Report {i:06d}"},
        "content": {"text/plain": "Hello, here is your daily report: everything ran on time."},
    }


def queue_messages(settings: Settings, store: Store, key: str, n: int) -> list[str]:
    """POST /v.1.1/send_message N times through the Flask test client; the ids."""
    client = create_app(settings, store=store).test_client()
    ids = []
    for i in range(n):
        body = {"api_key": key, "uid": f"bench-{i:06d}", "arguments": arguments(i)}
        response = client.post("/v.1.1/send_message", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"send_message: {response.status_code} {response.get_data()!r}")
        ids.append(response.get_json()["data"]["message"]["id"])
    return ids


# -- the worker --------------------------------------------------------------------------


def worker_env(settings: Settings) -> dict[str, str]:
    """tests/integration/conftest.py's process_env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDBEAT_", "MAIL_"))}
    env.pop("BROKER_URL", None)
    env.update(
        REDIS_URL=settings.redis_url,
        MAIL_URL=settings.mail_url,
        SENDBEAT_KEY_PREFIX=settings.key_prefix,
        SENDBEAT_QUEUE=settings.queue,
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "--app", "workers.main", "worker"]
    command += ["--concurrency", str(concurrency), "--without-gossip", "--without-mingle"]
    command += ["--loglevel", "INFO"]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_worker(worker: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (warm shutdown), then SIGKILL any pool child left behind."""
    if worker is None:
        return
    stop(worker, timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    concurrency: int
    enqueue_s: float
    queued: int  # LLEN after queueing
    started_at: float  # the worker process' start (time.time())
    received: int = 0
    first_at: float | None = None
    last_at: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    distinct: int = 0  # distinct instance ids among the messages received
    note: str = ""

    @property
    def complete(self) -> bool:
        return self.received == self.n

    @property
    def rate(self) -> float | None:
        """N / (last message - first message): the worker draining a full queue."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return self.received / (self.last_at - self.first_at)

    @property
    def from_start(self) -> float | None:
        """N / (last message - worker start): boot and connection set-up included."""
        return None if self.last_at is None else self.received / (self.last_at - self.started_at)

    @property
    def ok(self) -> bool:
        succeeded = self.statuses.get(InstanceStatus.SUCCEEDED, 0)
        return self.complete and succeeded == self.n and self.distinct == self.n


def wait_for_messages(
    sink: CountingSink, n: int, worker: subprocess.Popen[bytes], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while sink.count < n:
        if worker.poll() is not None:
            return f"worker exited with code {worker.returncode}"
        if time.monotonic() > deadline:
            return f"only {sink.count:,} of {n:,} within {timeout:.0f} s"
        time.sleep(0.02)
    return ""


def final_statuses(store: Store, ids: list[str]) -> dict[str, int]:
    """Execution record statuses, waiting (bounded) until none is queued or running."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        counts: dict[str, int] = {}
        for instance_id in ids:
            instance = store.instance(instance_id)
            status = "missing" if instance is None else str(instance.status)
            counts[status] = counts.get(status, 0) + 1
        pending = counts.get(InstanceStatus.QUEUED, 0) + counts.get(InstanceStatus.RUNNING, 0)
        if not pending or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def run(args: argparse.Namespace, tmp: Path, logs: Path) -> Result:
    server = EmbeddedRedis(tmp / "redis", persistent=False).start()
    sink = CountingSink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    redis = connect(server.url)
    worker = None
    try:
        store = Store(redis, Keys(PREFIX))
        _, key = store.create_project("bench", int(time.time()))
        settings = Settings(
            redis_url=server.url,
            mail_url=f"smtp://127.0.0.1:{smtp.port}",
            key_prefix=PREFIX,
            queue=QUEUE,
            rate_limit_messaging="none",
        )
        began = time.perf_counter()
        ids = queue_messages(settings, store, key, args.n)
        enqueue_s = time.perf_counter() - began
        result = Result(args.n, args.concurrency, enqueue_s, int(redis.llen(QUEUE)), time.time())
        log = logs / f"worker-c{args.concurrency}.log"
        worker = start_worker(worker_env(settings), args.concurrency, log)
        result.note = wait_for_messages(sink, args.n, worker, args.timeout)
        with sink.lock:
            times, instances = sorted(sink.times), list(sink.instances)
        result.received = len(times)
        if times:
            result.first_at, result.last_at = times[0], times[-1]
        result.statuses = final_statuses(store, ids)
        time.sleep(0.5)  # a duplicate would arrive after the N-th: look again
        with sink.lock:
            result.received, instances = len(sink.times), list(sink.instances)
        result.distinct = len(set(instances) & set(ids))
        return result
    finally:
        stop_worker(worker)
        smtp.stop()
        redis.close()
        server.stop()


# -- report --------------------------------------------------------------------------------


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_report(args: argparse.Namespace, r: Result) -> None:
    print(f"code: {code_version()}; {os.cpu_count()} CPUs; worker --concurrency {r.concurrency}")
    print(f"command: {' '.join(['python', 'bench/send.py', *sys.argv[1:]])}")
    print()
    header = ("N", "C", "enqueue s", "enqueue/s", "queued", "first->last s", "msgs/s")
    rows = [(*header, "start->last s", "from start/s", "received", "succeeded")]
    span = None if r.first_at is None or r.last_at is None else r.last_at - r.first_at
    boot = None if r.last_at is None else r.last_at - r.started_at
    rows.append(
        (f"{r.n:,}", str(r.concurrency), f"{r.enqueue_s:.2f}", number(r.n / r.enqueue_s),
         f"{r.queued:,}", "-" if span is None else f"{span:.2f}", number(r.rate),
         "-" if boot is None else f"{boot:.2f}", number(r.from_start), f"{r.received:,}",
         f"{r.statuses.get(InstanceStatus.SUCCEEDED, 0):,}")
    )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    print("msgs/s = N / (last message - first message at the sink), the queue full from the")
    print("start; from start/s counts from the worker process' start (boot included)")
    print(f"execution statuses: {r.statuses}; distinct executions mailed: {r.distinct:,}")
    if r.note:
        print(f"incomplete: {r.note}")
    print("checks: " + ("ok" if r.ok else "FAILED") + f" (N = {r.n:,})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="messages to send")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for sending")
    parser.add_argument("--logs", type=Path, help="keep the worker log in this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sendbeat-bench-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        result = run(args, Path(tmp), logs)
    print_report(args, result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
