"""Transports against real parts: an aiosmtpd server on loopback (plain, STARTTLS with
AUTH, implicit TLS), a Maildir in tmp_path, and the console logger."""

from __future__ import annotations

import asyncio
import base64
import email
import logging
import mailbox
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from app.core.errors import PermanentDeliveryError, TransientDeliveryError
from app.core.message import Envelope, render
from workers.transport import SmtpConfig, SmtpTransport, transport_from_url

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
ATTACHMENT = b"\x00\x01binary\xff\r\n"
USER, PASSWORD = "mailer", "p@ss:w/rd"
QUOTED_LOGIN = "mailer:p%40ss%3Aw%2Frd"


def envelopes(**changes: Any) -> list[Envelope]:
    arguments: dict[str, Any] = {
        "recipients": ["Zoë <zoe@example.com>"],
        "headers": {"from": "Sender <sender@example.com>", "subject": "Grüße {{name}}"},
        "content": {"text/plain": "Hallo {{name}}", "text/html": "<p>Hallo {{name}}</p>"},
        "variables": {"name": "Zoë"},
        "attachments": {
            "data.bin": {
                "content_type": "application/octet-stream",
                "content": base64.b64encode(ATTACHMENT).decode(),
            }
        },
    }
    arguments.update(changes)
    return list(render(arguments, now=NOW, mail_domain="mail.test"))


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    session: int
    login: bytes | None

    def parsed(self) -> EmailMessage:
        # SMTP lines end in CRLF; a mail client stores them with local line endings.
        local = self.content.replace(b"\r\n", b"\n")
        message = email.message_from_bytes(local, policy=policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class Inbox:
    """aiosmtpd handler: keeps what it receives; answers with the replies set on it."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply is not None:
            return self.data_reply
        login = session.auth_data.login if session.authenticated else None
        content = envelope.original_content or envelope.content
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), content, id(session), login)
        )
        return "250 Message accepted for delivery"


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def serve(inbox: Inbox, port: int | None = None, **options: Any) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=port or free_port(), **options)
    controller.start()
    return controller


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def plain(inbox: Inbox) -> Iterator[Controller]:
    controller = serve(inbox)
    yield controller
    controller.stop()


@pytest.fixture
def starttls(inbox: Inbox, tls_context: ssl.SSLContext) -> Iterator[Controller]:
    controller = serve(
        inbox, tls_context=tls_context, require_starttls=True, authenticator=authenticator
    )
    yield controller
    controller.stop()


def check_mime(message: EmailMessage) -> None:
    assert message["Subject"] == "Grüße Zoë"
    assert message["To"] == "Zoë <zoe@example.com>"
    assert message["Message-ID"].endswith("@mail.test>")
    assert message.get_content_type() == "multipart/mixed"
    body, attachment = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    text, html = body.iter_parts()
    assert text.get_content() == "Hallo Zoë\n"
    assert html.get_content() == "<p>Hallo Zoë</p>\n"
    assert attachment.get_filename() == "data.bin"
    assert attachment.get_payload(decode=True) == ATTACHMENT


# --- SMTP ---------------------------------------------------------------------------


def test_smtp_delivers_the_exact_mime(inbox: Inbox, plain: Controller) -> None:
    [envelope] = envelopes(
        headers={
            "from": "Sender <sender@example.com>",
            "subject": "Grüße {{name}}",
            "cc": "cc@example.com",
        }
    )
    transport = transport_from_url(f"smtp://127.0.0.1:{plain.port}", timeout=5)
    try:
        result = transport.send(envelope)
    finally:
        transport.close()
    assert result.message_id == envelope.message["Message-ID"]
    assert result.accepted == ("zoe@example.com", "cc@example.com")
    assert result.rejected == {}
    [received] = inbox.received
    assert received.mail_from == "sender@example.com"
    assert received.rcpt_tos == ["zoe@example.com", "cc@example.com"]
    assert received.content == envelope.message.as_bytes().replace(b"\n", b"\r\n")
    check_mime(received.parsed())


def test_smtp_keeps_its_connection_and_reconnects_after_the_server_restarts(
    inbox: Inbox,
) -> None:
    first = serve(inbox)
    transport = transport_from_url(f"smtp://127.0.0.1:{first.port}", timeout=5)
    try:
        transport.send(envelopes()[0])
        transport.send(envelopes()[0])
        assert len({received.session for received in inbox.received}) == 1
        first.stop()  # the transport's open connection is now dead
        second = serve(inbox, port=first.port)
        try:
            transport.send(envelopes()[0])
        finally:
            second.stop()
    finally:
        transport.close()
    assert len(inbox.received) == 3
    assert len({received.session for received in inbox.received}) == 2


def pooled(port: int, **options: Any) -> SmtpTransport:
    return SmtpTransport(SmtpConfig.from_url(f"smtp://127.0.0.1:{port}"), timeout=5, **options)


def numbered(count: int) -> list[Envelope]:
    recipients = {f"r{i}@example.com": {"n": i} for i in range(count)}
    return list(render(
        {"recipients": recipients, "headers": {"from": "s@example.com", "subject": "No {{n}}"},
         "content": {"text/plain": "Number {{n}}"}},
        now=NOW, mail_domain="mail.test", instance_id="pool",
    ))  # fmt: skip


def test_threads_share_the_pool_and_every_message_arrives_once_and_whole(
    inbox: Inbox, plain: Controller
) -> None:
    transport = pooled(plain.port, size=4, max_sent=1000)
    sent = numbered(200)
    try:
        with ThreadPoolExecutor(max_workers=16) as threads:
            results = list(threads.map(transport.send, sent))
    finally:
        transport.close()
    assert [r.accepted for r in results] == [e.rcpt_to for e in sent]
    arrived = sorted((r.parsed()["To"], r.parsed()["Subject"]) for r in inbox.received)
    assert arrived == sorted((f"r{i}@example.com", f"No {i}") for i in range(200))
    assert all(r.parsed().get_content().strip().startswith("Number ") for r in inbox.received)
    assert transport.opened <= 4  # at most `size` at once, each reused
    assert len({r.session for r in inbox.received}) <= 4


def test_a_connection_carries_at_most_max_sent_messages(inbox: Inbox, plain: Controller) -> None:
    transport = pooled(plain.port, size=1, max_sent=3)
    try:
        for envelope in numbered(7):
            transport.send(envelope)
    finally:
        transport.close()
    assert transport.opened == 3  # 3 + 3 + 1
    assert len({r.session for r in inbox.received}) == 3


def test_an_idle_connection_past_max_idle_is_replaced(inbox: Inbox, plain: Controller) -> None:
    now = [0.0]
    transport = pooled(plain.port, size=1, max_idle=30, clock=lambda: now[0])
    try:
        transport.send(numbered(1)[0])
        now[0] = 29
        transport.send(numbered(1)[0])
        now[0] = 60
        transport.send(numbered(1)[0])
    finally:
        transport.close()
    assert transport.opened == 2


class Closing(Inbox):
    """Answers the first message, then ends the session unasked (421), as relays do."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)

        def hang_up() -> None:
            server.transport.write(b"421 4.4.2 idle too long\r\n")
            server.transport.close()

        asyncio.get_running_loop().call_later(0.05, hang_up)
        return reply


def test_a_connection_the_server_ended_is_not_reused() -> None:
    inbox = Closing()
    controller = serve(inbox)
    transport = pooled(controller.port, size=1)
    try:
        transport.send(numbered(1)[0])
        time.sleep(0.3)  # the 421 and the close arrive while the connection is idle
        transport.send(numbered(1)[0])  # no failure, no NOOP: a fresh connection
    finally:
        transport.close()
        controller.stop()
    assert transport.opened == 2
    assert len(inbox.received) == 2


def test_smtp_auth_over_starttls(inbox: Inbox, starttls: Controller) -> None:
    url = f"smtp://{QUOTED_LOGIN}@127.0.0.1:{starttls.port}?starttls=require&tls_verify=0"
    transport = transport_from_url(url, timeout=5)
    try:
        result = transport.send(envelopes()[0])
    finally:
        transport.close()
    assert result.accepted == ("zoe@example.com",)
    [received] = inbox.received
    assert received.login == USER.encode()
    check_mime(received.parsed())


def test_smtp_wrong_password_is_permanent(starttls: Controller) -> None:
    url = f"smtp://mailer:wrong@127.0.0.1:{starttls.port}?tls_verify=0"
    transport = transport_from_url(url, timeout=5)
    with pytest.raises(PermanentDeliveryError, match=r"^SMTP 127.0.0.1:\d+: 535 "):
        transport.send(envelopes()[0])
    transport.close()


def test_smtp_verifies_certificates_by_default(starttls: Controller) -> None:
    transport = transport_from_url(f"smtp://127.0.0.1:{starttls.port}", timeout=5)
    with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        transport.send(envelopes()[0])
    transport.close()


def test_starttls_required_but_not_offered_is_permanent(plain: Controller) -> None:
    transport = transport_from_url(f"smtp://127.0.0.1:{plain.port}?starttls=require", timeout=5)
    with pytest.raises(PermanentDeliveryError) as caught:
        transport.send(envelopes()[0])
    transport.close()
    assert caught.value.message == (
        f"SMTP 127.0.0.1:{plain.port}: STARTTLS is required (starttls=require) but not offered"
    )


def test_credentials_are_never_sent_in_the_clear(inbox: Inbox, plain: Controller) -> None:
    transport = transport_from_url(f"smtp://{QUOTED_LOGIN}@127.0.0.1:{plain.port}", timeout=5)
    with pytest.raises(PermanentDeliveryError, match="refusing to send credentials without TLS"):
        transport.send(envelopes()[0])
    transport.close()
    assert inbox.received == []


def test_smtps_implicit_tls(inbox: Inbox, tls_context: ssl.SSLContext) -> None:
    # aiosmtpd only counts STARTTLS as TLS for AUTH; this whole connection is TLS.
    controller = serve(
        inbox, ssl_context=tls_context, authenticator=authenticator, auth_require_tls=False
    )
    transport = transport_from_url(
        f"smtps://{QUOTED_LOGIN}@127.0.0.1:{controller.port}?tls_verify=0", timeout=5
    )
    try:
        result = transport.send(envelopes()[0])
    finally:
        transport.close()
        controller.stop()
    assert result.accepted == ("zoe@example.com",)
    [received] = inbox.received
    assert received.login == USER.encode()
    check_mime(received.parsed())


def test_smtp_451_is_transient(inbox: Inbox, plain: Controller) -> None:
    inbox.data_reply = "451 4.3.0 Try again later"
    transport = transport_from_url(f"smtp://127.0.0.1:{plain.port}", timeout=5)
    with pytest.raises(TransientDeliveryError) as caught:
        transport.send(envelopes()[0])
    transport.close()
    assert caught.value.message == f"SMTP 127.0.0.1:{plain.port}: 451 4.3.0 Try again later"


def test_smtp_550_is_permanent(inbox: Inbox, plain: Controller) -> None:
    inbox.data_reply = "550 5.7.1 Message rejected"
    transport = transport_from_url(f"smtp://127.0.0.1:{plain.port}", timeout=5)
    with pytest.raises(PermanentDeliveryError) as caught:
        transport.send(envelopes()[0])
    transport.close()
    assert caught.value.message == f"SMTP 127.0.0.1:{plain.port}: 550 5.7.1 Message rejected"


def test_every_recipient_refused_is_permanent(inbox: Inbox, plain: Controller) -> None:
    inbox.rcpt_replies["zoe@example.com"] = "550 5.1.1 No such user"
    transport = transport_from_url(f"smtp://127.0.0.1:{plain.port}", timeout=5)
    with pytest.raises(PermanentDeliveryError) as caught:
        transport.send(envelopes()[0])
    transport.close()
    assert caught.value.message == (
        f"SMTP 127.0.0.1:{plain.port}: every recipient was refused"
        " (zoe@example.com: 550 5.1.1 No such user)"
    )


def test_every_recipient_greylisted_is_transient(inbox: Inbox, plain: Controller) -> None:
    inbox.rcpt_replies["zoe@example.com"] = "450 4.2.0 Greylisted"
    transport = transport_from_url(f"smtp://127.0.0.1:{plain.port}", timeout=5)
    with pytest.raises(TransientDeliveryError, match="every recipient was refused"):
        transport.send(envelopes()[0])
    transport.close()


def test_a_partial_refusal_is_reported_not_raised(inbox: Inbox, plain: Controller) -> None:
    inbox.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    [envelope] = envelopes(
        headers={"from": "s@example.com", "cc": "gone@example.com, boss@example.com"}
    )
    transport = transport_from_url(f"smtp://127.0.0.1:{plain.port}", timeout=5)
    try:
        result = transport.send(envelope)
    finally:
        transport.close()
    assert result.accepted == ("zoe@example.com", "boss@example.com")
    assert result.rejected == {"gone@example.com": "550 5.1.1 No such user"}
    assert inbox.received[0].rcpt_tos == ["zoe@example.com", "boss@example.com"]


def test_connection_refused_is_transient() -> None:
    port = free_port()  # nothing listens there
    transport = transport_from_url(f"smtp://127.0.0.1:{port}", timeout=5)
    with pytest.raises(TransientDeliveryError, match=f"^SMTP 127.0.0.1:{port}: ConnectionRefused"):
        transport.send(envelopes()[0])
    transport.close()


def test_smtp_urls() -> None:
    config = SmtpConfig.from_url("smtp://a%20b:p%40ss@mail.example")
    assert (config.host, config.port, config.username, config.password) == (
        "mail.example",
        25,
        "a b",
        "p@ss",
    )
    assert (config.starttls, config.tls_verify, config.implicit_tls) == ("auto", True, False)
    assert SmtpConfig.from_url("smtps://mail.example").port == 465
    with pytest.raises(ValueError, match=r"smtp://u:\*\*\*@x\?tls=1: expected"):
        SmtpConfig.from_url("smtp://u:secret@x?tls=1")
    with pytest.raises(ValueError, match="use smtp://, smtps://, maildir:/// or console://"):
        transport_from_url("http://x")
    with pytest.raises(ValueError, match="three slashes"):
        transport_from_url("maildir://relative/path")


# --- Maildir and console ------------------------------------------------------------


def test_maildir_writes_one_readable_file_per_envelope(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "mail"
    first, second = envelopes(
        recipients="ann@example.com, bob@example.com", recipient_override="qa@example.com"
    )
    transport = transport_from_url(f"maildir://{folder}")
    assert transport.send(first).accepted == ("qa@example.com",)
    transport.send(second)
    transport.close()
    assert {path.name for path in folder.iterdir()} == {"cur", "new", "tmp"}
    assert len(list((folder / "new").iterdir())) == 2
    stored = sorted(mailbox.Maildir(folder, create=False), key=lambda m: str(m["To"]))
    assert [str(message["To"]) for message in stored] == ["ann@example.com", "bob@example.com"]
    assert stored[0]["Delivered-To"] == "qa@example.com"
    assert stored[0]["Return-Path"] == "<sender@example.com>"
    again = email.message_from_bytes(stored[0].as_bytes(), policy=policy.default)
    assert isinstance(again, EmailMessage)
    assert again["Subject"] == "Grüße Zoë"
    assert again["Message-ID"] == first.message["Message-ID"]


def test_maildir_in_an_existing_empty_folder(tmp_path: Path) -> None:
    transport = transport_from_url(f"maildir://{tmp_path}")
    transport.send(envelopes()[0])
    assert len(mailbox.Maildir(tmp_path, create=False)) == 1


def test_console_logs_the_message(caplog: pytest.LogCaptureFixture) -> None:
    [envelope] = envelopes()
    transport = transport_from_url("console://")
    with caplog.at_level(logging.INFO, logger="workers.transport"):
        result = transport.send(envelope)
    assert result.accepted == ("zoe@example.com",)
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert str(envelope.message["Message-ID"]) in record.getMessage()
    assert "From: Sender <sender@example.com>" in record.getMessage()
