"""Delivery transports, chosen by one URL (MAIL_URL, DESIGN.md §6).

``smtp://`` and ``smtps://`` hand envelopes to a mail server, ``maildir:///path`` writes
them into a real Maildir, ``console://`` only logs them. Every transport turns failures
into ``TransientDeliveryError`` (worth retrying: connection trouble, timeouts, SMTP 4xx)
or ``PermanentDeliveryError`` (SMTP 5xx, refused credentials, misconfiguration).
Transports are safe to share between a worker's threads (the SMTP one keeps a pool of
connections).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mailbox
import os
import select
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from app.core.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from app.core.message import Envelope

logger = logging.getLogger(__name__)

SMTP_PORT = 25
SMTPS_PORT = 465
STARTTLS_MODES = ("auto", "require")
SMTP_OPTIONS = ("starttls", "tls_verify")


@dataclass(frozen=True)
class SendResult:
    message_id: str
    accepted: tuple[str, ...]
    rejected: dict[str, str]  # address -> the server's reason


class Transport(Protocol):
    def send(self, envelope: Envelope) -> SendResult: ...

    def close(self) -> None: ...


def transport_from_url(url: str, *, timeout: float = 30.0, connections: int = 8) -> Transport:
    """Build (without connecting) the transport a MAIL_URL names; ValueError when the URL
    is unusable. ``connections`` bounds the SMTP connections open at once."""
    parts = urlsplit(url)
    if parts.scheme in ("smtp", "smtps"):
        return SmtpTransport(SmtpConfig.from_url(url), timeout=timeout, size=connections)
    if parts.scheme == "maildir":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"MAIL_URL {url!r}: use maildir:///absolute/path (three slashes)")
        return MaildirTransport(Path(unquote(parts.path)))
    if parts.scheme == "console":
        return ConsoleTransport()
    raise ValueError(f"MAIL_URL {url!r}: use smtp://, smtps://, maildir:/// or console://")


def _message_id(envelope: Envelope) -> str:
    return str(envelope.message.get("Message-ID", ""))


# --- console ------------------------------------------------------------------------


class ConsoleTransport:
    """Logs each message at INFO and claims every recipient accepted (development)."""

    def send(self, envelope: Envelope) -> SendResult:
        logger.info(
            "console transport: message %s from %s to %s\n%s",
            _message_id(envelope),
            envelope.mail_from,
            ", ".join(envelope.rcpt_to),
            envelope.message.as_string(),
        )
        return SendResult(_message_id(envelope), envelope.rcpt_to, {})

    def close(self) -> None:
        pass


# --- maildir ------------------------------------------------------------------------


class MaildirTransport:
    """Writes one file per envelope into a Maildir's ``new/`` (atomically, via ``tmp/``),
    prefixed with the Return-Path and Delivered-To headers a local delivery agent adds,
    so the envelope (e.g. a recipient_override) stays visible to the reader."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, envelope: Envelope) -> SendResult:
        trace = [f"Return-Path: <{envelope.mail_from}>"]
        trace += [f"Delivered-To: {address}" for address in envelope.rcpt_to]
        data = "\n".join(trace).encode("ascii") + b"\n" + envelope.message.as_bytes()
        try:
            self._maildir().add(data)
        except OSError as error:
            raise TransientDeliveryError(f"Maildir {self.path}: {error}") from error
        return SendResult(_message_id(envelope), envelope.rcpt_to, {})

    def _maildir(self) -> mailbox.Maildir:
        # mailbox.Maildir(create=True) skips cur/new/tmp when the folder already exists.
        for sub in ("cur", "new", "tmp"):
            os.makedirs(self.path / sub, mode=0o700, exist_ok=True)
        return mailbox.Maildir(self.path, create=False)

    def close(self) -> None:
        pass


# --- SMTP ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    implicit_tls: bool
    username: str | None = None
    password: str | None = None
    starttls: str = "auto"  # "auto": when offered; "require": fail without it
    tls_verify: bool = True

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        parts = urlsplit(url)
        implicit = parts.scheme == "smtps"
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        unknown = set(options) - set(SMTP_OPTIONS)
        if unknown or not parts.hostname:
            raise ValueError(
                f"MAIL_URL {_redact(url)}: expected smtp[s]://[user:pass@]host[:port]"
                f"[?starttls=require&tls_verify=0]"
            )
        starttls = options.get("starttls", "auto")
        if starttls not in STARTTLS_MODES:
            raise ValueError(f"MAIL_URL {_redact(url)}: starttls must be auto or require")
        try:
            port = parts.port or (SMTPS_PORT if implicit else SMTP_PORT)
        except ValueError as error:
            raise ValueError(f"MAIL_URL {_redact(url)}: {error}") from None
        return cls(
            host=parts.hostname,
            port=port,
            implicit_tls=implicit,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            starttls=starttls,
            tls_verify=options.get("tls_verify", "1") not in ("0", "false", "no"),
        )

    @property
    def where(self) -> str:
        return f"SMTP {self.host}:{self.port}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@dataclass
class _Session:
    """One open SMTP connection and what the pool needs to know to reuse it."""

    smtp: smtplib.SMTP
    opened: float
    used: float
    sent: int = 0

    def stale(self) -> bool:
        """Whether the server has spoken since our last reply (a 421 or a closed
        connection: it ended the session while idle). One poll of the socket, no round
        trip: a NOOP before every message would double the relay's latency."""
        sock = self.smtp.sock
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.smtp.close()

    def end(self) -> None:
        """End the session politely (QUIT), then close; a server gone first needs none."""
        with contextlib.suppress(smtplib.SMTPException, OSError):
            self.smtp.quit()
        self.close()


class SmtpTransport:
    """Delivers over a pool of SMTP connections shared by a worker's threads: each send
    takes an idle connection (or opens one, at most ``size`` at once) and gives it back
    for the next message. A connection is not reused after a failure, after ``max_sent``
    messages (relays end long sessions), after ``max_idle`` seconds unused (servers end
    idle sessions), or once the server has spoken unasked (a 421, or a close)."""

    def __init__(
        self,
        config: SmtpConfig,
        *,
        timeout: float = 30.0,
        size: int = 8,
        max_sent: int = 100,
        max_idle: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.max_sent = max_sent
        self.max_idle = max_idle
        self._clock = clock
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Session] = []  # the most recently used last
        self.opened = 0  # connections opened so far (for tests and the benchmark)

    def send(self, envelope: Envelope) -> SendResult:
        with self._slots:
            session = self._take() or self._open()
            try:
                refused = session.smtp.send_message(
                    envelope.message,
                    from_addr=envelope.mail_from,
                    to_addrs=list(envelope.rcpt_to),
                )
            except (smtplib.SMTPException, OSError) as error:
                session.close()  # after a failure the session state is unknown
                raise self._classify(error) from error
            except BaseException:
                session.close()
                raise
            session.sent += 1
            self._give_back(session)
        rejected = {address: _reply(code, text) for address, (code, text) in refused.items()}
        accepted = tuple(address for address in envelope.rcpt_to if address not in rejected)
        return SendResult(_message_id(envelope), accepted, rejected)

    def close(self) -> None:
        with self._lock:
            sessions, self._idle = self._idle, []
        for session in sessions:
            session.end()

    def _take(self) -> _Session | None:
        """An idle connection still fit for a message, or None; the unfit are closed."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                session = self._idle.pop()
            if self._clock() - session.used <= self.max_idle and not session.stale():
                return session
            session.close()

    def _give_back(self, session: _Session) -> None:
        if session.sent >= self.max_sent:
            session.end()
            return
        session.used = self._clock()
        with self._lock:
            self._idle.append(session)

    def _open(self) -> _Session:
        try:
            smtp = self._connect()
        except (smtplib.SMTPException, OSError) as error:
            raise self._classify(error) from error
        self.opened += 1
        now = self._clock()
        return _Session(smtp, opened=now, used=now)

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        context = _tls_context(config.tls_verify)
        smtp: smtplib.SMTP
        if config.implicit_tls:
            smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=self.timeout)
        try:
            self._start_session(smtp, context)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _start_session(self, smtp: smtplib.SMTP, context: ssl.SSLContext) -> None:
        config = self.config
        smtp.ehlo()
        encrypted = config.implicit_tls
        if not encrypted and (smtp.has_extn("starttls") or config.starttls == "require"):
            if not smtp.has_extn("starttls"):
                raise PermanentDeliveryError(
                    f"{config.where}: STARTTLS is required (starttls=require) but not offered"
                )
            smtp.starttls(context=context)
            smtp.ehlo()
            encrypted = True
        if config.username is not None:
            if not encrypted:
                # Never send a password in the clear, even when the server would take it.
                raise PermanentDeliveryError(
                    f"{config.where}: refusing to send credentials without TLS"
                )
            smtp.login(config.username, config.password or "")

    def _classify(self, error: BaseException) -> DeliveryError:
        where = self.config.where
        if isinstance(error, DeliveryError):
            return error
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            return _all_refused(where, error.recipients)
        code = getattr(error, "smtp_code", None)
        if isinstance(code, int) and code >= 500:
            return PermanentDeliveryError(f"{where}: {_reply(code, error_text(error))}")
        if isinstance(code, int) and code >= 400:
            return TransientDeliveryError(f"{where}: {_reply(code, error_text(error))}")
        if isinstance(error, smtplib.SMTPNotSupportedError):
            return PermanentDeliveryError(f"{where}: {error}")
        return TransientDeliveryError(f"{where}: {type(error).__name__}: {error}")


def _all_refused(where: str, refused: dict[str, tuple[int, bytes]]) -> DeliveryError:
    reasons = "; ".join(f"{address}: {_reply(*reply)}" for address, reply in refused.items())
    message = f"{where}: every recipient was refused ({reasons})"
    # Only when every refusal is temporary (e.g. greylisting) can a retry help.
    if all(400 <= code < 500 for code, _ in refused.values()):
        return TransientDeliveryError(message)
    return PermanentDeliveryError(message)


def error_text(error: BaseException) -> bytes | str:
    return getattr(error, "smtp_error", b"") or str(error)


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}".strip()


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """One context per process (they are thread-safe): loading the CA store costs ~25 ms,
    which a new connection every ``max_sent`` messages must not pay each time."""
    context = ssl.create_default_context()
    if not verify:
        # tls_verify=0: for self-signed test servers only; the link is encrypted but
        # the server is not authenticated.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
