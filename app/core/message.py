"""send_message arguments: validation, and rendering into MIME envelopes (DESIGN.md §6).

Pure domain code: no Flask, no Celery, no network. ``validate_arguments`` runs when a
message or event is created (``$ref`` branches are only shape-checked then); the worker
resolves the references (``workers.remote``) and calls ``render``, which validates the
resolved arguments again, because remote content can be anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlsplit

from app.core.errors import InvalidMessage

FIELDS = ("recipients", "headers", "content", "variables", "recipient_override", "attachments")
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

_CRLF = re.compile(r"[\r\n]")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
_BAD_FILENAME = re.compile(r"[/\\\r\n\x00]")

Check = Callable[[object, str], Iterator[str]]


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
    if not isinstance(url, str) or not _is_http_url(url):
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
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not _CRLF.search(url)


# --- addresses ----------------------------------------------------------------------


def parse_address(text: object) -> Address | None:
    """One mailbox (``ann@example.com`` or ``Ann <ann@example.com>``), its domain
    IDNA-encoded; None when ``text`` is not exactly one valid address."""
    if not isinstance(text, str) or _CRLF.search(text) or not text.strip():
        return None
    try:
        header = policy.default.header_factory("to", text)
    except Exception:  # the stdlib parser raises IndexError and friends on some junk
        return None
    groups = header.groups
    if header.defects or len(groups) != 1 or groups[0].display_name is not None:
        return None
    if len(header.addresses) != 1:
        return None
    found = header.addresses[0]
    domain = _ascii_domain(found.domain)
    # A non-ASCII local part would need SMTPUTF8 end to end; the parser flags it as a defect.
    if not found.username or domain is None:
        return None
    return Address(display_name=found.display_name, username=found.username, domain=domain)


def _ascii_domain(domain: str) -> str | None:
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
    elif parse_address(value) is None:
        yield f"{path}: {value!r} is not a valid email address"


def _address_list_problems(value: str, path: str) -> Iterator[str]:
    for piece in split_addresses(value):
        yield from _address_problem(piece, path)


# --- validation ---------------------------------------------------------------------


def validate_arguments(arguments: object, *, path: str = "arguments") -> None:
    """Raise InvalidMessage listing every problem as ``'<path>.<field>: <what>'``."""
    problems = list(_argument_problems(arguments, path))
    if problems:
        raise InvalidMessage(problems[0], problems)


def _argument_problems(arguments: object, path: str) -> Iterator[str]:
    if is_ref(arguments):
        yield from ref_problems(arguments, path)  # type: ignore[arg-type]
        return
    if not isinstance(arguments, dict):
        yield f"{path}: must be an object"
        return
    for key in arguments:
        if key not in FIELDS:
            yield f"{path}.{key}: is not a known field (use {', '.join(FIELDS)})"
    for name in ("recipients", "headers", "content"):
        if name not in arguments:
            yield f"{path}.{name}: is required"
    checks = {
        "recipients": _recipients_problems,
        "headers": _headers_problems,
        "content": _content_problems,
        "variables": _variables_problems,
        "recipient_override": _address_problem,
        "attachments": _attachments_problems,
    }
    for name, check in checks.items():
        if name in arguments:
            yield from _unless_ref(check, arguments[name], f"{path}.{name}")


def _unless_ref(check: Check, value: object, path: str) -> Iterator[str]:
    """A ``$ref`` stands in for any value: only its own shape is checked."""
    if is_ref(value):
        yield from ref_problems(value, path)  # type: ignore[arg-type]
    else:
        yield from check(value, path)


def _recipients_problems(value: object, path: str) -> Iterator[str]:
    if isinstance(value, str):
        pieces = split_addresses(value)
        for piece in pieces:
            yield from _address_problem(piece, path)
    elif isinstance(value, list):
        pieces = value
        for index, item in enumerate(value):
            yield from _unless_ref(_address_problem, item, f"{path}[{index}]")
    elif isinstance(value, dict):
        pieces = list(value)
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
    if not pieces:
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
    seen: set[str] = set()
    for name, header in value.items():
        yield from _header_problems(name, header, path, seen)
    if "from" not in seen:
        yield f"{path}.from: is required"


def _header_problems(name: str, value: object, path: str, seen: set[str]) -> Iterator[str]:
    lower = name.lower()
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
    elif _CRLF.search(value):
        yield f"{path}: must not contain CR or LF"
    elif lower in ("from", "sender"):
        yield from _address_problem(value, path)
    elif lower in ADDRESS_LIST_HEADERS:
        yield from _address_list_problems(value, path)


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
    for filename, attachment in value.items():
        where = f"{path}.{filename}"
        if not filename.strip() or _BAD_FILENAME.search(filename):
            yield f"{path}: {filename!r} is not a valid file name (no / \\ CR LF or NUL)"
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
    arguments: dict[str, Any], *, now: datetime, mail_domain: str, instance_id: str | None = None
) -> list[Envelope]:
    """One Envelope per recipient, in order. ``arguments`` must be fully resolved.

    With ``instance_id`` (the execution), each copy's Message-ID is fixed by the
    execution and the recipient's place, so every attempt of one execution sends each
    copy under the same Message-ID: a copy sent again after a lost SMTP reply can be
    recognised, and dropped, by whoever receives it."""
    validate_arguments(arguments)
    if contains_refs(arguments):
        raise InvalidMessage("arguments: a $ref is left unresolved")
    headers = {name.lower(): (name, value) for name, value in arguments["headers"].items()}
    sender = parse_address(headers["from"][1])
    assert sender is not None  # validated above
    override = arguments.get("recipient_override")
    override_address = parse_address(override) if override else None
    attachments = _attachments(arguments.get("attachments") or {})
    shared = arguments.get("variables") or {}
    envelopes = []
    for index, (recipient, own) in enumerate(_recipients(arguments["recipients"])):
        variables = {**shared, **own}
        message_id = (
            f"<{instance_id}.{index}@{mail_domain}>"
            if instance_id
            else make_msgid(domain=mail_domain)
        )
        stamp = (format_datetime(now), message_id)
        message = _message(arguments, headers, recipient, variables, attachments, stamp)
        rcpt_to = _rcpt_to(recipient, override_address, headers)
        envelopes.append(Envelope(recipient.addr_spec, sender.addr_spec, rcpt_to, message))
    return envelopes


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
    message = EmailMessage()
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
    if _CRLF.search(subject):
        raise InvalidMessage(
            "arguments.headers.subject: contains CR or LF after substituting the variables"
            f" for {recipient.addr_spec}"
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

    return _PLACEHOLDER.sub(replace, template)


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    # JSON spelling for everything else: true/false, numbers, arrays and objects.
    return json.dumps(value, ensure_ascii=False)
