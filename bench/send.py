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
   runs. Each call stores a queued execution record and adds it to a task message
   (up to ``--batch``, SENDBEAT_TASK_BATCH, per message: the report's "task msgs" is
   the queue's LLEN, N for the anchor);
3. starts ONE real worker process, ``python -m celery --app workers.main worker
   --concurrency C --without-gossip --without-mingle --loglevel INFO`` (the Procfile line
   with C pool processes), no beat, with the environment of
   tests/integration/conftest.py and ``MAIL_URL=smtp://127.0.0.1:<sink>``;
4. measures from the first message the sink receives to the N-th (**msgs/s** = N /
   that span, the worker draining a full queue), and also from the worker's start,
   boot included; then checks that every execution record ends ``succeeded`` and the
   sink got exactly N messages, one per execution;
5. runs the same N through the anchor (``anchor_app.py``, a plain Celery task with
   smtplib, same flags) and through the ceiling (``smtp_blast.py``, a bare asyncio
   SMTP client with as many sessions), each against its own sink with the same delay.

Every wait is bounded (``--timeout`` for the sending); the worker, the SMTP server and
the Redis server are stopped in ``finally`` blocks.

    .venv/bin/python bench/send.py [--n 2000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
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
    """An aiosmtpd handler that counts what it accepts; it answers each message after
    ``delay`` seconds, as a relay on another host does (sessions wait concurrently)."""

    delay: float = 0.0
    times: list[float] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
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


def start_worker(
    env: dict[str, str], flags: list[str], log: Path, app: str = "workers.main"
) -> subprocess.Popen[bytes]:
    """The Procfile's worker line, with ``flags`` (--pool, --concurrency) added."""
    command = [sys.executable, "-m", "celery", "--app", app, "worker"]
    command += ["--loglevel", "INFO", "--without-gossip", "--without-mingle", *flags]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def worker_flags(args: argparse.Namespace) -> list[str]:
    """--concurrency when asked; the pool goes by SENDBEAT_WORKER_POOL (``pool_env``):
    Celery's --pool flag cannot pick prefork over a configured pool."""
    return [] if args.concurrency is None else ["--concurrency", str(args.concurrency)]


def pool_env(args: argparse.Namespace) -> dict[str, str]:
    return {} if args.pool is None else {"SENDBEAT_WORKER_POOL": args.pool}


def profile(worker: subprocess.Popen[bytes], output: Path) -> subprocess.Popen[bytes]:
    """py-spy samples the worker (and its pool children) while it drains the queue."""
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.pid)]
    command += ["--subprocesses", "--gil", "--duration", "15", "--rate", "200"]
    command += ["--output", str(output)]
    if output.suffix == ".txt":
        command += ["--format", "raw"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    kind: str  # "sendbeat", "anchor" or "ceiling"
    delay: float  # the sink's ms per message
    n: int
    enqueue_s: float
    queued: int  # the queue's length before the worker started
    started_at: float  # the worker process' start (time.time())
    received: int = 0
    first_at: float | None = None
    last_at: float | None = None
    cpu_first: float | None = None  # the worker's CPU seconds at the first message
    cpu_last: float | None = None  # ... and at the N-th
    sink_cpu: tuple[float, float] | None = None  # this process' (the sink's) CPU, the same
    rss_mib: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    distinct: int = 0  # distinct instance ids among the messages received
    note: str = ""

    @property
    def span(self) -> float | None:
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return self.last_at - self.first_at

    @property
    def rate(self) -> float | None:
        """N / (last message - first message): the worker draining a full queue."""
        return None if self.span is None else self.received / self.span

    @property
    def from_start(self) -> float | None:
        """N / (last message - worker start): boot and connection set-up included."""
        return None if self.last_at is None else self.received / (self.last_at - self.started_at)

    @property
    def cpu_per_k(self) -> float | None:
        if self.cpu_first is None or self.cpu_last is None or not self.received:
            return None
        return (self.cpu_last - self.cpu_first) * 1000 / self.received

    @property
    def sink_cpu_per_k(self) -> float | None:
        if self.sink_cpu is None or not self.received:
            return None
        return (self.sink_cpu[1] - self.sink_cpu[0]) * 1000 / self.received

    @property
    def ok(self) -> bool:
        succeeded = self.statuses.get(InstanceStatus.SUCCEEDED, 0)
        return self.received == self.n and succeeded == self.n and self.distinct == self.n


def group_usage(pgid: int) -> tuple[float, float]:
    """(CPU seconds, resident MiB) of every live process in a process group: the worker
    and, with prefork, its pool children (each started in its own session)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = rss = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] is the 5th field of stat: pgrp
            cpu += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cpu, rss


def wait_for_messages(
    sink: CountingSink, n: int, worker: subprocess.Popen[bytes], timeout: float, result: Result
) -> str:
    """Wait for the N-th message, noting the worker's CPU when the first arrives and
    when the last does."""
    deadline = time.monotonic() + timeout
    sink_first = 0.0
    while sink.count < n:
        if result.cpu_first is None and sink.count:
            result.cpu_first = group_usage(worker.pid)[0]
            sink_first = time.process_time()
        if worker.poll() is not None:
            return f"worker exited with code {worker.returncode}"
        if time.monotonic() > deadline:
            return f"only {sink.count:,} of {n:,} within {timeout:.0f} s"
        time.sleep(0.02)
    result.cpu_last, result.rss_mib = group_usage(worker.pid)
    result.sink_cpu = (sink_first, time.process_time())
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


def measure(
    sink: CountingSink,
    result: Result,
    worker: subprocess.Popen[bytes],
    args: argparse.Namespace,
) -> list[str]:
    """Drain: the timings and CPU of ``result``; the instance ids the sink saw."""
    spy = profile(worker, args.py_spy) if args.py_spy and result.kind == "sendbeat" else None
    result.note = wait_for_messages(sink, args.n, worker, args.timeout, result)
    with sink.lock:
        times = sorted(sink.times)
    result.received = len(times)
    if times:
        result.first_at, result.last_at = times[0], times[-1]
    if spy is not None:
        spy.wait(timeout=60)
    time.sleep(0.5)  # a duplicate would arrive after the N-th: look again
    with sink.lock:
        result.received = len(sink.times)
        return list(sink.instances)


def start_sink(delay: float) -> tuple[CountingSink, Controller]:
    """A counting SMTP server on a free port that answers each message after ``delay`` ms."""
    sink = CountingSink(delay=delay / 1000)
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    return sink, smtp


def measure_recordless(
    sink: CountingSink, result: Result, sender: subprocess.Popen[bytes], args: argparse.Namespace
) -> Result:
    """``measure`` for a sender that keeps no records (the anchor, the ceiling): each
    message received counts as one execution that succeeded."""
    measure(sink, result, sender, args)
    result.statuses = {InstanceStatus.SUCCEEDED: result.received}
    result.distinct = result.received
    return result


def run_sendbeat(
    args: argparse.Namespace, server: EmbeddedRedis, delay: float, logs: Path
) -> Result:
    sink, smtp = start_sink(delay)
    redis = connect(server.url)
    worker = None
    prefix = f"{PREFIX}{int(delay)}"
    try:
        store = Store(redis, Keys(prefix))
        _, key = store.create_project("bench", int(time.time()))
        settings = Settings(
            redis_url=server.url,
            mail_url=f"smtp://127.0.0.1:{smtp.port}",
            key_prefix=prefix,
            queue=prefix,
            rate_limit_messaging="none",
            task_batch=args.batch,
        )
        began = time.perf_counter()
        ids = queue_messages(settings, store, key, args.n)
        enqueue_s = time.perf_counter() - began
        queued = int(redis.llen(prefix))
        result = Result("sendbeat", delay, args.n, enqueue_s, queued, time.time())
        log = logs / f"worker-sendbeat-{int(delay)}ms.log"
        env = {**worker_env(settings), **pool_env(args)}
        worker = start_worker(env, worker_flags(args), log)
        instances = measure(sink, result, worker, args)
        result.statuses = final_statuses(store, ids)
        result.distinct = len(set(instances) & set(ids))
        return result
    finally:
        stop_worker(worker)
        smtp.stop()
        redis.close()


def run_anchor(args: argparse.Namespace, server: EmbeddedRedis, delay: float, logs: Path) -> Result:
    """The same N messages through bench/anchor_app.py's plain task, same worker flags."""
    sink, smtp = start_sink(delay)
    queue = f"anchor{int(delay)}"
    env = {**os.environ, "ANCHOR_BROKER": server.url, "ANCHOR_QUEUE": queue}
    env.update(ANCHOR_SMTP=f"127.0.0.1:{smtp.port}", PYTHONPATH=str(BENCH), PYTHONUNBUFFERED="1")
    os.environ.update(ANCHOR_BROKER=server.url, ANCHOR_QUEUE=queue)
    import anchor_app

    anchor_app.app.conf.broker_url = server.url
    anchor_app.app.conf.task_default_queue = queue
    worker = None
    try:
        began = time.perf_counter()
        with anchor_app.app.connection_for_write() as connection:
            for i in range(args.n):
                anchor_app.send.apply_async(
                    ("alice@example.com", f"Report {i:06d}", "Hello, here is your report."),
                    connection=connection,
                    queue=queue,
                )
        enqueue_s = time.perf_counter() - began
        redis = connect(server.url)
        result = Result("anchor", delay, args.n, enqueue_s, int(redis.llen(queue)), time.time())
        redis.close()
        flags = anchor_flags(args)
        log = logs / f"worker-anchor-{int(delay)}ms.log"
        worker = start_worker(env, flags, log, app="anchor_app")
        return measure_recordless(sink, result, worker, args)
    finally:
        stop_worker(worker)
        smtp.stop()


def run_ceiling(args: argparse.Namespace, delay: float, logs: Path) -> Result:
    """bench/smtp_blast.py against the same sink: one asyncio process with nothing but
    SMTP to do, as many sessions as sendbeat's worker has connections."""
    sink, smtp = start_sink(delay)
    blaster = None
    connections = args.concurrency or Settings().worker_concurrency
    command = [sys.executable, str(BENCH / "smtp_blast.py"), "--port", str(smtp.port),
               "--n", str(args.n), "--connections", str(connections)]  # fmt: skip
    try:
        result = Result("ceiling", delay, args.n, 0.0, 0, time.time())
        with (logs / f"ceiling-{int(delay)}ms.log").open("wb") as out:
            blaster = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return measure_recordless(sink, result, blaster, args)
    finally:
        stop_worker(blaster)
        smtp.stop()


def anchor_flags(args: argparse.Namespace) -> list[str]:
    """sendbeat's worker flags, spelled out: its defaults come from sendbeat's settings."""
    defaults = Settings()
    pool = args.pool or defaults.worker_pool
    concurrency = args.concurrency or defaults.worker_concurrency
    return ["--pool", pool, "--concurrency", str(concurrency)]


def run(args: argparse.Namespace, tmp: Path, logs: Path) -> list[Result]:
    server = EmbeddedRedis(tmp / "redis", persistent=False).start()
    results = []
    try:
        for delay in args.delay:
            results.append(run_sendbeat(args, server, delay, logs))
            if not args.no_anchor:
                results.append(run_anchor(args, server, delay, logs))
            if not args.no_ceiling:
                results.append(run_ceiling(args, delay, logs))
        return results
    finally:
        server.stop()


# -- report --------------------------------------------------------------------------------


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_report(args: argparse.Namespace, results: list[Result]) -> None:
    flags = " ".join(anchor_flags(args))
    print(f"code: {code_version()}; {os.cpu_count()} CPUs; worker {flags}; N = {args.n:,}")
    print(f"command: {' '.join(['python', 'bench/send.py', *sys.argv[1:]])}")
    print()
    rows = [("run", "relay delay", "task msgs", "msgs/s", "first->last s", "from start/s",
             "CPU s/1k msgs", "sink CPU s/1k", "worker RSS MiB", "received", "succeeded",
             "checks")]  # fmt: skip
    for r in results:
        span = "-" if r.span is None else f"{r.span:.2f}"
        cpu = "-" if r.cpu_per_k is None else f"{r.cpu_per_k:.2f}"
        sink_cpu = "-" if r.sink_cpu_per_k is None else f"{r.sink_cpu_per_k:.2f}"
        rss = "-" if r.rss_mib is None else f"{r.rss_mib:.0f}"
        succeeded = f"{r.statuses.get(InstanceStatus.SUCCEEDED, 0):,}"
        rows.append(
            (r.kind, f"{r.delay:.0f} ms", f"{r.queued:,}", number(r.rate), span,
             number(r.from_start), cpu, sink_cpu, rss, f"{r.received:,}", succeeded,
             "ok" if r.ok else "FAILED")
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    for delay in args.delay:
        pair = [r for r in results if r.delay == delay]
        ours = next((r.rate for r in pair if r.kind == "sendbeat"), None)
        anchor = next((r.rate for r in pair if r.kind == "anchor"), None)
        ceiling = next((r.rate for r in pair if r.kind == "ceiling"), None)
        if ours and anchor:
            print(f"{delay:.0f} ms relay: sendbeat / anchor = {ours / anchor:.2f}x")
        if ours and ceiling:
            print(f"{delay:.0f} ms relay: sendbeat / bare SMTP client = {ours / ceiling:.2f}x")
    print("msgs/s = N / (last message - first message at the sink), the queue full from the")
    print("start; from start/s counts from the worker's start; CPU is the worker's (and its")
    print("pool children's) between the first and the last message; sink CPU is this")
    print("process' (the SMTP server's) over the same span; RSS at the end. ceiling:")
    print("bench/smtp_blast.py, a bare asyncio SMTP client with as many sessions")
    for r in results:
        if r.note:
            print(f"{r.kind} {r.delay:.0f} ms incomplete: {r.note}")
        if r.kind == "sendbeat":
            print(f"sendbeat {r.delay:.0f} ms: statuses {r.statuses}; distinct {r.distinct:,}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="messages to send")
    parser.add_argument(
        "--concurrency", type=int, help="worker --concurrency (default: the Procfile line's)"
    )
    parser.add_argument("--pool", help="worker --pool (default: the Procfile line's)")
    parser.add_argument(
        "--batch", type=int, default=Settings.task_batch, help="SENDBEAT_TASK_BATCH"
    )
    parser.add_argument(
        "--delay", type=float, nargs="+", default=[0, 50], help="the sink's ms per message"
    )
    parser.add_argument("--no-anchor", action="store_true", help="skip the plain-Celery run")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the bare asyncio SMTP client run"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for sending")
    parser.add_argument("--py-spy", type=Path, help="profile the worker into this SVG/.txt")
    parser.add_argument("--logs", type=Path, help="keep the worker log in this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sendbeat-bench-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        results = run(args, Path(tmp), logs)
    print_report(args, results)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
