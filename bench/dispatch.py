"""How fast does a scheduler get N occurrences that fall due at the same instant into
the broker? sendbeat's beat against redbeat's, on one private server, one beat each.

For each scheduler the benchmark:

1. starts its own Redis-compatible server (the embedded Valkey, on a free port; it
   never touches 127.0.0.1:6379), a fresh one per scheduler, and measures INFO
   ``used_memory``;
2. stores N schedules with the same ~200-byte ``send_message`` payload (sendbeat: events
   ``every 1 mins`` through ``create_events``; redbeat: ``RedBeatSchedulerEntry`` with
   ``schedule(run_every=60)``), parks them far in the future and measures
   ``used_memory`` again: (after - before) / N is the Redis bytes per stored schedule;
3. starts ONE real beat process (``celery beat``) and no worker, waits until it runs,
   then makes all N due at the same whole second T, a few seconds ahead (sendbeat: ZADD
   every event's score in ``{p}:due`` to T; redbeat: ``last_run_at = T - 60`` and score T);
4. samples ``LLEN <queue>`` every 10 ms (kombu's Redis transport keeps a queue as a list
   named after it) and records when 1, 50 %, 99 % and N messages are in the broker,
   in seconds after T, and the CPU seconds (user + system) the beat and the Redis
   server used from just before T until all N are in (and Redis' busiest commands).

msgs/s is N / (t_all - t_first), or N / t_all when all N land within one sample (one
batch); N/t_all counts from the due instant. Every wait is bounded (``--timeout`` for the
dispatch itself); a scheduler that does not finish is reported with how far it got.

    .venv/bin/pip install celery-redbeat        # only for the redbeat side
    .venv/bin/python bench/dispatch.py --n 10000 [--only sendbeat|redbeat] [--timeout 300]
    .venv/bin/python bench/dispatch.py --n 10000 --only sendbeat --py-spy /tmp/beat.svg
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from app.core.events import Defaults, EventSpec, create_events  # noqa: E402
from app.core.keys import Keys  # noqa: E402
from app.core.publisher import SEND_MESSAGE_TASK  # noqa: E402
from app.core.redis_client import connect  # noqa: E402
from app.core.store import Store  # noqa: E402
from app.embedded_redis import EmbeddedRedis  # noqa: E402
from tests.cluster import LocalCluster  # noqa: E402

SENDBEAT_PREFIX = "sbbench"
SENDBEAT_QUEUE = "sbbench"
REDBEAT_PREFIX = "redbeat-bench:"
REDBEAT_QUEUE = "redbeat-bench"
INTERVAL = 60  # both schedules repeat every minute
LEAD = 3.0  # seconds from "make everything due at T" to T
SAMPLE_EVERY = 0.01
CHUNK = 1000
START_TIMEOUT = 60.0


@dataclass
class Result:
    name: str
    n: int
    bytes_per_event: float
    marks: dict[str, float | None] = field(default_factory=dict)  # first, p50, p99, all
    reached: int = 0
    last: float | None = None  # seconds after T of the last sample that saw progress
    cpu: float | None = None
    server_cpu: float | None = None
    commands: list[tuple[str, int, float]] = field(default_factory=list)
    note: str = ""

    @property
    def complete(self) -> bool:
        return self.marks.get("all") is not None

    @property
    def count(self) -> int:
        return self.n if self.complete else self.reached

    @property
    def rate(self) -> float | None:
        """Messages per second once they flow: N / (t_all - t_first). When all arrive
        within one sample of each other (one batch) the spread is unmeasurable and this
        falls back to the rate from the due instant, N / t_all."""
        first, end = self.marks.get("first"), self.marks.get("all") or self.last
        if first is None or end is None:
            return None
        if end - first < 2 * SAMPLE_EVERY:
            return self.from_due
        return self.count / (end - first)

    @property
    def from_due(self) -> float | None:
        """Messages per second counted from the due instant: N / t_all."""
        end = self.marks.get("all") or self.last
        return None if not end or end <= 0 else self.count / end


# -- the workload ------------------------------------------------------------------------


def payload(i: int) -> dict[str, Any]:
    """send_message arguments of about 200 bytes as JSON."""
    return {
        "recipients": ["alice@example.com", "bob@example.org"],
        "headers": {"from": "Reports <reports@example.com>", "subject": f"Daily report {i:06d}"},
        "content": {"text/plain": "Hello, here is your daily report: everything ran on time."},
    }


def goals(n: int) -> dict[str, int]:
    return {"first": 1, "p50": math.ceil(n * 0.5), "p99": math.ceil(n * 0.99), "all": n}


# -- processes and the server ------------------------------------------------------------


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def beat_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment tests/integration/conftest.py gives its processes, with no mail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDBEAT_", "MAIL_"))}
    env.pop("BROKER_URL", None)
    env.update(REDIS_URL=redis_url, MAIL_URL="console://", PYTHONUNBUFFERED="1", **extra)
    # One task message per occurrence, as redbeat sends: LLEN then counts occurrences.
    env["SENDBEAT_TASK_BATCH"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(BENCH), env.get("PYTHONPATH", "")])
    return env


def start_beat(app: str, extra: list[str], env: dict[str, str], log: Path, loglevel: str):
    command = [sys.executable, "-m", "celery", "--app", app, "beat", *extra]
    command += ["--schedule", str(log.with_suffix(".db")), "--loglevel", loglevel]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(check: Callable[[], Any], timeout: float, process: subprocess.Popen[bytes]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process.poll() is not None:
            raise RuntimeError(f"beat exited with code {process.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"beat was not running after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def start_py_spy(pid: int, output: str) -> subprocess.Popen[bytes]:
    """Sample the beat (wall clock: idle waits included) without pausing it; .txt gives
    collapsed stacks, anything else an SVG flame graph."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    fmt = "raw" if output.endswith(".txt") else "flamegraph"
    command = [spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--idle"]
    command += ["--format", fmt, "--output", output]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


# -- measuring -----------------------------------------------------------------------------


def sleep_until(moment: float) -> None:
    while (left := moment - time.time()) > 0:
        time.sleep(min(left, 0.05))


def sample_queue(
    client: Redis,
    queue: str,
    result: Result,
    beat: subprocess.Popen[bytes],
    due_at: float,
    timeout: float,
) -> None:
    """Poll LLEN until N messages are in, the timeout passes or the beat dies."""
    marks: dict[str, float | None] = dict.fromkeys(goals(result.n))
    deadline = due_at + timeout
    while True:
        length = int(client.llen(queue))
        at = time.time() - due_at
        for name, need in goals(result.n).items():
            if marks[name] is None and length >= need:
                marks[name] = at
        if length > result.reached:
            result.reached, result.last = length, at
        if length >= result.n or time.time() > deadline:
            break
        if beat.poll() is not None:
            result.note = f"beat exited with code {beat.returncode}"
            break
        time.sleep(SAMPLE_EVERY)
    result.marks = marks


def measure(
    client: Any,
    queue: str,
    result: Result,
    beat: subprocess.Popen[bytes],
    due_at: float,
    timeout: float,
    py_spy: str | None = None,
    *,
    queue_client: Any = None,
) -> Result:
    """``client``: the store's server(s), measured; ``queue_client``: the broker's (the
    same server unless given)."""
    sleep_until(due_at - (1.5 if py_spy else 0.2))
    spy = start_py_spy(beat.pid, py_spy) if py_spy else None
    sleep_until(due_at - 0.2)
    pids = client.info("server")["process_id"]
    server_pids = pids if isinstance(pids, list) else [int(pids)]
    client.config_resetstat()
    cpu_before = beat_cpu(beat)
    server_before = sum(map(cpu_seconds, server_pids))
    try:
        sample_queue(queue_client or client, queue, result, beat, due_at, timeout)
        if beat.poll() is None:
            result.cpu = beat_cpu(beat) - cpu_before
        result.server_cpu = sum(map(cpu_seconds, server_pids)) - server_before
        result.commands = top_commands(client)
    finally:
        if spy is not None:
            stop_py_spy(spy)
    return result


def top_commands(client: Any, count: int = 4) -> list[tuple[str, int, float]]:
    """(command, calls, seconds inside the server) since CONFIG RESETSTAT, busiest first."""
    stats = client.info("commandstats")
    rows = [
        (name.removeprefix("cmdstat_"), int(v["calls"]), v["usec"] / 1e6)
        for name, v in stats.items()
    ]
    rows = [row for row in rows if row[0] not in ("llen", "info", "config|resetstat")]
    return sorted(rows, key=lambda row: -row[2])[:count]


def due_instant() -> int:
    return math.ceil(time.time() + LEAD)


# -- sendbeat ------------------------------------------------------------------------------


def create_sendbeat_events(store: Store, n: int) -> list[str]:
    now = datetime.now(UTC)
    project, _ = store.create_project("bench", int(now.timestamp()))
    ids: list[str] = []
    for start in range(0, n, CHUNK):
        specs = [
            EventSpec(schedule=f"every {INTERVAL // 60} mins", metadata={"arguments": payload(i)})
            for i in range(start, min(n, start + CHUNK))
        ]
        created = create_events(store, project.id, specs, Defaults())
        ids += [event.id for event in created.events]
    return ids


def set_sendbeat_due(store: Store, ids: list[str], at: float) -> None:
    """Move every event's next run in the due index to ``at``."""
    pipe = store.redis.pipeline(transaction=False)
    keys = store.keys
    for start in range(0, len(ids), CHUNK):
        for event_id in ids[start : start + CHUNK]:
            pipe.zadd(keys.due(keys.shard_of(event_id)), {event_id: at})
        pipe.execute()


def run_sendbeat(url: str, n: int, timeout: float, logs: Path, args: argparse.Namespace):
    redis = connect(url)
    store = Store(redis, Keys(SENDBEAT_PREFIX))
    return _run_sendbeat(store, redis, redis, n, timeout, logs, args, beat_env(url))


def run_sendbeat_cluster(tmp: Path, n: int, timeout: float, logs: Path, args: argparse.Namespace):
    """sendbeat on a local Redis Cluster of ``--cluster`` masters (tests/cluster.py), the
    broker on a separate server, as a clustered store needs."""
    cluster = LocalCluster(tmp / "cluster", masters=args.cluster).start()
    broker = EmbeddedRedis(tmp / "broker", persistent=False).start()
    store = Store(connect(cluster.url), Keys(SENDBEAT_PREFIX, shards=args.shards))
    masters = [Redis(port=port, decode_responses=True) for port in cluster.ports]
    env = beat_env(cluster.url, BROKER_URL=broker.url, SENDBEAT_STORE_SHARDS=str(args.shards))
    try:
        result = _run_sendbeat(
            store, Servers(masters), connect(broker.url), n, timeout, logs, args, env
        )
        result.name = (
            f"sendbeat, {args.cluster} master(s), {args.shards} shards, {args.beats} beat(s)"
        )
        return result
    finally:
        broker.stop()
        cluster.stop()


class Servers:
    """The masters of a cluster, measured as one server: memory and CPU added up."""

    def __init__(self, masters: list[Redis]) -> None:
        self.masters = masters

    def info(self, section: str) -> dict[str, Any]:
        infos = [master.info(section) for master in self.masters]
        if section == "memory":
            return {"used_memory": sum(int(i["used_memory"]) for i in infos)}
        if section == "server":
            return {"process_id": [int(i["process_id"]) for i in infos]}
        merged: dict[str, Any] = {}
        for info in infos:  # commandstats
            for name, stats in info.items():
                into = merged.setdefault(name, {"calls": 0, "usec": 0})
                into["calls"] += int(stats["calls"])
                into["usec"] += int(stats["usec"])
        return merged

    def config_resetstat(self) -> None:
        for master in self.masters:
            master.config_resetstat()


class BeatGroup:
    """Several beats (``--beats``), waited on and measured as one: CPU added up, and
    done as soon as one of them exits."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes
        self.pid = processes[0].pid  # the one py-spy samples
        self.returncode: int | None = None

    def poll(self) -> int | None:
        for process in self.processes:
            if process.poll() is not None:
                self.returncode = process.returncode
                return self.returncode
        return None


def beat_cpu(beat: Any) -> float:
    return sum(cpu_seconds(p.pid) for p in getattr(beat, "processes", [beat]))


def _run_sendbeat(
    store: Store,
    servers: Any,
    broker: Any,
    n: int,
    timeout: float,
    logs: Path,
    args: argparse.Namespace,
    env: dict[str, str],
):
    redis = store.redis
    before = used_memory(servers)
    ids = create_sendbeat_events(store, n)
    set_sendbeat_due(store, ids, time.time() + 86400)  # nothing due until the beat runs
    result = Result("sendbeat", n, (used_memory(servers) - before) / n)
    env = {**env, "SENDBEAT_KEY_PREFIX": SENDBEAT_PREFIX, "SENDBEAT_QUEUE": SENDBEAT_QUEUE}
    beat: Any = None
    try:
        beat = BeatGroup([
            start_beat("workers.main", [], env, logs / f"sendbeat-{i}.log", args.loglevel)
            for i in range(args.beats)
        ])  # fmt: skip
        wait_until(lambda: redis.exists(store.keys.beat_heartbeat), START_TIMEOUT, beat)
        due_at = due_instant()
        set_sendbeat_due(store, ids, due_at)
        return measure(
            servers, SENDBEAT_QUEUE, result, beat, due_at, timeout, args.py_spy,
            queue_client=broker,
        )  # fmt: skip
    finally:
        for process in [] if beat is None else beat.processes:
            stop(process)
        redis.close()


# -- redbeat -------------------------------------------------------------------------------


def create_redbeat_entries(app: Any, n: int) -> list[Any]:
    from celery.schedules import schedule
    from redbeat import RedBeatSchedulerEntry

    every = schedule(run_every=INTERVAL, app=app)
    entries = []
    for i in range(n):  # save() stores last_run_at = now: due one interval from now
        entry = RedBeatSchedulerEntry(
            f"bench-{i:06d}", SEND_MESSAGE_TASK, every, args=[payload(i)], app=app
        )
        entries.append(entry.save())
    return entries


def set_redbeat_due(client: Redis, app: Any, entries: list[Any], at: float) -> None:
    """Last run one interval before ``at``, so every entry is due at ``at``."""
    from redbeat.decoder import RedBeatJSONEncoder

    last_run = datetime.fromtimestamp(at - INTERVAL, UTC)
    meta = json.dumps({"last_run_at": last_run}, cls=RedBeatJSONEncoder)
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.hset(entry.key, "meta", meta)
        pipe.zadd(app.redbeat_conf.schedule_key, {entry.key: at})
    pipe.execute()


def run_redbeat(url: str, n: int, timeout: float, logs: Path, args: argparse.Namespace):
    from redbeat_app import make_app

    app = make_app(url, REDBEAT_QUEUE, REDBEAT_PREFIX)
    client = Redis.from_url(url, decode_responses=True)
    before = used_memory(client)
    entries = create_redbeat_entries(app, n)
    result = Result("redbeat", n, (used_memory(client) - before) / n)
    env = beat_env(url, REDBEAT_QUEUE=REDBEAT_QUEUE, REDBEAT_KEY_PREFIX=REDBEAT_PREFIX)
    beat = None
    try:
        scheduler = ["--scheduler", "redbeat.RedBeatScheduler"]
        beat = start_beat("redbeat_app", scheduler, env, logs / "redbeat.log", args.loglevel)
        wait_until(lambda: client.exists(app.redbeat_conf.lock_key), START_TIMEOUT, beat)
        due_at = due_instant()
        set_redbeat_due(client, app, entries, due_at)
        return measure(client, REDBEAT_QUEUE, result, beat, due_at, timeout)
    finally:
        stop(beat)
        client.close()


# -- report --------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def number(value: float | None, partial: bool = False) -> str:
    return "-" if value is None else f"{value:,.0f}" + ("*" if partial else "")


def table_row(r: Result) -> tuple[str, ...]:
    marks = [seconds(r.marks.get(k)) for k in ("first", "p50", "p99", "all")]
    rates = [number(r.rate, not r.complete), number(r.from_due, not r.complete)]
    cpus = [seconds(r.cpu), seconds(r.server_cpu)]
    return (r.name, f"{r.n:,}", *marks, *rates, *cpus, number(r.bytes_per_event))


def print_table(results: list[Result]) -> None:
    header = ("scheduler", "N", "t_first", "t_50", "t_99", "t_all", "msgs/s", "N/t_all")
    rows = [(*header, "beat CPU s", "Redis CPU s", "bytes/event"), *map(table_row, results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    print("t_* in seconds after the due instant; msgs/s = N / (t_all - t_first), or N / t_all")
    print("when all N arrive within one 10 ms sample; N/t_all counts from the due instant")
    for r in results:
        busiest = ", ".join(f"{c} {n:,} calls {t:.2f} s" for c, n, t in r.commands)
        print(f"{r.name}: busiest Redis commands during the dispatch: {busiest}")
    for r in results:
        if not r.complete:
            why = r.note or "the timeout passed"
            print(f"* {r.name}: only {r.reached:,} of {r.n:,} in the broker ({why}); rates")
            print(f"  use {r.reached:,} and the last progress, {seconds(r.last)} s after T")
    by_name = {r.name: r for r in results}
    sb, rb = by_name.get("sendbeat"), by_name.get("redbeat")
    if sb and rb and sb.rate and rb.rate and sb.from_due and rb.from_due:
        print(f"sendbeat / redbeat: msgs/s {sb.rate / rb.rate:.2f}x, ", end="")
        print(f"N/t_all {sb.from_due / rb.from_due:.2f}x, ", end="")
        print(f"bytes/event {sb.bytes_per_event / rb.bytes_per_event:.2f}x")


def code_version() -> str:
    """The commit the beats ran, and whether app/ or workers/ differ from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "app", "workers"], capture_output=True
        )
    except OSError:
        return "unknown"
    version = head.stdout.decode().strip() or "unknown"
    return version + (" + local changes in app/ or workers/" if dirty.stdout.strip() else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="occurrences due at once")
    parser.add_argument("--only", choices=("sendbeat", "redbeat"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds after T")
    parser.add_argument("--loglevel", default="INFO", help="beat --loglevel (Procfile: INFO)")
    parser.add_argument("--py-spy", metavar="PATH", help="profile sendbeat's beat to PATH")
    parser.add_argument("--logs", type=Path, help="keep the beat logs in this directory")
    parser.add_argument(
        "--cluster", type=int, metavar="MASTERS",
        help="sendbeat only, its store on a local Redis Cluster of this many masters",
    )  # fmt: skip
    parser.add_argument("--shards", type=int, default=12, help="SENDBEAT_STORE_SHARDS (cluster)")
    parser.add_argument("--beats", type=int, default=1, help="sendbeat beats running at once")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runners = {"sendbeat": run_sendbeat, "redbeat": run_redbeat}
    names = [args.only] if args.only else list(runners)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sendbeat-bench-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        if args.cluster:
            print(f"sendbeat on a cluster: N={args.n:,} ...", file=sys.stderr, flush=True)
            results.append(run_sendbeat_cluster(Path(tmp), args.n, args.timeout, logs, args))
            names = []
        for name in names:  # a fresh server each, so memory figures start clean
            print(f"{name}: N={args.n:,} ...", file=sys.stderr, flush=True)
            server = EmbeddedRedis(Path(tmp) / f"redis-{name}", persistent=False).start()
            try:
                results.append(runners[name](server.url, args.n, args.timeout, logs, args))
            finally:
                server.stop()
    print(f"code: {code_version()}; {os.cpu_count()} CPUs; beat --loglevel {args.loglevel}")
    print_table(results)
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
