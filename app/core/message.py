"""send_message arguments: validation, and rendering into MIME envelopes (DESIGN.md §6).

Pure domain code: no Flask, no Celery, no network. ``validate_arguments`` runs when a
message or event is created (``$ref`` branches are only shape-checked then); the worker
resolves the references (``workers.remote``) and calls ``render``, which validates the
resolved arguments again, because remote content can be anything.

Every argument is bounded (``MessageLimits`` and the MAX_ constants below), and every
bound is checked before any work that grows with the input: the stdlib address parser
is quadratic, and placeholders multiply a small request into a large message. ``render``
yields one copy at a time, so a worker holds one message in memory whatever the number
of recipients.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, make_msgid
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from app.core.errors import InvalidMessage

FIELDS = ("recipients", "headers", "content", "variables", "recipient_override", "attachments",
          "webhook")  # fmt: skip
CONTENT_TYPES = ("text/plain", "text/html")
# Headers a caller may set besides any X- header. Everything else is either set by
# sendbeat (To, Date, Message-ID, MIME and Content-* headers) or belongs to the
# transport (Received, Return-Path), and letting callers set it would break the message.
ALLOWED_HEADERS = frozenset(
    {
        "from",
        "subject",
        "reply-to",
        "cc",
        "sender",
        "in-reply-to",
        "references",
        "list-id",
        "list-help",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "precedence",
        "auto-submitted",
        "importance",
        "priority",
        "organization",
        "keywords",
        "comments",
    }
)
ADDRESS_LIST_HEADERS = ("reply-to", "cc")
REF_KEYS = ("$ref", "$type", "$encode", "$method")
REF_METHODS = ("GET", "POST")
# $type values whose body is parsed into data; any other type is raw bytes.
PARSED_TYPES = {
    "application/json": "json",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "application/csv": "csv",
    "text/csv": "csv",
}
DEFAULT_REF_TYPE = "application/json"

# Every separator str.splitlines() knows: the mail library refuses to fold a header
# value holding any of them, so they are refused when a message is created, not when
# a worker builds it.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates: not encodable as UTF-8
# A mailbox in its plain RFC 5322 shape: addr-spec, or a display name then <addr-spec>
# (no comments, no obsolete forms, no control characters; a dot in a display name needs
# quotes). Every repetition takes one character or one quoted string, so matching is
# linear, and the parts are read from the match: the stdlib parser, quadratic in the
# number of tokens, is never run on client input.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
_LOCAL = rf"{_ATEXT}+(?:\.{_ATEXT}+)*|{_QUOTED}"
_DOMAIN = r'[^\s@<>()\[\],;:\\"\x00-\x1f\x7f]+'
_PHRASE = rf'(?:[^"<>@,;:.\\()\[\]\x00-\x08\x0a-\x1f\x7f]|{_QUOTED})*'
_BARE = re.compile(rf"\s*({_LOCAL})@({_DOMAIN})\s*")
_NAMED = re.compile(rf"\s*({_PHRASE})<({_LOCAL})@({_DOMAIN})>\s*")
_QUOTED_PART = re.compile(_QUOTED)
_ESCAPED = re.compile(r"\\(.)")
# The webhook argument (issue 13; app.core.webhook signs and renders it).
WEBHOOK_FIELDS = ("url", "method", "headers", "body")
WEBHOOK_METHODS = ("POST", "PUT")
WEBHOOK_MAX_URL = 2048
WEBHOOK_MAX_HEADERS = 50
WEBHOOK_MAX_HEADER_NAME = 128
WEBHOOK_MAX_HEADER_VALUE = 8192
# Set by sendbeat on every delivery (or by the HTTP client), never by a caller.
WEBHOOK_RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature",
                                      "content-type", "content-length", "host",
                                      "transfer-encoding", "connection"})  # fmt: skip
_WEBHOOK_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_WEBHOOK_LINE_BREAK = re.compile(r"[\r\n\x00]")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
_BAD_FILENAME = re.compile("[/\\\\\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

Check = Callable[[object, str], Iterator[str]]

# Bounds of every argument, checked before any parsing or rendering (docs/messages.md,
# "Limits"). Fixed ones are constants; those an operator may want to move are settings
# (MessageLimits).
MAX_ADDRESS_CHARS = 320  # RFC 3696: 64 for the local part, 255 for the domain, and "@"
RECIPIENT_CHARS = MAX_ADDRESS_CHARS + 2  # one address of a comma-separated string, and ", "
MAX_HEADERS = 100
MAX_HEADER_NAME_CHARS = 128
MAX_HEADER_CHARS = 8192  # a header value; folded, it still fits any server's limits
# All header names and values together: the mail library folds a non-ASCII header at
# ~30 µs a character, and it does so again for every copy.
MAX_HEADERS_CHARS = 16384
MAX_FILENAME_CHARS = 255  # what file systems store
MAX_URL_CHARS = 2048
MAX_DEPTH = 100  # nesting of any JSON value in the arguments
# Values in all the arguments (what every object and array holds): more than any message
# within the other bounds needs, and few enough to walk in milliseconds.
MAX_VALUES = 100_000
MAX_ATTACHMENTS = 100
MESSAGE_OVERHEAD = 1024  # bytes the estimate adds for Date, Message-ID, MIME headers


class _HeaderClasses(HeaderRegistry):
    """The stdlib header registry makes a new class each time it parses a header (a
    quarter of the time it takes to build a message); this one makes each class once."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        lower = name.lower()
        made = self._made.get(lower)
        if made is None:
            made = self._made[lower] = super().__getitem__(lower)
        return made


# Headers whose value, when it needs no encoding or folding, is written as it is.
_ADDRESS_HEADERS = frozenset(("from", "to", *ADDRESS_LIST_HEADERS))
_VERBATIM = _ADDRESS_HEADERS | {
    "subject", "date", "message-id", "x-sendbeat-instance", "mime-version",
    "content-transfer-encoding",
}  # fmt: skip
_ADDRESS = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+"
_PLAIN_ADDRESS = re.compile(rf"{_ADDRESS}|[A-Za-z0-9]+(?: [A-Za-z0-9]+)* <{_ADDRESS}>")


class _Policy(EmailPolicy):
    """policy.default, faster for what sendbeat writes on every copy. A value that needs
    neither encoding nor folding (one short line of printable ASCII, no encoded-word
    look-alike; in an address header, addresses with at most a plain name) is kept as
    written, and the library writes it out unchanged, as it does a header it parsed from
    a message; any other value goes through the header parser (with its classes made
    once). Both give the same bytes (tests/unit/test_message.py)."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, str) and _verbatim(name, value):
            return (name, value)
        return super().header_store_parse(name, value)


def _verbatim(name: str, value: str) -> bool:
    lower = name.lower()
    if lower not in _VERBATIM or len(name) + len(value) + 2 > 78:
        return False
    if not (value.isascii() and value.isprintable()) or "=?" in value:
        return False
    if value != value.strip() or "  " in value:
        return False
    if lower in _ADDRESS_HEADERS:
        return all(_PLAIN_ADDRESS.fullmatch(a) for a in value.split(", "))
    return True


POLICY = _Policy(header_factory=_HeaderClasses())


@dataclass(frozen=True)
class MessageLimits:
    """The configurable bounds of one message (``Settings.message_limits``); the
    defaults are the settings' defaults."""

    max_recipients: int = 1000  # SENDBEAT_MAX_RECIPIENTS
    max_message_bytes: int = 25 * 1024 * 1024  # SENDBEAT_MAX_MESSAGE_BYTES
    max_variables_bytes: int = 1024 * 1024  # SENDBEAT_MAX_VARIABLES_BYTES
    max_refs: int = 20  # SENDBEAT_MAX_REFS


DEFAULT_LIMITS = MessageLimits()


@dataclass(frozen=True)
class Envelope:
    """One rendered copy of a message and where the transport delivers it."""

    recipient: str  # bare address this copy is for (before recipient_override)
    mail_from: str  # bare address
    rcpt_to: tuple[str, ...]  # bare addresses the transport delivers to
    message: EmailMessage


# --- references ---------------------------------------------------------------------


def is_ref(value: object) -> bool:
    """True for a remote-content branch ``{"$ref": url, ...}``."""
    return isinstance(value, dict) and "$ref" in value


def contains_refs(value: object) -> bool:
    """True when any branch of ``value`` is a ``$ref`` object."""
    if is_ref(value):
        return True
    if isinstance(value, dict):
        return any(contains_refs(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_refs(item) for item in value)
    return False


def ref_type(ref: Mapping[str, Any]) -> str:
    """The declared media type of a ``$ref``, lower-cased and without parameters."""
    declared = ref.get("$type") or DEFAULT_REF_TYPE
    return str(declared).split(";", 1)[0].strip().lower()


def ref_format(ref: Mapping[str, Any]) -> str:
    """How fetched content becomes a value: "base64", "json", "yaml" or "csv"."""
    if ref.get("$encode") == "base64":
        return "base64"
    return PARSED_TYPES.get(ref_type(ref), "base64")


def ref_problems(ref: Mapping[str, Any], path: str) -> Iterator[str]:
    """What is wrong with the shape of one ``$ref`` object (its content is not known yet)."""
    for key in ref:
        if key not in REF_KEYS:
            yield f"{path}.{key}: is not a $ref key (use $ref, $type, $encode, $method)"
    url = ref["$ref"]
    if isinstance(url, str) and len(url) > MAX_URL_CHARS:
        yield f"{path}.$ref: is {len(url):,} characters; a URL may have at most {MAX_URL_CHARS:,}"
    elif not isinstance(url, str) or not _is_http_url(url):
        yield f"{path}.$ref: must be an http or https URL"
    kind = ref.get("$type", DEFAULT_REF_TYPE)
    if not isinstance(kind, str) or not _MIME_TYPE.fullmatch(kind.split(";", 1)[0].strip()):
        yield f"{path}.$type: must be a media type such as application/json"
    encode = ref.get("$encode")
    if encode is not None and encode != "base64":
        yield f'{path}.$encode: must be "base64"'
    if ref.get("$method", "GET") not in REF_METHODS:
        yield f"{path}.$method: must be GET or POST"
    if isinstance(kind, str) and encode is None and ref_type(ref) not in PARSED_TYPES:
        yield f'{path}: $type {kind} is raw bytes, so it needs "$encode": "base64"'


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https") and bool(parts.hostname) and not _LINE_BREAK.search(url)
    )


# --- addresses ----------------------------------------------------------------------


def parse_address(text: object) -> Address | None:
    """One mailbox (``ann@example.com`` or ``Ann <ann@example.com>``), its domain
    IDNA-encoded; None when ``text`` is not exactly one valid address.

    Read with a linear pattern (``_BARE``, ``_NAMED``) rather than the stdlib parser,
    whose time grows with the square of the tokens (a 320-character address with many
    words took ~4 ms: a thousand of them, seconds of web CPU)."""
    if not isinstance(text, str) or len(text) > MAX_ADDRESS_CHARS:
        return None
    if _LINE_BREAK.search(text) or SURROGATE.search(text):
        return None
    name = ""
    if bare := _BARE.fullmatch(text):
        local, domain = bare.groups()
    elif named := _NAMED.fullmatch(text):
        phrase, local, domain = named.groups()
        name = _display_name(phrase)
    else:
        return None
    username = _unquote(local) if local.startswith('"') else local
    ascii_domain = _ascii_domain(domain)
    # A non-ASCII local part would need SMTPUTF8 end to end.
    if not username or not username.isascii() or ascii_domain is None:
        return None
    return Address(display_name=name, username=username, domain=ascii_domain)


def _display_name(phrase: str) -> str:
    """A display name as written: quoted parts unquoted, runs of blanks made one space."""
    pieces = []
    position = 0
    for quoted in _QUOTED_PART.finditer(phrase):
        pieces.append(phrase[position : quoted.start()])
        pieces.append(_unquote(quoted.group()))
        position = quoted.end()
    pieces.append(phrase[position:])
    return " ".join("".join(pieces).split())


def _unquote(quoted: str) -> str:
    return _ESCAPED.sub(r"\1", quoted[1:-1])


def _ascii_domain(domain: str) -> str | None:
    # Checked first: the idna codec is slow on long labels it will refuse anyway.
    if len(domain) > 255 or any(len(label) > 63 for label in domain.split(".")):
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = ascii_domain.split(".")
    return ascii_domain if all(_LABEL.fullmatch(label) for label in labels) else None


def split_addresses(text: str) -> list[str]:
    """Split a comma-separated address list, keeping commas inside quotes or <...>."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = angled = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char in "<>" and not quoted:
            angled = char == "<"
        elif char == "," and not quoted and not angled:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


def _address_problem(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, str):
        yield f"{path}: must be a string"
    elif len(value) > MAX_ADDRESS_CHARS:
        yield (
            f"{path}: is {len(value):,} characters; an address may have at most"
            f" {MAX_ADDRESS_CHARS} (RFC 3696)"
        )
    elif parse_address(value) is None:
        yield f"{path}: {value!r} is not a valid email address"


def _address_list_problems(value: str, path: str) -> Iterator[str]:
    for piece in split_addresses(value):
        yield from _address_problem(piece, path)


# --- validation ---------------------------------------------------------------------


def validate_arguments(
    arguments: object, *, path: str = "arguments", limits: MessageLimits = DEFAULT_LIMITS
) -> None:
    """Raise InvalidMessage listing every problem as ``'<path>.<field>: <what>'``.

    Cheap checks come first, and each later step runs only when the earlier ones found
    nothing: the shape of the whole value (nesting, lone surrogates, the number of
    $refs), then each field and its bounds, then the sizes (variables, and each
    recipient's message, computed without rendering it)."""
    steps = (_structure_problems, _fields_problems, _size_problems)
    for step in steps:
        problems = list(step(arguments, path, limits))
        if problems:
            raise InvalidMessage(problems[0], problems)


Trail = tuple[Any, object]  # (the parent's trail or None, the key or index of this step)


def _structure_problems(value: object, path: str, limits: MessageLimits) -> Iterator[str]:
    """Nesting, the number of values, lone surrogates and the $ref count, in one pass
    without recursion, so that nothing after it meets a value it cannot walk, encode or
    afford to fetch. Scalars are checked where they are met; only containers are
    stacked, and a path is spelled only for an error."""
    refs = values = 0
    stack: list[tuple[Any, int, Trail]] = [(value, 0, (None, path))]
    while stack:
        item, depth, trail = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth >= MAX_DEPTH:
            yield f"{_path(trail)}: is nested more than {MAX_DEPTH} levels deep"
            return
        values += len(item)
        if values > MAX_VALUES:
            yield (
                f"{path}: holds more than {MAX_VALUES:,} values in all (the members of its"
                " objects and arrays, at every level)"
            )
            return
        if isinstance(item, dict):
            refs += "$ref" in item
            pairs: Iterable[tuple[Any, object]] = item.items()
        else:
            pairs = enumerate(item)
        for key, child in pairs:
            if isinstance(key, str) and (bad := SURROGATE.search(key)):
                yield f"{_path(trail)}: the name '{_printable(key)}' {_surrogate(bad.group())}"
            elif isinstance(child, str) and (bad := SURROGATE.search(child)):
                yield f"{_path((trail, key))}: {_surrogate(bad.group())}"
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1, (trail, key)))
    if refs > limits.max_refs:
        yield f"{path}: has {refs} $refs; the limit is SENDBEAT_MAX_REFS = {limits.max_refs}"


def _step(key: object) -> str:
    return f"[{key}]" if isinstance(key, int) else f".{_printable(key)}"


def deeper_than(value: object, levels: int) -> bool:
    """True when ``value`` nests lists and objects more than ``levels`` deep (found
    without recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= levels:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _path(trail: Trail) -> str:
    """The path a trail of keys spells, from its root (the path validation began at)."""
    keys: list[object] = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    root, *steps = reversed(keys)
    return str(root) + "".join(_step(key) for key in steps)


def _surrogate(char: str) -> str:
    return f"contains a lone surrogate (U+{ord(char):04X}), which is not valid Unicode"


def _printable(text: object) -> str:
    """``text`` safe to put in an error: a lone surrogate written as an escape."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _fields_problems(arguments: object, path: str, limits: MessageLimits) -> Iterator[str]:
    if is_ref(arguments):
        yield from ref_problems(arguments, path)  # type: ignore[arg-type]
        return
    if not isinstance(arguments, dict):
        yield f"{path}: must be an object"
        return
    yield from _unknown_fields(arguments, FIELDS, path)
    # Email needs all three; with a webhook, email is sent only when recipients are given.
    if "webhook" not in arguments or "recipients" in arguments:
        for name in ("recipients", "headers", "content"):
            if name not in arguments:
                yield f"{path}.{name}: is required"
    checks: dict[str, Check] = {
        "recipients": partial(_recipients_problems, limits=limits),
        "headers": _headers_problems,
        "content": _content_problems,
        "variables": _variables_problems,
        "recipient_override": _address_problem,
        "attachments": _attachments_problems,
        "webhook": _webhook_problems,
    }
    for name, check in checks.items():
        if name in arguments:
            yield from _unless_ref(check, arguments[name], f"{path}.{name}")


def _unknown_fields(value: dict[str, Any], known: tuple[str, ...], path: str) -> Iterator[str]:
    for key in value:
        if key not in known:
            yield f"{path}.{key}: is not a known field (use {', '.join(known)})"


def _webhook_problems(value: object, path: str) -> Iterator[str]:
    """What is wrong with a ``webhook`` argument (its ``$ref``s are checked elsewhere)."""
    if not isinstance(value, dict):
        yield f"{path}: must be an object with url, and optionally method, headers, body"
        return
    yield from _unknown_fields(value, WEBHOOK_FIELDS, path)
    url = value.get("url")
    if url is None:
        yield f"{path}.url: is required"
    elif not isinstance(url, str) or not _is_http_url(url):
        yield f"{path}.url: must be an http or https URL"
    elif len(url) > WEBHOOK_MAX_URL:
        yield f"{path}.url: is {len(url):,} characters; the limit is {WEBHOOK_MAX_URL:,}"
    if value.get("method", "POST") not in WEBHOOK_METHODS:
        yield f"{path}.method: must be POST or PUT"
    headers = value.get("headers", {})
    if not isinstance(headers, dict):
        yield f"{path}.headers: must be an object of header names to text values"
        return
    if len(headers) > WEBHOOK_MAX_HEADERS:
        yield f"{path}.headers: has {len(headers)} headers; the limit is {WEBHOOK_MAX_HEADERS}"
    for name, text in headers.items():
        where = f"{path}.headers.{name[:WEBHOOK_MAX_HEADER_NAME]}"
        if not _WEBHOOK_TOKEN.fullmatch(name) or len(name) > WEBHOOK_MAX_HEADER_NAME:
            most = WEBHOOK_MAX_HEADER_NAME
            yield f"{where}: is not a valid header name (1 to {most} token characters)"
        elif name.lower() in WEBHOOK_RESERVED_HEADERS:
            yield f"{where}: is set by sendbeat"
        elif not isinstance(text, str):
            yield f"{where}: must be text"
        elif len(text) > WEBHOOK_MAX_HEADER_VALUE or _WEBHOOK_LINE_BREAK.search(text):
            yield f"{where}: must be at most {WEBHOOK_MAX_HEADER_VALUE:,} characters on one line"


def _unless_ref(check: Check, value: object, path: str) -> Iterator[str]:
    """A ``$ref`` stands in for any value: only its own shape is checked."""
    if is_ref(value):
        yield from ref_problems(value, path)  # type: ignore[arg-type]
    else:
        yield from check(value, path)


def _recipients_problems(value: object, path: str, *, limits: MessageLimits) -> Iterator[str]:
    most = limits.max_recipients
    too_many = f"the limit is SENDBEAT_MAX_RECIPIENTS = {most:,}"
    if isinstance(value, str):
        if len(value) > most * RECIPIENT_CHARS:
            yield (
                f"{path}: is {len(value):,} characters; the limit is {most * RECIPIENT_CHARS:,}"
                f" ({RECIPIENT_CHARS} for each of SENDBEAT_MAX_RECIPIENTS = {most:,} addresses)"
            )
            return
        pieces = split_addresses(value)  # linear; each piece is checked alone
        if len(pieces) > most:
            yield f"{path}: has {len(pieces):,} recipients; {too_many}"
            return
        for piece in pieces:
            yield from _address_problem(piece, path)
        value = pieces
    elif isinstance(value, list):
        if len(value) > most:
            yield f"{path}: has {len(value):,} recipients; {too_many}"
            return
        for index, item in enumerate(value):
            yield from _unless_ref(_address_problem, item, f"{path}[{index}]")
    elif isinstance(value, dict):
        if len(value) > most:
            yield f"{path}: has {len(value):,} recipients; {too_many}"
            return
        for address, variables in value.items():
            yield from _address_problem(address, f"{path}.{address}")
            if variables is not None:
                yield from _unless_ref(_own_variables_problems, variables, f"{path}.{address}")
    else:
        yield (
            f"{path}: must be a comma-separated string, an array of addresses"
            " or an object mapping addresses to variables"
        )
        return
    if not value:
        yield f"{path}: must name at least one address"


def _variables_problems(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: must be an object"


def _own_variables_problems(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: the recipient's variables must be an object (or null)"


def _headers_problems(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: must be an object"
        return
    if len(value) > MAX_HEADERS:
        yield f"{path}: has {len(value):,} headers; at most {MAX_HEADERS} are allowed"
        return
    seen: set[str] = set()
    for name, header in value.items():
        yield from _header_problems(name, header, path, seen)
    if "from" not in seen:
        yield f"{path}.from: is required"
    total = sum(len(name) + len(v) for name, v in value.items() if isinstance(v, str))
    if total > MAX_HEADERS_CHARS:
        yield (
            f"{path}: the header names and values come to {total:,} characters; at most"
            f" {MAX_HEADERS_CHARS:,} are allowed"
        )


def _header_problems(name: str, value: object, path: str, seen: set[str]) -> Iterator[str]:
    lower = name.lower()
    if len(name) > MAX_HEADER_NAME_CHARS:
        yield f"{path}: a header name may have at most {MAX_HEADER_NAME_CHARS} characters"
        return
    if not _HEADER_NAME.fullmatch(name):
        yield f"{path}: {name!r} is not a valid header name"
        return
    if lower in seen:
        yield f"{path}.{name}: is given twice (header names are case-insensitive)"
    seen.add(lower)
    if lower == "bcc":
        yield f"{path}.{name}: is not supported; every recipient gets its own copy, so list the address in recipients"  # noqa: E501
    elif lower == "to":
        yield f"{path}.{name}: is set from recipients"
    elif lower not in ALLOWED_HEADERS and not lower.startswith("x-"):
        yield f"{path}.{name}: is not a header you may set (use from, subject, reply-to, cc, an X- header or another header listed in docs/messages.md)"  # noqa: E501
    elif is_ref(value):
        yield from ref_problems(value, f"{path}.{name}")  # type: ignore[arg-type]
    else:
        yield from _header_value_problems(lower, value, f"{path}.{name}")


def _header_value_problems(lower: str, value: object, path: str) -> Iterator[str]:
    if not isinstance(value, str):
        yield f"{path}: must be a string"
    elif len(value) > MAX_HEADER_CHARS:
        yield (
            f"{path}: is {len(value):,} characters; a header value may have at most"
            f" {MAX_HEADER_CHARS:,}"
        )
    elif line_break := _line_break(value):
        yield f"{path}: must not contain {line_break}"
    elif lower in ("from", "sender"):
        yield from _address_problem(value, path)
    elif lower in ADDRESS_LIST_HEADERS:
        yield from _address_list_problems(value, path)


def _line_break(text: str) -> str | None:
    """What makes ``text`` more than one line to the mail library, or None."""
    found = _LINE_BREAK.search(text)
    if found is None:
        return None
    if found.group() in "\r\n":
        return "CR or LF"
    return f"U+{ord(found.group()):04X}, a line break to the mail library"


def _content_problems(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: must be an object"
        return
    for kind, text in value.items():
        if kind not in CONTENT_TYPES:
            yield f"{path}.{kind}: is not a supported content type (use text/plain or text/html)"
        elif not is_ref(text) and not isinstance(text, str):
            yield f"{path}.{kind}: must be a string"
        elif is_ref(text):
            yield from ref_problems(text, f"{path}.{kind}")
    if not any(kind in value for kind in CONTENT_TYPES):
        yield f"{path}: must have text/plain or text/html"


def _attachments_problems(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: must be an object mapping file names to attachments"
        return
    if len(value) > MAX_ATTACHMENTS:
        yield f"{path}: has {len(value):,} attachments; at most {MAX_ATTACHMENTS} are allowed"
        return
    for filename, attachment in value.items():
        where = f"{path}.{filename}"
        if len(filename) > MAX_FILENAME_CHARS:
            yield f"{path}: a file name may have at most {MAX_FILENAME_CHARS} characters"
            continue
        if not filename.strip() or _BAD_FILENAME.search(filename):
            yield f"{path}: {filename!r} is not a valid file name (no / \\ NUL or line breaks)"
        yield from _unless_ref(_attachment_problems, attachment, where)


def _attachment_problems(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: must be an object with content_type and content"
        return
    for key in value:
        if key not in ("content_type", "content"):
            yield f"{path}.{key}: is not an attachment field (use content_type, content)"
    kind = value.get("content_type")
    if kind is not None and (not isinstance(kind, str) or not _MIME_TYPE.fullmatch(kind)):
        yield f"{path}.content_type: must be a media type such as application/pdf"
    if "content" not in value:
        yield f"{path}.content: is required"
    else:
        yield from _unless_ref(_base64_problems, value["content"], f"{path}.content")


def _base64_problems(value: object, path: str) -> Iterator[str]:
    if not isinstance(value, str):
        yield f"{path}: must be base64 text"
    elif decode_base64(value) is None:
        yield f"{path}: is not valid base64"


def decode_base64(text: str) -> bytes | None:
    """Strict base64 (line breaks allowed, as MIME writes them); None when it does not decode."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- sizes --------------------------------------------------------------------------


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass(frozen=True)
class _Template:
    """A text's length after substitution, found without substituting: its length
    without placeholders, plus each placeholder's value (or the placeholder as written,
    when the name is unknown)."""

    rest: int
    uses: dict[str, tuple[int, int]]  # name -> (occurrences, their length as written)

    @classmethod
    def of(cls, text: object, measure: Callable[[str], int]) -> _Template:
        if not isinstance(text, str):  # a $ref, not fetched yet
            return cls(0, {})
        rest, uses = measure(text), dict[str, tuple[int, int]]()
        for match in PLACEHOLDER.finditer(text):
            written = measure(match.group(0))
            count, total = uses.get(match.group(1), (0, 0))
            uses[match.group(1)] = (count + 1, total + written)
            rest -= written
        return cls(rest, uses)

    def length(self, values: Mapping[str, int]) -> int:
        """The length with each known name's value of length ``values[name]``."""
        return self.rest + sum(
            count * values[name] if name in values else written
            for name, (count, written) in self.uses.items()
        )


class _Sizes:
    """The size of each recipient's copy in bytes (UTF-8 text, attachments as base64,
    headers, and MESSAGE_OVERHEAD for what sendbeat adds) and the length of its subject,
    computed arithmetically: nothing is substituted or rendered. $refs not fetched yet
    count as nothing."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        headers = _known(arguments.get("headers"))
        content = _known(arguments.get("content"))
        attachments = _known(arguments.get("attachments"))
        shared = _known(arguments.get("variables"))
        subject = next((v for n, v in headers.items() if n.lower() == "subject"), "")
        self.subject_chars = _Template.of(subject, len)
        self.templates = [_Template.of(subject, _utf8)]
        self.templates += [_Template.of(content.get(kind), _utf8) for kind in CONTENT_TYPES]
        self.names = {name for t in self.templates for name in t.uses}
        other_headers = (
            _utf8(name) + _utf8(value) + 4  # ": " and CRLF
            for name, value in headers.items()
            if isinstance(value, str) and name.lower() != "subject"
        )
        encoded = (
            len(item["content"])
            for item in attachments.values()
            if isinstance(item, dict) and isinstance(item.get("content"), str)
        )
        self.fixed = MESSAGE_OVERHEAD + sum(other_headers) + sum(encoded)
        self.shared = {name: _as_text(shared[name]) for name in self.names if name in shared}
        self.shared_chars = {name: len(text) for name, text in self.shared.items()}
        self.shared_bytes = {name: _utf8(text) for name, text in self.shared.items()}

    def texts(self, own: Mapping[str, Any]) -> dict[str, str]:
        """The recipient's own text for each placeholder name it overrides."""
        return {name: _as_text(own[name]) for name in self.names.intersection(own)}

    def subject_problem(self, recipient: Address, own: Mapping[str, str]) -> str | None:
        """What is wrong with the subject of a recipient with texts ``own``, or None."""
        after = f"after substituting the variables for {recipient.addr_spec}"
        for name in self.subject_chars.uses:
            line_break = _line_break(own.get(name, self.shared.get(name, "")))
            if line_break:
                return f"contains {line_break} {after}"
        chars = {**self.shared_chars, **{name: len(text) for name, text in own.items()}}
        length = self.subject_chars.length(chars)
        if length > MAX_HEADER_CHARS:
            return (
                f"is {length:,} characters {after}; a header value may have at most"
                f" {MAX_HEADER_CHARS:,}"
            )
        return None

    def message_bytes(self, recipient: Address, own: Mapping[str, str]) -> int:
        octets = {**self.shared_bytes, **{name: _utf8(text) for name, text in own.items()}}
        body = sum(template.length(octets) for template in self.templates)
        return self.fixed + _utf8(str(recipient)) + body


def _known(value: object) -> dict[str, Any]:
    """``value`` when it is an object already known (not a $ref), otherwise {}."""
    return value if isinstance(value, dict) and not is_ref(value) else {}


def _size_problems(arguments: object, path: str, limits: MessageLimits) -> Iterator[str]:
    if not isinstance(arguments, dict) or is_ref(arguments):
        return
    variables = _variables_bytes(arguments)
    if variables > limits.max_variables_bytes:
        yield (
            f"{path}.variables: the variables, global and per recipient, are {variables:,}"
            " bytes as JSON; the limit is SENDBEAT_MAX_VARIABLES_BYTES ="
            f" {limits.max_variables_bytes:,}"
        )
        return
    if "recipients" not in arguments:
        return  # a webhook alone
    sizes = _Sizes(arguments)
    for recipient, own in _recipients(arguments["recipients"]):
        texts = sizes.texts(own)
        subject = sizes.subject_problem(recipient, texts)
        if subject:
            yield f"{path}.headers.subject: {subject}"
            return
        size = sizes.message_bytes(recipient, texts)
        if size > limits.max_message_bytes:
            yield f"{path}: {_too_large(recipient, 'would be', size, limits)}"
            return


def _too_large(recipient: Address, verb: str, size: int, limits: MessageLimits) -> str:
    return (
        f"the message for {recipient.addr_spec} {verb} {size:,} bytes; the limit is"
        f" SENDBEAT_MAX_MESSAGE_BYTES = {limits.max_message_bytes:,}"
    )


def _variables_bytes(arguments: dict[str, Any]) -> int:
    """The global and per-recipient variables' size as JSON (their depth is bounded)."""
    values = [arguments.get("variables")]
    recipients = arguments.get("recipients")
    if isinstance(recipients, dict) and not is_ref(recipients):
        values += recipients.values()
    return sum(_utf8(json.dumps(value, ensure_ascii=False)) for value in values if value)


# --- recipients ---------------------------------------------------------------------


def recipients_of(arguments: dict[str, Any]) -> list[str]:
    """Bare addresses of the recipients; [] when recipients is a $ref."""
    return [address.addr_spec for address, _ in _recipients(arguments.get("recipients"))]


def _recipients(value: object) -> list[tuple[Address, dict[str, Any]]]:
    """(address, per-recipient variables) in order; skips entries that are not addresses."""
    if is_ref(value):
        return []
    if isinstance(value, str):
        entries: list[tuple[object, object]] = [(piece, None) for piece in split_addresses(value)]
    elif isinstance(value, list):
        entries = [(item, None) for item in value]
    elif isinstance(value, dict):
        entries = list(value.items())
    else:
        return []
    found = [(parse_address(text), variables) for text, variables in entries]
    return [
        (address, variables if isinstance(variables, dict) else {})
        for address, variables in found
        if address is not None
    ]


# --- rendering ----------------------------------------------------------------------


def render(
    arguments: dict[str, Any],
    *,
    now: datetime,
    mail_domain: str,
    instance_id: str | None = None,
    limits: MessageLimits = DEFAULT_LIMITS,
) -> Iterator[Envelope]:
    """One Envelope per recipient, in order, each built only when the next is asked
    for: a sender holds one copy in memory at a time. ``arguments`` must be fully
    resolved; they are validated (with ``limits``) here, at once, so a message that
    cannot be sent raises before its first copy.

    With ``instance_id`` (the execution), each copy's Message-ID is fixed by the
    execution and the recipient's place, so every attempt of one execution sends each
    copy under the same Message-ID: a copy sent again after a lost SMTP reply can be
    recognised, and dropped, by whoever receives it."""
    validate_arguments(arguments, limits=limits)
    if contains_refs(arguments):
        raise InvalidMessage("arguments: a $ref is left unresolved")
    return _envelopes(arguments, now, mail_domain, instance_id, limits)


def _envelopes(
    arguments: dict[str, Any],
    now: datetime,
    mail_domain: str,
    instance_id: str | None,
    limits: MessageLimits,
) -> Iterator[Envelope]:
    headers = {name.lower(): (name, value) for name, value in arguments["headers"].items()}
    sender = parse_address(headers["from"][1])
    assert sender is not None  # validated already
    override = arguments.get("recipient_override")
    override_address = parse_address(override) if override else None
    attachments = _attachments(arguments.get("attachments") or {})
    shared = arguments.get("variables") or {}
    sizes = _Sizes(arguments)
    for index, (recipient, own) in enumerate(_recipients(arguments["recipients"])):
        variables = {**shared, **own}
        message_id = (
            f"<{instance_id}.{index}@{mail_domain}>"
            if instance_id
            else make_msgid(domain=mail_domain)
        )
        stamp = (format_datetime(now), message_id)
        message = _message(arguments, headers, recipient, variables, attachments, stamp)
        _check_size(message, recipient, sizes.message_bytes(recipient, sizes.texts(own)), limits)
        rcpt_to = _rcpt_to(recipient, override_address, headers)
        yield Envelope(recipient.addr_spec, sender.addr_spec, rcpt_to, message)


def _check_size(
    message: EmailMessage, recipient: Address, estimate: int, limits: MessageLimits
) -> None:
    """Refuse a copy larger than the limit. Quoted-printable at most triples a byte and
    attachments were counted as base64, so only a copy estimated within a quarter of the
    limit is serialized to be measured."""
    if 4 * estimate <= limits.max_message_bytes:
        return
    size = len(message.as_bytes())
    if size > limits.max_message_bytes:
        raise InvalidMessage(f"arguments: {_too_large(recipient, 'is', size, limits)}")


def _rcpt_to(
    recipient: Address, override: Address | None, headers: dict[str, tuple[str, str]]
) -> tuple[str, ...]:
    """With an override only the override address receives the copy: it exists for
    testing, and Cc addresses are real people too."""
    if override is not None:
        return (override.addr_spec,)
    cc = _address_list(headers["cc"][1]) if "cc" in headers else []
    addresses = [recipient.addr_spec, *(address.addr_spec for address in cc)]
    return tuple(dict.fromkeys(addresses))  # one delivery per address, order kept


def _address_list(text: str) -> list[Address]:
    found = (parse_address(piece) for piece in split_addresses(text))
    return [address for address in found if address is not None]


def _attachments(value: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    attachments = []
    for filename, attachment in value.items():
        data = decode_base64(attachment["content"])
        if data is None:  # validated already; kept for type narrowing
            raise InvalidMessage(f"arguments.attachments.{filename}.content: is not valid base64")
        kind = attachment.get("content_type") or _guess_type(filename)
        attachments.append((filename, kind, data))
    return attachments


def _guess_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def _message(
    arguments: dict[str, Any],
    headers: dict[str, tuple[str, str]],
    recipient: Address,
    variables: dict[str, Any],
    attachments: list[tuple[str, str, bytes]],
    stamp: tuple[str, str],
) -> EmailMessage:
    message = EmailMessage(policy=POLICY)
    message["From"] = str(parse_address(headers["from"][1]))
    # The To header always names the real recipient, even with recipient_override, so a
    # test inbox shows exactly what that recipient would have seen.
    message["To"] = str(recipient)
    for lower, (name, value) in headers.items():
        if lower == "from":
            continue
        if lower in ADDRESS_LIST_HEADERS:
            value = ", ".join(str(address) for address in _address_list(value))
        elif lower == "subject":
            value = _subject(value, variables, recipient)
        message[_canonical(lower, name)] = value
    message["Date"], message["Message-ID"] = stamp
    _set_body(message, arguments["content"], variables)
    for filename, kind, data in attachments:
        maintype, subtype = kind.split("/", 1)
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    _fix_boundaries(message)
    return message


def _fix_boundaries(message: EmailMessage) -> None:
    """Otherwise the generator invents new boundaries on every serialization, and the
    bytes a transport sends would differ from any other rendering of the same message."""
    for part in message.walk():
        if part.is_multipart() and part.get_boundary() is None:
            part.set_boundary(f"=_sendbeat_{uuid.uuid4().hex}")


def _canonical(lower: str, name: str) -> str:
    return (
        "-".join(part.capitalize() for part in lower.split("-"))
        if lower in ALLOWED_HEADERS
        else name
    )


def _subject(template: str, variables: Mapping[str, Any], recipient: Address) -> str:
    subject = substitute(template, variables)
    line_break = _line_break(subject)
    if line_break:
        raise InvalidMessage(
            f"arguments.headers.subject: contains {line_break} after substituting the"
            f" variables for {recipient.addr_spec}"
        )
    return subject


def _set_body(message: EmailMessage, content: dict[str, str], variables: Mapping[str, Any]) -> None:
    parts = [
        (kind, substitute(content[kind], variables)) for kind in CONTENT_TYPES if kind in content
    ]
    for index, (kind, text) in enumerate(parts):
        subtype = kind.split("/")[1]
        # Quoted-printable keeps non-ASCII text 7-bit clean for servers without 8BITMIME.
        cte = None if text.isascii() else "quoted-printable"
        if index == 0:
            message.set_content(text, subtype=subtype, charset="utf-8", cte=cte)
        else:
            message.add_alternative(text, subtype=subtype, charset="utf-8", cte=cte)


def substitute(template: str, variables: Mapping[str, Any]) -> str:
    """Replace ``{{ name }}`` placeholders; an unknown name is left exactly as written."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return _as_text(variables[name]) if name in variables else match.group(0)

    return PLACEHOLDER.sub(replace, template)


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    # JSON spelling for everything else: true/false, numbers, arrays and objects.
    return json.dumps(value, ensure_ascii=False)
