"""Delivery transports, chosen by one URL (MAIL_URL, DESIGN.md §6).

``smtp://`` and ``smtps://`` hand envelopes to a mail server, ``maildir:///path`` writes
them into a real Maildir, ``console://`` only logs them. Every transport turns failures
into ``TransientDeliveryError`` (worth retrying: connection trouble, timeouts, SMTP 4xx)
or ``PermanentDeliveryError`` (SMTP 5xx, refused credentials, misconfiguration).
A transport object serves one worker thread at a time.
"""

from __future__ import annotations

import logging
import mailbox
import os
import smtplib
import ssl
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


def transport_from_url(url: str, *, timeout: float = 30.0) -> Transport:
    """Build (without connecting) the transport a MAIL_URL names; ValueError when the URL
    is unusable."""
    parts = urlsplit(url)
    if parts.scheme in ("smtp", "smtps"):
        return SmtpTransport(SmtpConfig.from_url(url), timeout=timeout)
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


class SmtpTransport:
    """Delivers over one SMTP connection, kept open across sends and reopened when the
    server has dropped it."""

    def __init__(self, config: SmtpConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._smtp: smtplib.SMTP | None = None

    def send(self, envelope: Envelope) -> SendResult:
        try:
            refused = self._connection().send_message(
                envelope.message, from_addr=envelope.mail_from, to_addrs=list(envelope.rcpt_to)
            )
        except (smtplib.SMTPException, OSError) as error:
            self._drop()  # after a failure the session state is unknown: start afresh
            raise self._classify(error) from error
        rejected = {address: _reply(code, text) for address, (code, text) in refused.items()}
        accepted = tuple(address for address in envelope.rcpt_to if address not in rejected)
        return SendResult(_message_id(envelope), accepted, rejected)

    def close(self) -> None:
        if self._smtp is None:
            return
        try:
            self._smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the server went away first; nothing left to end
        finally:
            self._drop()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None and not self._alive(self._smtp):
            self._drop()
        if self._smtp is None:
            self._smtp = self._connect()
        return self._smtp

    def _alive(self, smtp: smtplib.SMTP) -> bool:
        try:
            return smtp.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

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

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

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


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        # tls_verify=0: for self-signed test servers only; the link is encrypted but
        # the server is not authenticated.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
