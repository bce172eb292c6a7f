"""RabbitMQ as the broker (``BROKER_URL=amqp://...``) while the store stays Redis: a
real worker and beat, a manual trigger and an ``every 2 secs`` schedule, checked at a
real SMTP server. Needs a RabbitMQ on 127.0.0.1:5672 with the guest account: the test
skips without one locally and fails without one on CI (``CI`` set)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

import tests.integration.conftest as itest
from app import create_app
from app.core.publisher import Publisher
from app.core.settings import Settings
from app.core.store import Store
from tests.integration.conftest import Processes, SmtpSink, Web

pytestmark = pytest.mark.slow

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmq_answers() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5672), 1):
        return True
    return False


@pytest.fixture
def amqp_settings(live_settings: Settings) -> Iterator[Settings]:
    if not rabbitmq_answers():
        message = "no RabbitMQ answers on 127.0.0.1:5672 (start rabbitmq-server to run this)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield live_settings.with_(broker_url=AMQP_URL)
    with Connection(AMQP_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        with contextlib.suppress(Exception):  # the queue may never have been declared
            channel.queue_delete(live_settings.queue)
        with contextlib.suppress(Exception):
            channel.exchange_delete(live_settings.queue)


@pytest.fixture
def amqp_processes(
    amqp_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Processes]:
    original = itest.process_env

    def process_env(settings: Settings) -> dict[str, str]:
        return {**original(settings), "BROKER_URL": AMQP_URL}

    monkeypatch.setattr(itest, "process_env", process_env)
    processes = Processes(amqp_settings, tmp_path)
    yield processes
    processes.stop_all()


def test_rabbitmq_broker_delivers_triggered_and_scheduled_events(
    amqp_settings: Settings, amqp_processes: Processes, store: Store, smtp: SmtpSink
) -> None:
    publisher = Publisher(amqp_settings.effective_broker_url, amqp_settings.queue)
    app = create_app(amqp_settings, store=store, publisher=publisher)
    _, key = store.create_project("amqp", int(time.time()))
    web = Web(app.test_client(), key, store)
    try:
        run_on_rabbitmq(web, amqp_processes, store, smtp, amqp_settings.queue)
    finally:
        publisher.close()


def run_on_rabbitmq(
    web: Web, processes: Processes, store: Store, smtp: SmtpSink, queue: str
) -> None:
    arguments = {
        "recipients": "amqp@example.com",
        "headers": {"from": "sendbeat@example.com", "subject": "Over RabbitMQ"},
        "content": {"text/plain": "Carried by RabbitMQ."},
    }
    created = web.call(
        "create_scheduled_event",
        {"uid": "amqp", "schedule": "every 2 secs", "metadata": {"arguments": arguments}},
    )
    assert created.status_code == 200, created.get_json()
    processes.worker()
    assert "amqp://guest:**@127.0.0.1:5672//" in processes.log_text()
    assert web.trigger(created.get_json()["data"]["id"]).get_json() == {"success": True}
    processes.beat()

    received = smtp.wait_for(4, timeout=20)

    assert len(received) >= 4, processes.log_text()
    per_instance = Counter(r.message["X-Sendbeat-Instance"] for r in received)
    assert set(per_instance.values()) == {1}
    triggers = [i for i in web.instances("amqp") if i["trigger"] == "manual"]
    assert [i["status"] for i in triggers] == ["succeeded"]
    assert store.redis.llen(queue) == 0  # nothing went to a Redis queue
