"""Operating sendbeat on real processes: readiness follows beat, metrics move as
events are sent, worker and beat log JSON lines and warn about an unsafe Redis, a
worker stopped mid-send loses nothing, and the Procfile runs under honcho."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import tests.integration.conftest as itest
from app import create_app
from app.core.health import redis_config_problems
from app.core.settings import Settings
from app.core.store import Store
from app.embedded_redis import free_port
from tests.integration.conftest import ROOT, Processes, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow


def arguments(subject: str = "Operations") -> dict[str, Any]:
    return {
        "recipients": "ops@example.com",
        "headers": {"from": "sendbeat@example.com", "subject": subject},
        "content": {"text/plain": "Sent while operating it."},
    }


def create(web: Web, uid: str, schedule: str) -> dict[str, Any]:
    body = {"uid": uid, "schedule": schedule, "metadata": {"arguments": arguments()}}
    response = web.call("create_scheduled_event", body)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json()["data"])


def samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


@pytest.fixture
def extra_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Variables added to every worker and beat the ``processes`` fixture starts."""
    added: dict[str, str] = {}
    original = itest.process_env

    def process_env(settings: Settings) -> dict[str, str]:
        return {**original(settings), **added}

    monkeypatch.setattr(itest, "process_env", process_env)
    return added


# -- readiness and metrics -------------------------------------------------------------


def test_readiness_turns_503_without_beat_and_200_with_it(
    live_settings: Settings, store: Store, processes: Processes
) -> None:
    client = create_app(live_settings.with_(beat_stale_after=2.0), store=store).test_client()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["checks"]["beat"].startswith("no heartbeat yet")

    beat = processes.beat()
    assert wait_until(lambda: client.get("/readyz").status_code == 200, timeout=10)
    assert client.get("/readyz").get_json()["checks"] == {
        "redis": "ok",
        "broker": "ok",
        "beat": "ok",
    }

    processes.stop(beat)
    assert wait_until(lambda: client.get("/readyz").status_code == 503, timeout=10)
    assert "no heartbeat for" in client.get("/readyz").get_json()["checks"]["beat"]


def test_metrics_move_when_events_are_sent(web: Web, processes: Processes, smtp: SmtpSink) -> None:
    def scrape() -> dict[str, float]:
        response = web.client.get("/metrics")
        assert response.status_code == 200
        return samples(response.get_data(as_text=True))

    before = scrape()
    assert before["sendbeat_executions_total{status=succeeded}"] == 0
    create(web, "every-2", "every 2 secs")
    processes.worker()
    processes.beat()

    def moved() -> dict[str, float] | None:
        now = scrape()
        return now if now["sendbeat_executions_total{status=succeeded}"] >= 2 else None

    after = wait_until(moved, timeout=20, interval=0.5)
    assert after, processes.log_text()
    assert after["sendbeat_send_latency_seconds_count"] >= 2
    assert after["sendbeat_send_latency_seconds_bucket{le=+Inf}"] >= 2
    assert after["sendbeat_send_latency_seconds_sum"] > 0
    assert after["sendbeat_beat_heartbeat_age_seconds"] < 5
    assert after["sendbeat_due_backlog"] == 0
    assert len(smtp.messages) >= 2


# -- logs and the start-up check ---------------------------------------------------------


def log_entries(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_worker_and_beat_log_json_lines_and_warn_about_redis(
    web: Web, processes: Processes, smtp: SmtpSink, extra_env: dict[str, str], tmp_path: Path
) -> None:
    extra_env["SENDBEAT_LOG_FORMAT"] = "json"
    # Never due while the test runs (an hourly one fell due at 14:00 in one run: the
    # trigger then met it in flight, 409).
    event = create(web, "logged", "2999-01-01")
    processes.worker()
    processes.beat()
    assert web.trigger(event["id"]).status_code == 200
    assert smtp.wait_for(1, timeout=15)
    [instance] = web.instances("logged")
    assert wait_until(lambda: instance["uid"] in (tmp_path / "worker.log").read_text(), 5)
    worker_log = (tmp_path / "worker.log").read_text()
    beat_log = (tmp_path / "beat.log").read_text()

    for text in (worker_log, beat_log):
        entries = log_entries(text)
        assert entries
        assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
        # No record in Celery's text format ("[2024-01-01 ...: INFO/MainProcess] ...").
        assert not [line for line in text.splitlines() if line.startswith("[20")]
    worker_entries = log_entries(worker_log)
    tagged = [e for e in worker_entries if e.get("instance_id") == instance["uid"]]
    assert tagged and all(e["event_id"] == event["id"] for e in tagged)

    problems = redis_config_problems(web.store.redis) or []
    for problem in problems:
        assert {"level": "WARNING", "message": f"worker: {problem}"}.items() <= next(
            e for e in log_entries(worker_log) if e["message"] == f"worker: {problem}"
        ).items()
        assert any(e["message"] == f"beat: {problem}" for e in log_entries(beat_log))


# -- a worker stopped mid-send -------------------------------------------------------------


def test_a_worker_stopped_mid_send_finishes_it_without_loss(
    web: Web, processes: Processes, smtp: SmtpSink
) -> None:
    smtp.delay = 2.0
    event = create(web, "in-flight", "every 1 hours")
    worker = processes.worker(concurrency=1)
    assert web.trigger(event["id"]).status_code == 200

    def running() -> bool:
        found = web.instances("in-flight")
        return bool(found) and found[0]["status"] == "running"

    assert wait_until(running, timeout=10), processes.log_text()
    started = time.monotonic()
    processes.stop(worker)  # SIGTERM: a warm shutdown
    assert time.monotonic() - started < 25
    assert worker.returncode == 0, processes.log_text()

    [record] = web.instances("in-flight")
    assert record["status"] == "succeeded", processes.log_text()
    time.sleep(1)
    assert len(smtp.messages) == 1
    assert smtp.messages[0].message["X-Sendbeat-Instance"] == record["uid"]


# -- the Procfile under honcho -----------------------------------------------------------


@pytest.fixture
def honcho(live_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The Procfile started by honcho with a Heroku-like environment; its web URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDBEAT_", "MAIL_"))}
    env.pop("BROKER_URL", None)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        REDIS_URL=live_settings.redis_url,
        MAIL_URL=live_settings.mail_url,
        PORT=str(port),
        SENDBEAT_KEY_PREFIX=live_settings.key_prefix,
        SENDBEAT_QUEUE=live_settings.queue,
        SENDBEAT_LOG_FORMAT="json",
        WEB_CONCURRENCY="1",
        CELERY_WORKER_CONCURRENCY="1",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(40)  # honcho stops its children with SIGTERM, as Heroku does
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        print(log.read_text(errors="replace")[-6000:])


def test_the_procfile_under_honcho_delivers_a_triggered_event(
    honcho: str, store: Store, smtp: SmtpSink
) -> None:
    base = honcho
    _, key = store.create_project("honcho", int(time.time()))

    def ready() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{base}/readyz", timeout=2).status_code == 200
        return False

    assert wait_until(ready, timeout=40, interval=0.5)
    created = requests.post(
        f"{base}/v.1.1/create_scheduled_event",
        json={
            "api_key": key,
            "uid": "via-honcho",
            "schedule": "every 1 hours",
            "metadata": {"arguments": arguments("Via honcho")},
        },
        timeout=10,
    )
    assert created.status_code == 200, created.text
    event_id = created.json()["data"]["id"]
    triggered = requests.post(
        f"{base}/api/unstable/schedules/{event_id}/trigger",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert triggered.json() == {"success": True}

    [received] = smtp.wait_for(1, timeout=20)
    assert received.message["Subject"] == "Via honcho"
    metrics = samples(requests.get(f"{base}/metrics", timeout=5).text)
    assert metrics["sendbeat_executions_total{status=succeeded}"] == 1
