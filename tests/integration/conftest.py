"""Real parts for end-to-end tests: an SMTP server (aiosmtpd), an HTTP server for
``$ref`` content, and Celery worker and beat processes started as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask.testing import FlaskClient

from app import create_app
from app.core.settings import Settings
from app.core.store import Store
from app.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    at: float  # when the server accepted it
    began: float = 0.0  # when its SMTP transaction began (MAIL FROM)


@dataclass
class SmtpSink:
    """Collects every message delivered to it. ``delay`` holds each message before the
    answer; ``replies`` scripts the answers (then 250). A message whose client is gone
    before the answer is not counted: its sender never heard it was accepted."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0
    replies: list[str] = field(default_factory=list)
    refused: int = 0
    # Drawn per message: (seconds to wait, the answer, or None for 250).
    flaky: Callable[[], tuple[float, str | None]] | None = None

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.began = time.time()
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.flaky is not None:
            wait, answer = self.flaky()
            await asyncio.sleep(wait)
            if answer is not None:
                with self.lock:
                    self.refused += 1
                return answer
        if self.delay:
            await asyncio.sleep(self.delay)
            # A sender that never hears 250 must assume the message was not taken
            # (RFC 5321 4.1.1.4): a server must not deliver what it never acknowledged.
            if server.transport is None or server._reader.at_eof():
                return "421 client went away"
        with self.lock:
            if self.replies:
                self.refused += 1
                return self.replies.pop(0)
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        with self.lock:
            self.messages.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    message,  # type: ignore[arg-type]
                    time.time(),
                    getattr(envelope, "began", 0.0),
                )
            )
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server on a free loopback port (yielded) in a thread, for the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class FileServer:
    files: dict[str, bytes]
    port: int = 0
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def files() -> Iterator[FileServer]:
    served = FileServer({})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.hits.append(self.path)
            body = served.files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as port:
        served.port = port
        yield served


@dataclass
class Delivery:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver: records every request; ``answers`` scripts the status codes
    (and headers) it gives, in order, then 200."""

    port: int = 0
    received: list[Delivery] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with got.lock:
                got.received.append(Delivery(time.time(), self.command, self.path,
                                             dict(self.headers.items()), body))  # fmt: skip
                status, headers = got.answers.pop(0) if got.answers else (200, {})
            reply = b'{"ok": true}' if status < 300 else b"try later"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_POST = do_PUT = _answer

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as port:
        got.port = port
        yield got


@pytest.fixture
def live_settings(settings: Settings, smtp: SmtpSink) -> Settings:
    return settings.with_(mail_url=f"smtp://127.0.0.1:{smtp.port}")


def process_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDBEAT_", "MAIL_"))}
    env.update(
        REDIS_URL=settings.redis_url,
        MAIL_URL=settings.mail_url,
        SENDBEAT_KEY_PREFIX=settings.key_prefix,
        SENDBEAT_QUEUE=settings.queue,
        SENDBEAT_ALLOW_PRIVATE_REFS="1" if settings.allow_private_refs else "0",
        SENDBEAT_SEND_LEASE=str(settings.send_lease),
        SENDBEAT_PUBLISH_GRACE=str(settings.publish_grace),
        SENDBEAT_VISIBILITY_TIMEOUT=str(settings.visibility_timeout),
        SENDBEAT_REDIS_REPLICAS=str(settings.redis_replicas),
        SENDBEAT_STORE_SHARDS=str(settings.store_shards),
        SENDBEAT_RATE_LIMIT_MESSAGING="none",
        SENDBEAT_RATE_LIMIT_SCHEDULES="none",
        PYTHONUNBUFFERED="1",
    )
    env.pop("BROKER_URL", None)
    if settings.broker_url:
        env["BROKER_URL"] = settings.broker_url
    return env


def skewed(seconds: int) -> list[str]:
    """A command prefix that runs a process with its clock shifted by ``seconds``
    (libfaketime; monotonic clocks stay real, as a machine's would; tests/faketime works
    around libfaketime's sleep)."""
    shim = f"PYTHONPATH={ROOT / 'tests' / 'faketime'}"
    return ["env", shim, "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", f"{seconds:+d}s"]


class Processes:
    """Starts Celery worker and beat processes; stops them all at teardown."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        *args: str,
        name: str,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "celery", "--app", "workers.main", *args]
        return self.run([*(prefix or []), *command, "--loglevel", "INFO"], name=name, env=env)

    def run(
        self, command: list[str], *, name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**process_env(self.settings), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append((process, log))
        return process

    def worker(
        self,
        name: str = "worker",
        concurrency: int = 2,
        prefix: list[str] | None = None,
        pool: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        # The pool by its setting: Celery's --pool flag cannot pick prefork over a
        # configured pool (docs/operations.md).
        process = self.start(
            "worker",
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{name}@%h",
            name=name,
            prefix=prefix,
            env={**({"SENDBEAT_WORKER_POOL": pool} if pool else {}), **(env or {})},
        )
        self.wait_log(name, "ready.", process)
        return process

    def beat(self, name: str = "beat", prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
        schedule = str(self.logs / f"{name}.db")
        process = self.start("beat", "--schedule", schedule, name=name, prefix=prefix)
        self.wait_log(name, "beat: Starting...", process)
        return process

    def web(self, name: str = "web") -> str:
        """The Procfile's web line (gunicorn) on a free port; returns its base URL."""
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "--config", "deploy/gunicorn.conf.py",
                   "--bind", f"127.0.0.1:{port}", "app:create_app()"]  # fmt: skip
        process = self.run(command, name=name)
        url = f"http://127.0.0.1:{port}"
        if not wait_until(lambda: _answers(url + "/healthz"), timeout=30):
            raise AssertionError(f"{name} did not start:\n{self.log_text()}")
        assert process.poll() is None
        return url

    def wait_log(
        self, name: str, text: str, process: subprocess.Popen[bytes], timeout: float = 30
    ) -> None:
        log = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in log.read_text(errors="replace"):
                return
            if process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{name} did not start:\n{log.read_text(errors='replace')}")

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process and its pool children at once, as a lost machine would."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process, _ in self.running:
            self.stop(process)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # pool children left behind

    def log_text(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for _, log in self.running
        )


@pytest.fixture
def processes(live_settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(live_settings, tmp_path)
    yield procs
    procs.stop_all()


@dataclass
class Web:
    client: FlaskClient
    key: str
    store: Store

    def call(self, method: str, body: dict[str, Any]) -> Any:
        response = self.client.post(f"/v.1.1/{method}", json={"api_key": self.key, **body})
        return response

    def trigger(self, event_id: str) -> Any:
        return self.client.post(
            f"/api/unstable/schedules/{event_id}/trigger",
            headers={"Authorization": f"Bearer {self.key}"},
        )

    def instances(self, uid: str) -> list[dict[str, Any]]:
        body = self.call("list_scheduled_event_instances", {"uid": uid}).get_json()
        return list(body["data"]["scheduled_event_instances"])


@pytest.fixture
def web(live_settings: Settings, store: Store) -> Web:
    app = create_app(live_settings, store=store)
    _, key = store.create_project("itest", int(time.time()))
    return Web(app.test_client(), key, store)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    return check()
