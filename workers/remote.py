"""Remote content: replacing ``$ref`` branches of send_message arguments with what their
URLs return, when an occurrence runs (DESIGN.md §6).

Every fetch is bounded (timeout, size cap, redirect cap, http/https only) and, unless
``SENDBEAT_ALLOW_PRIVATE_REFS`` is set, refuses hosts that resolve to loopback, private,
link-local, multicast, reserved or otherwise non-global addresses. Each hop (including
every redirect) is resolved once, checked, and then connected to *that* address, so a
DNS answer that changes between the check and the connection cannot slip past the guard.
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import yaml
from requests.adapters import HTTPAdapter

from app.core.errors import PermanentDeliveryError, TransientDeliveryError
from app.core.message import MAX_DEPTH, deeper_than, is_ref, ref_format, ref_problems, ref_type
from app.core.settings import Settings

USER_AGENT = "sendbeat (remote content)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
ALLOW_HINT = "set SENDBEAT_ALLOW_PRIVATE_REFS=1 to allow"
# Checked in this order: 127.0.0.1 is also "private" to ipaddress, loopback says more.
_REFUSED_KINDS = (
    ("is_loopback", "a loopback"),
    ("is_unspecified", "an unspecified"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),
    ("is_private", "a private"),
    ("is_reserved", "a reserved"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052, the IPv4 in the last 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_PERMANENT_REQUEST_ERRORS = (
    requests.exceptions.ContentDecodingError,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidHeader,
)


def resolve_refs(
    value: object, *, settings: Settings, session: requests.Session | None = None
) -> object:
    """A deep copy of ``value`` with every ``$ref`` branch replaced by its content.

    ``session`` only contributes its default headers; connections are always made by a
    pinned adapter, never through proxies, and never with the session's auth or cookies
    (they would follow redirects to other hosts).
    """
    headers = dict(session.headers) if session is not None else {}
    fetched: dict[tuple[str, str, str, str], object] = {}
    counted = {"refs": 0, "bytes": 0}  # over the whole message

    def fetch(ref: Mapping[str, Any]) -> object:
        counted["refs"] += 1
        if counted["refs"] > settings.max_refs:
            raise PermanentDeliveryError(
                f"$ref {ref['$ref']} refused: the message has more than {settings.max_refs}"
                " $refs (SENDBEAT_MAX_REFS)"
            )
        key = (ref["$ref"], ref.get("$method", "GET"), ref_type(ref), ref_format(ref))
        if key not in fetched:  # the same reference twice in one message is fetched once
            body = fetch_body(ref, settings=settings, headers=headers)
            counted["bytes"] += len(body)
            if counted["bytes"] > settings.ref_max_total_bytes:
                raise PermanentDeliveryError(
                    f"$ref {ref['$ref']} refused: the message's remote content is more than"
                    f" {settings.ref_max_total_bytes:,} bytes in all"
                    " (SENDBEAT_REF_MAX_TOTAL_BYTES)"
                )
            fetched[key] = decode(body, ref_format(ref), ref["$ref"])
        return copy.deepcopy(fetched[key])

    return _replace_refs(value, fetch)


def _replace_refs(value: object, fetch: Callable[[Mapping[str, Any]], object]) -> object:
    if is_ref(value):
        return fetch(value)  # type: ignore[arg-type]
    if isinstance(value, dict):
        return {key: _replace_refs(item, fetch) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_refs(item, fetch) for item in value]
    return value  # str, numbers, bool and None are immutable


def fetch_body(
    ref: Mapping[str, Any], *, settings: Settings, headers: Mapping[str, str | bytes] | None = None
) -> bytes:
    """The body one ``$ref`` points to, as fetched."""
    url = ref.get("$ref")
    problems = list(ref_problems(ref, "$ref"))
    if problems:
        raise PermanentDeliveryError(f"$ref {url} refused: {problems[0]}")
    assert isinstance(url, str)
    return download(url, ref.get("$method", "GET"), ref_type(ref), settings, headers or {})


# --- fetching -----------------------------------------------------------------------


def download(
    url: str, method: str, accept: str, settings: Settings, headers: Mapping[str, str | bytes]
) -> bytes:
    """The body at ``url``, following at most ``ref_max_redirects`` redirects by hand so
    that every hop's scheme and address is checked again."""
    current = url
    for _ in range(settings.ref_max_redirects + 1):
        with open_request(current, method, accept, settings, headers) as response:
            location = response.headers.get("location")
            if response.status_code in REDIRECT_STATUSES and location:
                current = urljoin(current, location)
                method = _redirected_method(method, response.status_code)
                continue
            _check_status(response, current)
            return _read_capped(response, current, settings)
    raise PermanentDeliveryError(
        f"$ref {url} refused: more than {settings.ref_max_redirects} redirects"
        f" (SENDBEAT_REF_MAX_REDIRECTS); the last one pointed to {current}"
    )


def _redirected_method(method: str, status: int) -> str:
    # As browsers do: 303 always turns into GET, and so do 301/302 after a POST.
    return method if status in (307, 308) else "GET"


@contextmanager
def open_request(
    url: str,
    method: str,
    accept: str,
    settings: Settings,
    headers: Mapping[str, str | bytes],
    *,
    data: bytes | None = None,
    what: str = "$ref",
    agent: str = USER_AGENT,
) -> Iterator[requests.Response]:
    """One request to the address ``url``'s host resolves to, once checked (``what``
    names the URL in errors: "$ref" or "webhook")."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentDeliveryError(f"{what} {url} refused: only http and https URLs are fetched")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PermanentDeliveryError(f"{what} {url} refused: the port is not valid") from None
    address = pinned_address(parts.hostname, port, url, settings, what=what)
    ours = {
        "Host": parts.netloc.rsplit("@", 1)[-1],
        "Accept": accept,
        "Accept-Encoding": "identity",
        "User-Agent": agent,
    }
    request = requests.Request(method, url, headers={**headers, **ours}, data=data).prepare()
    adapter = PinnedAdapter(address, parts.hostname)
    try:
        response = adapter.send(request, stream=True, timeout=settings.ref_timeout)
    except requests.RequestException as error:
        adapter.close()
        raise _request_error(error, url, settings, what) from error
    try:
        yield response
    finally:
        response.close()
        adapter.close()


class PinnedAdapter(HTTPAdapter):
    """Connects to one already-checked IP address, while TLS (SNI and the certificate
    check) and the Host header still use the URL's host name."""

    def __init__(self, address: str, hostname: str) -> None:
        self._address = address
        self._hostname = hostname
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:  # the stubs' TypedDicts do not know the TLS host-name keys
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        pinned: dict[str, Any] = dict(pool_kwargs)
        if host_params["scheme"] == "https":
            pinned["server_hostname"] = self._hostname
            pinned["assert_hostname"] = self._hostname
        return {**host_params, "host": self._address}, pinned


def pinned_address(
    host: str, port: int, url: str, settings: Settings, *, what: str = "$ref"
) -> str:
    """Resolve ``host`` once; refuse it when any address it resolves to is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise TransientDeliveryError(
            f"{what} {url} failed: cannot resolve {host}: {error}"
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.allow_private_refs:
        for address in addresses:
            kind = refusal(address)
            if kind is not None:
                raise PermanentDeliveryError(
                    f"{what} {url} refused: {address} is {kind} address ({ALLOW_HINT})"
                )
    return addresses[0]


def refusal(address: str) -> str | None:
    """Why ``address`` may not be fetched from (e.g. "a private"), or None when it is public."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return _ipv6_refusal(ip)
    return _kind(ip)


def _ipv6_refusal(ip: ipaddress.IPv6Address) -> str | None:
    """IPv6 forms that carry an IPv4 address reach that address (through a translator,
    a relay or the host's own stack), so they are judged by it: decided here rather
    than left to ``ipaddress``, whose view of these ranges differs between Pythons."""
    if ip.ipv4_mapped is not None:
        return _kind(ip.ipv4_mapped)  # ::ffff:10.0.0.1 is 10.0.0.1
    if ip in _NAT64_LOCAL:  # where the IPv4 sits depends on the operator's prefix length
        return "a local-use NAT64 (64:ff9b:1::/48)"
    if ip.teredo is not None:  # a dead tunnel: nothing public is served from one
        for inner in ip.teredo:  # (server, client), the client's bits already unflipped
            kind = _kind(inner)
            if kind:
                return f"a Teredo address for {inner}, {kind}"
        return "a Teredo (2001::/32)"
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::10.0.0.1 (:: and ::1 are judged below)
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        kind = _kind(inner)
        deprecated = "an IPv4-compatible (deprecated)"
        return f"{deprecated} address for {inner}, {kind}" if kind else deprecated
    if ip.sixtofour is not None:
        return _embedding("6to4", ip.sixtofour)
    if ip in _NAT64:
        return _embedding("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return _kind(ip)


def _embedding(form: str, inner: ipaddress.IPv4Address) -> str | None:
    """A 6to4 or NAT64 address is refused when its IPv4 is; a public one is allowed, as
    IPv6-only networks reach every IPv4 site through NAT64 (DNS64 answers such names)."""
    kind = _kind(inner)
    return f"a {form} address for {inner}, {kind}" if kind else None


def _kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for attribute, kind in _REFUSED_KINDS:
        if getattr(ip, attribute):
            return kind
    # Shared (100.64/10) and other special-purpose ranges are neither private nor global.
    return None if ip.is_global else "a non-global"


def _check_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    answer = f"the server answered {status} {response.reason or ''}".rstrip()
    if status == 429 or status >= 500:
        raise TransientDeliveryError(f"$ref {url} failed: {answer}")
    raise PermanentDeliveryError(f"$ref {url} refused: {answer}")


def _read_capped(response: requests.Response, url: str, settings: Settings) -> bytes:
    limit = settings.ref_max_bytes
    too_large = PermanentDeliveryError(
        f"$ref {url} refused: the content is larger than {limit} bytes (SENDBEAT_REF_MAX_BYTES)"
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    # Socket timeouts bound each read; the deadline bounds a server that drips bytes.
    deadline = time.monotonic() + settings.ref_timeout
    body = bytearray()
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                raise too_large
            if time.monotonic() > deadline:
                raise _timed_out(url, settings)
    except requests.RequestException as error:
        raise _request_error(error, url, settings) from error
    return bytes(body)


def _request_error(
    error: requests.RequestException, url: str, settings: Settings, what: str = "$ref"
) -> TransientDeliveryError | PermanentDeliveryError:
    if isinstance(error, _PERMANENT_REQUEST_ERRORS):
        return PermanentDeliveryError(f"{what} {url} refused: {error}")
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return _timed_out(url, settings, what)
    return TransientDeliveryError(f"{what} {url} failed: {error}")


def _timed_out(url: str, settings: Settings, what: str = "$ref") -> TransientDeliveryError:
    return TransientDeliveryError(
        f"{what} {url} failed: timed out after {settings.ref_timeout:g}s (SENDBEAT_REF_TIMEOUT)"
    )


# --- decoding -----------------------------------------------------------------------


def decode(body: bytes, form: str, url: str) -> object:
    """Turn a fetched body into a value: "json", "yaml", "csv" or "base64" (text)."""
    if form == "base64":
        return base64.b64encode(body).decode("ascii")
    parser = {"json": _parse_json, "yaml": _parse_yaml, "csv": _parse_csv}[form]
    try:
        value = parser(body)
    except (ValueError, yaml.YAMLError, csv.Error, RecursionError) as error:
        raise PermanentDeliveryError(
            f"$ref {url} refused: not valid {form.upper()}: {error}"
        ) from None
    if deeper_than(value, MAX_DEPTH):  # copying or walking it would recurse too deep
        raise PermanentDeliveryError(
            f"$ref {url} refused: nested more than {MAX_DEPTH} levels deep"
        )
    return value


def _parse_json(body: bytes) -> object:
    return json.loads(body)


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors/aliases: a few kilobytes of nested aliases expand into
    billions of nodes when the data is walked ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not supported", mark)
        return super().compose_node(parent, index)


def _parse_yaml(body: bytes) -> object:
    return yaml.load(body, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe


def _parse_csv(body: bytes) -> list[dict[str, str]]:
    """One object per data row, keyed by the header row; short rows are padded with ""."""
    reader = csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline=""), restval="")
    header = reader.fieldnames or []
    if len(set(header)) != len(header) or any(not name.strip() for name in header):
        raise ValueError("the header row must name every column once")
    rows = []
    for row in reader:
        if None in row:
            raise ValueError(f"line {reader.line_num} has more fields than the header row")
        rows.append(row)
    return rows
