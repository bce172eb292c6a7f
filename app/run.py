"""``sendbeat``: run the whole system (web, worker, beat) on one machine.

It starts each process from its ``Procfile`` line, the canonical commands. When
``REDIS_URL`` is unset it first starts the embedded Redis-compatible server
(data under ``var/redis``, append-only file on); when ``MAIL_URL`` is unset mail
goes to the Maildir ``var/mail``. Ctrl-C or SIGTERM stops everything, the
embedded server last; nothing is left running.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import requests

from app.core.clock import now
from app.core.keys import Keys
from app.core.layout import refusal
from app.core.redis_client import connect
from app.core.settings import Settings, SettingsError
from app.core.store import Store
from app.embedded_redis import EmbeddedRedis, EmbeddedRedisError, _die_with_parent

ROOT = Path(__file__).resolve().parent.parent
DEMO_PROJECT = "demo"
STOP_GRACE = 30.0  # seconds, as Heroku gives a process between SIGTERM and SIGKILL


def procfile(path: Path) -> dict[str, str]:
    """The process types and commands of a Procfile."""
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line.strip())
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


class Supervisor:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()

    def start(self, name: str, command: str) -> None:
        child = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            # Only the runner signals its children, once each: a second signal would turn
            # a Celery worker's warm shutdown into a cold one.
            start_new_session=True,
        )
        self.children[name] = child
        threading.Thread(target=self._relay, args=(name, child), daemon=True).start()

    def _relay(self, name: str, child: subprocess.Popen[bytes]) -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.decode(errors="replace").rstrip()
            print(f"{name:>6} | {line}", flush=True)

    def wait(self) -> int:
        """Block until asked to stop or until a process dies; return an exit code."""
        while not self.stopping.is_set():
            for name, child in self.children.items():
                if child.poll() is not None:
                    print(f"sendbeat: {name} exited with code {child.returncode}; stopping.")
                    return 1
            self.stopping.wait(0.5)
        return 0

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def demo_key(settings: Settings) -> str:
    """A fresh key for the demo project (created on first run, rotated after)."""
    store = Store(connect(settings.redis_url), Keys(settings.key_prefix, settings.store_shards))
    stamp = int(now().timestamp())
    if store.project_by_name(DEMO_PROJECT) is None:
        return store.create_project(DEMO_PROJECT, stamp)[1]
    return store.rotate_key(DEMO_PROJECT, stamp)


def curl_example(base: str, key: str) -> str:
    body = (
        '{"api_key": "' + key + '", "uid": "hello-every-minute", "schedule": "every 1 mins", '
        '"metadata": {"arguments": {"recipients": "you@example.com", '
        '"headers": {"from": "sendbeat@example.com", "subject": "Hello from sendbeat"}, '
        '"content": {"text/plain": "This email was sent automatically."}}}}'
    )
    return (
        f"curl -s -X POST {base}/v.1.1/create_scheduled_event "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


def main() -> int:
    env = dict(os.environ)
    var = ROOT / "var"
    embedded: EmbeddedRedis | None = None
    try:
        if not env.get("REDIS_URL"):
            embedded = EmbeddedRedis(var / "redis").start()
            env["REDIS_URL"] = embedded.url
            print(f"sendbeat: started the embedded Redis at {embedded.url} (data in var/redis)")
        env.setdefault("MAIL_URL", "maildir://" + str(var / "mail"))
        env.setdefault("PORT", "5000")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Locally the web listens on loopback only; the Procfile line itself binds all
        # interfaces, as a platform router needs.
        env.setdefault("GUNICORN_CMD_ARGS", f"--bind 127.0.0.1:{env['PORT']}")
        settings = Settings.from_env(env)
    except (SettingsError, EmbeddedRedisError) as exc:
        print(f"sendbeat: {exc}", file=sys.stderr)
        if embedded:
            embedded.stop()
        return 2
    why = refusal(connect(settings.redis_url), Keys(settings.key_prefix, settings.store_shards),
                  "sendbeat")  # fmt: skip
    if why is not None:
        print(f"sendbeat: {why}", file=sys.stderr)
        if embedded:
            embedded.stop()
        return 2
    supervisor = Supervisor(env)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        for name, command in procfile(ROOT / "Procfile").items():
            if name in ("web", "worker", "beat"):
                supervisor.start(name, command)
        base = f"http://127.0.0.1:{settings.port}"
        if wait_http(base + "/healthz", 30):
            key = demo_key(settings)
            print(_banner(base, key, settings), flush=True)
        code = supervisor.wait()
    finally:
        print("sendbeat: stopping web, worker and beat…", flush=True)
        supervisor.stop()
        if embedded:
            embedded.stop()
        print("sendbeat: stopped.", flush=True)
    return code


def _banner(base: str, key: str, settings: Settings) -> str:
    mail = settings.mail_url
    return "\n".join([
        "",
        f"sendbeat is running: {base}",
        f"  demo project API key: {key}",
        f"  mail goes to: {mail}" + ("  (new messages land in its new/ folder)"
                                    if mail.startswith("maildir://") else ""),
        "  webhooks and alerts go to their URLs" + (
            ": printed in the worker's lines below instead (console transport)"
            if mail.startswith("console:") else " (MAIL_URL=console:// prints them instead)"),
        "  schedule an email every minute:",
        "",
        "    " + curl_example(base, key),
        "",
        "  Ctrl-C stops everything.",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
