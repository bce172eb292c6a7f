"""Do worker pools scale across hosts? 1, 2 and 4 worker "hosts", each a network
namespace with its own veth link, draining one queue into one SMTP sink.

The benchmark (root and ``ip`` needed; everything it creates is removed at the end):

1. creates network namespaces ``sbhost0..3``, each joined to this host by a veth pair
   (host side 10.77.<i>.1/24, namespace side 10.77.<i>.2/24): a worker there reaches
   Redis and the SMTP sink only over its own link;
2. starts a private embedded Valkey bound to 127.0.0.1 and each host-side address (never
   127.0.0.1:6379), and an aiosmtpd sink listening on each host-side address, answering
   each message after ``--delay`` ms (bench/send.py's CountingSink);
3. for each host count H: queues N ``send_message`` requests through the API (Flask test
   client), starts one worker per namespace (``ip netns exec sbhost<i>`` and the
   Procfile's worker line: threads, 32 in flight) at the same time, and measures from
   the first message at the sink to the N-th; then checks that every execution ended
   ``succeeded`` and the sink got exactly N messages, one per execution;
4. prints msgs/s per H, the scaling efficiency (rate(H) / (H x rate(1))), and the CPU the
   workers used (cores busy = CPU seconds / wall seconds), so a reader can tell when the
   machine, not the design, is the limit.

    sudo .venv/bin/python bench/hosts.py [--n 5000] [--hosts 1 2 4] [--delay 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from dispatch import code_version  # noqa: E402
from send import (  # noqa: E402
    CountingSink,
    final_statuses,
    group_usage,
    queue_messages,
    stop_worker,
    worker_env,
)

from app.core.keys import Keys  # noqa: E402
from app.core.records import InstanceStatus  # noqa: E402
from app.core.redis_client import connect  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.core.store import Store  # noqa: E402
from app.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

ROOT = BENCH.parent
NAMESPACE = "sbhost{}"
HOST_SIDE, NS_SIDE = "10.77.{}.1", "10.77.{}.2"


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def make_hosts(count: int) -> None:
    for i in range(count):
        ns, veth, peer = NAMESPACE.format(i), f"sbv{i}", f"sbp{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns)
        sh("ip", "addr", "add", f"{HOST_SIDE.format(i)}/24", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        inside = ("ip", "netns", "exec", ns)
        sh(*inside, "ip", "addr", "add", f"{NS_SIDE.format(i)}/24", "dev", peer)
        sh(*inside, "ip", "link", "set", peer, "up")
        sh(*inside, "ip", "link", "set", "lo", "up")


def remove_hosts(count: int) -> None:
    for i in range(count):
        subprocess.run(["ip", "link", "del", f"sbv{i}"], capture_output=True)
        subprocess.run(["ip", "netns", "del", NAMESPACE.format(i)], capture_output=True)


@dataclass
class Run:
    hosts: int
    n: int
    received: int = 0
    span: float | None = None
    cpu: float = 0.0  # CPU seconds of all the workers, first message to the N-th
    statuses: dict[str, int] = field(default_factory=dict)
    distinct: int = 0
    note: str = ""

    @property
    def rate(self) -> float | None:
        return None if not self.span else self.received / self.span

    @property
    def ok(self) -> bool:
        succeeded = self.statuses.get(InstanceStatus.SUCCEEDED, 0)
        return self.received == self.n == succeeded == self.distinct


def run_hosts(
    args: argparse.Namespace, server: EmbeddedRedis, sink: CountingSink, port: int, hosts: int,
    logs: Path,
) -> Run:  # fmt: skip
    prefix = f"sbhosts{hosts}"
    redis = connect(server.url)
    store = Store(redis, Keys(prefix))
    _, key = store.create_project("bench", int(time.time()))
    local = Settings(redis_url=server.url, key_prefix=prefix, queue=prefix,
                     rate_limit_messaging="none", mail_url="console://")  # fmt: skip
    ids = queue_messages(local, store, key, args.n)
    with sink.lock:
        sink.times.clear()
        sink.instances.clear()
    workers = []
    result = Run(hosts, args.n)
    try:
        for i in range(hosts):
            address = HOST_SIDE.format(i)
            remote = local.with_(redis_url=f"redis://{address}:{server.port}/0",
                                 mail_url=f"smtp://{address}:{port}")  # fmt: skip
            command = ["ip", "netns", "exec", NAMESPACE.format(i), sys.executable]
            command += ["-m", "celery", "--app", "workers.main", "worker", "--loglevel", "INFO"]
            command += ["--without-gossip", "--without-mingle", "--hostname", f"w{i}@%h"]
            log = (logs / f"worker-h{hosts}-{i}.log").open("wb")
            workers.append(subprocess.Popen(
                command, cwd=ROOT, env=worker_env(remote), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
        deadline = time.monotonic() + args.timeout
        cpu_first = None
        while sink.count < args.n and time.monotonic() < deadline:
            if cpu_first is None and sink.count:
                cpu_first = sum(group_usage(w.pid)[0] for w in workers)
            time.sleep(0.02)
        cpu_last = sum(group_usage(w.pid)[0] for w in workers)
        result.cpu = cpu_last - (cpu_first or 0.0)
        with sink.lock:
            times = sorted(sink.times)
        if len(times) < args.n:
            result.note = f"only {len(times):,} of {args.n:,} within {args.timeout:.0f} s"
        if len(times) > 1:
            result.span = times[-1] - times[0]
        result.statuses = final_statuses(store, ids)
        time.sleep(0.5)
        with sink.lock:
            result.received = len(sink.times)
            result.distinct = len(set(sink.instances) & set(ids))
        return result
    finally:
        for worker in workers:
            stop_worker(worker)
        redis.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--delay", type=float, default=50.0, help="the sink's ms per message")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--logs", type=Path)
    args = parser.parse_args(argv)
    most = max(args.hosts)
    remove_hosts(most)  # what an interrupted run may have left
    make_hosts(most)
    results: list[Run] = []
    addresses = [HOST_SIDE.format(i) for i in range(most)]
    sink = CountingSink(delay=args.delay / 1000)
    port = free_port()
    controllers = [Controller(sink, hostname=a, port=port) for a in addresses]
    try:
        with tempfile.TemporaryDirectory(prefix="sendbeat-hosts-") as tmp:
            logs = args.logs or Path(tmp)
            logs.mkdir(parents=True, exist_ok=True)
            server = EmbeddedRedis(Path(tmp) / "redis", persistent=False,
                                   bind=("127.0.0.1", *addresses)).start()  # fmt: skip
            # Bound only to loopback and the veth links this run made: the other hosts
            # may connect without a password.
            with connect(server.url) as admin:
                admin.config_set("protected-mode", "no")
            for controller in controllers:
                controller.start()
            try:
                for hosts in args.hosts:
                    results.append(run_hosts(args, server, sink, port, hosts, logs))
            finally:
                for controller in controllers:
                    controller.stop()
                server.stop()
    finally:
        remove_hosts(most)
    report(args, results)
    return 0 if all(r.ok for r in results) else 1


def report(args: argparse.Namespace, results: list[Run]) -> None:
    print(f"code: {code_version()}; {os.cpu_count()} CPUs; N = {args.n:,}; "
          f"sink delay {args.delay:.0f} ms; one worker per host (threads, 32)")  # fmt: skip
    base = next((r.rate for r in results if r.hosts == 1), None)
    print("| hosts | msgs/s | first→last s | efficiency | worker CPU s | cores busy | checks |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        efficiency = "-" if not (base and r.rate) else f"{r.rate / (r.hosts * base):.2f}"
        cores = "-" if not r.span else f"{r.cpu / r.span:.2f}"
        rate = "-" if r.rate is None else f"{r.rate:,.0f}"
        span = "-" if r.span is None else f"{r.span:.2f}"
        print(f"| {r.hosts} | {rate} | {span} | {efficiency} | {r.cpu:.1f} | {cores} | "
              f"{'ok' if r.ok else 'FAILED'} |")  # fmt: skip
        if r.note:
            print(f"hosts {r.hosts}: {r.note}; statuses {r.statuses}")


if __name__ == "__main__":
    sys.exit(main())
