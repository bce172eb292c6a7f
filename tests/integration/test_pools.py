"""Every worker pool sendbeat supports sends each message exactly once, whole, and records
what happened — behind a relay that is sometimes slow and sometimes answers 451 or 421.
Counted at a real SMTP server, read from the real execution records."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest

from app.core.records import InstanceStatus
from app.core.store import Store
from tests.integration.conftest import Processes, SmtpSink, Web, wait_until

pytestmark = pytest.mark.slow

MESSAGES = 120
DOMAIN = "sendbeat.local"


def flaky_relay(seed: int) -> Any:
    """Most answers at once, some after 0.3 s; one in ten 451, one in twenty 421."""
    draw = random.Random(seed)
    lock = threading.Lock()

    def decide() -> tuple[float, str | None]:
        with lock:
            roll = draw.random()
        if roll < 0.10:
            return 0.0, "451 4.3.0 try again later"
        if roll < 0.15:
            return 0.0, "421 4.3.2 service shutting down"
        return (0.3 if roll > 0.85 else 0.01), None

    return decide


def arguments(i: int) -> dict[str, Any]:
    recipients = [f"r{i}-{n}@example.com" for n in range(1 + i % 3)]
    return {
        "recipients": recipients,
        "headers": {"from": "Sender <sender@example.com>", "subject": f"Message {i}"},
        "content": {"text/plain": f"Body {i}"},
    }


@pytest.mark.parametrize(("pool", "concurrency"), [("threads", 16), ("prefork", 2)])
def test_every_pool_sends_each_copy_once_whole_and_records_it_truthfully(
    web: Web, processes: Processes, smtp: SmtpSink, store: Store, pool: str, concurrency: int
) -> None:
    smtp.flaky = flaky_relay(seed=7)
    ids = {}
    for i in range(MESSAGES):
        response = web.call("send_message", {"uid": f"m{i}", "arguments": arguments(i)})
        assert response.status_code == 200, response.get_json()
        ids[response.get_json()["data"]["message"]["id"]] = i
    processes.worker(pool=pool, concurrency=concurrency)
    banner = {"threads": "thread", "prefork": "prefork"}[pool]
    assert f"concurrency: {concurrency} ({banner})" in processes.log_text()  # that pool ran
    processes.beat()  # publishes the retries when their backoff runs out

    def ended() -> bool:
        records = [store.instance(instance_id) for instance_id in ids]
        done = (InstanceStatus.SUCCEEDED, InstanceStatus.FAILED, InstanceStatus.CANCELLED)
        return all(r is not None and r.status in done for r in records)

    assert wait_until(ended, timeout=150), processes.log_text()[-3000:]
    copies = sum(1 + i % 3 for i in range(MESSAGES))
    received = smtp.wait_for(copies, timeout=5)

    records = {instance_id: store.instance(instance_id) for instance_id in ids}
    statuses = Counter(r.status for r in records.values() if r is not None)
    assert statuses == {InstanceStatus.SUCCEEDED: MESSAGES}, statuses
    assert smtp.refused > 0  # the relay did fail some of them
    assert any(r is not None and r.attempts > 1 for r in records.values())

    # Each copy exactly once, whole: its own recipient, subject, body and Message-ID.
    seen = Counter((m.message["X-Sendbeat-Instance"], m.message["To"]) for m in received)
    expected = {
        (instance_id, to) for instance_id, i in ids.items() for to in arguments(i)["recipients"]
    }
    assert set(seen) == expected
    assert max(seen.values()) == 1
    for m in received:
        instance_id = m.message["X-Sendbeat-Instance"]
        i = ids[instance_id]
        place = arguments(i)["recipients"].index(m.message["To"])
        assert m.rcpt_tos == [m.message["To"]]
        assert m.message["Subject"] == f"Message {i}"
        assert m.message.get_content().strip() == f"Body {i}"
        assert m.message["Message-ID"] == f"<{instance_id}.{place}@{DOMAIN}>"
    # A record says succeeded only for what the server took with a 250.
    for instance_id, record in records.items():
        assert record is not None and record.result is not None
        wanted = arguments(ids[instance_id])["recipients"]
        assert sorted(record.result["accepted"]) == sorted(wanted)
