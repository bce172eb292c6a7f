"""$ref resolution against a real HTTP server on 127.0.0.1.

The server is on loopback, so most tests allow private addresses; the guard itself is
shown refusing loopback, and (with only loopback exempted) a redirect to a private address.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import PermanentDeliveryError, TransientDeliveryError
from app.core.settings import Settings
from workers import remote
from workers.remote import resolve_refs

# A byte-order mark (as spreadsheets write it) and a short row.
CSV = "\ufeffemail,name\r\nann@example.com,Ann\r\nbob@example.com\r\n".encode()
PNG = b"\x89PNG\r\n\x1a\n\x00\x00binary\xff"
SLOW_SECONDS = 5.0
SETTINGS = Settings(
    allow_private_refs=True, ref_timeout=0.5, ref_max_bytes=4096, ref_max_redirects=2
)


class Handler(BaseHTTPRequestHandler):
    """Routes by path; ``self.server.seen`` records (method, path, headers) per request."""

    server: Server

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, dict(self.headers)))
        self.route()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append(("POST", self.path, dict(self.headers)))
        if self.path == "/generated":
            self.reply(200, b'{"generated": true}')
        else:
            self.reply(405, b"")

    def route(self) -> None:
        path = self.path
        bodies = {
            "/data.json": b'{"name": "Ann", "items": [1, 2]}',
            "/data.yaml": "name: Zoë\nitems:\n  - 1\n  - two\n".encode(),
            "/people.csv": CSV,
            "/logo.png": PNG,
            "/broken.json": b"{not json",
            "/bomb.yaml": b"a: &a [x, x]\nb: [*a, *a]\n",
        }
        if path in bodies:
            self.reply(200, bodies[path])
        elif path == "/missing":
            self.reply(404, b"no")
        elif path == "/error":
            self.reply(500, b"oops")
        elif path == "/busy":
            self.reply(429, b"slow down")
        elif path == "/slow":
            self.server.release.wait(SLOW_SECONDS)  # set at teardown, so no test waits for it
            self.reply(200, b"{}")
        elif path == "/big":
            self.reply(200, b"[" + b"1," * 5000 + b"1]")
        elif path == "/big-unannounced":
            self.stream_without_length(b"x" * 1024, 10)
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            target = "/data.json" if left <= 1 else f"/hop/{left - 1}"  # N redirects
            self.redirect(target)
        elif path.startswith("/redirect-to?"):
            self.redirect(path.split("?", 1)[1])
        else:
            self.reply(404, b"")

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def stream_without_length(self, chunk: bytes, count: int) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for _ in range(count):
                self.wfile.write(chunk)
        except OSError:
            pass  # the client hung up at the size cap, as it should

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.release = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def ref(server: Server, path: str, **extra: str) -> dict[str, str]:
    return {"$ref": server.base + path, **extra}


def test_json_is_parsed_and_the_rest_is_deep_copied(server: Server) -> None:
    value = {"variables": ref(server, "/data.json"), "keep": [{"a": 1}]}
    resolved = resolve_refs(value, settings=SETTINGS)
    assert resolved == {"variables": {"name": "Ann", "items": [1, 2]}, "keep": [{"a": 1}]}
    assert isinstance(resolved, dict)
    assert resolved["keep"] is not value["keep"]
    assert value["variables"] == ref(server, "/data.json")  # the input is untouched


def test_yaml_is_parsed(server: Server) -> None:
    for kind in ("application/yaml", "text/yaml", "application/x-yaml"):
        resolved = resolve_refs(ref(server, "/data.yaml", **{"$type": kind}), settings=SETTINGS)
        assert resolved == {"name": "Zoë", "items": [1, "two"]}


def test_yaml_aliases_are_refused(server: Server) -> None:
    with pytest.raises(PermanentDeliveryError, match="YAML aliases are not supported"):
        resolve_refs(ref(server, "/bomb.yaml", **{"$type": "application/yaml"}), settings=SETTINGS)


def test_csv_becomes_a_list_of_objects_keyed_by_the_header_row(server: Server) -> None:
    resolved = resolve_refs(ref(server, "/people.csv", **{"$type": "text/csv"}), settings=SETTINGS)
    assert resolved == [
        {"email": "ann@example.com", "name": "Ann"},
        {"email": "bob@example.com", "name": ""},
    ]


def test_binary_content_becomes_base64_text(server: Server) -> None:
    value = {"content": ref(server, "/logo.png", **{"$type": "image/png", "$encode": "base64"})}
    resolved = resolve_refs(value, settings=SETTINGS)
    assert isinstance(resolved, dict)
    assert base64.b64decode(resolved["content"]) == PNG


def test_base64_wins_over_parsing_for_a_json_type(server: Server) -> None:
    resolved = resolve_refs(ref(server, "/data.json", **{"$encode": "base64"}), settings=SETTINGS)
    assert isinstance(resolved, str)
    assert json.loads(base64.b64decode(resolved)) == {"name": "Ann", "items": [1, 2]}


def test_post_and_request_headers(server: Server) -> None:
    server.seen.clear()
    resolved = resolve_refs(ref(server, "/generated", **{"$method": "POST"}), settings=SETTINGS)
    assert resolved == {"generated": True}
    [(method, path, headers)] = server.seen
    assert (method, path) == ("POST", "/generated")
    assert headers["Host"] == f"127.0.0.1:{server.server_address[1]}"
    assert headers["Accept"] == "application/json"


def test_the_same_ref_is_fetched_once_per_message(server: Server) -> None:
    server.seen.clear()
    twice = [ref(server, "/data.json"), ref(server, "/data.json")]
    resolved = resolve_refs(twice, settings=SETTINGS)
    assert isinstance(resolved, list) and resolved[0] == resolved[1]
    assert resolved[0] is not resolved[1]
    assert len(server.seen) == 1


def test_404_is_permanent(server: Server) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(ref(server, "/missing"), settings=SETTINGS)
    assert (
        caught.value.message
        == f"$ref {server.base}/missing refused: the server answered 404 Not Found"
    )


@pytest.mark.parametrize(("path", "status"), [("/error", "500"), ("/busy", "429")])
def test_5xx_and_429_are_transient(server: Server, path: str, status: str) -> None:
    with pytest.raises(TransientDeliveryError, match=f"answered {status}"):
        resolve_refs(ref(server, path), settings=SETTINGS)


def test_a_slow_server_times_out_as_transient(server: Server) -> None:
    with pytest.raises(TransientDeliveryError) as caught:
        resolve_refs(ref(server, "/slow"), settings=SETTINGS.with_(ref_timeout=0.2))
    assert caught.value.message == (
        f"$ref {server.base}/slow failed: timed out after 0.2s (SENDBEAT_REF_TIMEOUT)"
    )


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(TransientDeliveryError, match=f"127.0.0.1:{port}/x failed"):
        resolve_refs({"$ref": f"http://127.0.0.1:{port}/x"}, settings=SETTINGS)


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_oversized_content_is_permanent(server: Server, path: str) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(ref(server, path), settings=SETTINGS)
    assert caught.value.message == (
        f"$ref {server.base}{path} refused: the content is larger than 4096 bytes"
        " (SENDBEAT_REF_MAX_BYTES)"
    )


def test_unparseable_json_is_permanent(server: Server) -> None:
    with pytest.raises(PermanentDeliveryError, match=r"/broken.json refused: not valid JSON"):
        resolve_refs(ref(server, "/broken.json"), settings=SETTINGS)


def test_redirects_are_followed_up_to_the_cap(server: Server) -> None:
    assert resolve_refs(ref(server, "/hop/2"), settings=SETTINGS) == {
        "name": "Ann",
        "items": [1, 2],
    }


def test_a_redirect_chain_beyond_the_cap_is_permanent(server: Server) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(ref(server, "/hop/3"), settings=SETTINGS)
    assert caught.value.message == (
        f"$ref {server.base}/hop/3 refused: more than 2 redirects (SENDBEAT_REF_MAX_REDIRECTS);"
        f" the last one pointed to {server.base}/data.json"
    )


def test_a_redirect_to_another_scheme_is_refused(server: Server) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(ref(server, "/redirect-to?file:///etc/passwd"), settings=SETTINGS)
    assert caught.value.message == (
        "$ref file:///etc/passwd refused: only http and https URLs are fetched"
    )


def test_loopback_is_refused_unless_private_refs_are_allowed(server: Server) -> None:
    strict = SETTINGS.with_(allow_private_refs=False)
    server.seen.clear()
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(ref(server, "/data.json"), settings=strict)
    assert caught.value.message == (
        f"$ref {server.base}/data.json refused: 127.0.0.1 is a loopback address"
        " (set SENDBEAT_ALLOW_PRIVATE_REFS=1 to allow)"
    )
    with pytest.raises(PermanentDeliveryError, match="refused: ::1 is a loopback address"):
        resolve_refs({"$ref": "http://[::1]:9/x"}, settings=strict)
    assert server.seen == []  # refused before connecting


def test_a_redirect_to_a_private_address_is_refused(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exempt only the test server's loopback address, so the redirect's target is checked
    # by the real guard.
    real_refusal = remote.refusal
    monkeypatch.setattr(
        remote, "refusal", lambda address: None if address == "127.0.0.1" else real_refusal(address)
    )
    strict = SETTINGS.with_(allow_private_refs=False)
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(ref(server, "/redirect-to?http://10.0.0.1/x"), settings=strict)
    assert caught.value.message == (
        "$ref http://10.0.0.1/x refused: 10.0.0.1 is a private address"
        " (set SENDBEAT_ALLOW_PRIVATE_REFS=1 to allow)"
    )


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "a private"),
        ("192.168.0.1", "a private"),
        ("169.254.169.254", "a link-local"),
        ("224.0.0.1", "a multicast"),
        ("0.0.0.0", "an unspecified"),
        ("::ffff:127.0.0.1", "a loopback"),
        ("fe80::1", "a link-local"),
        ("100.64.0.1", "a non-global"),
        ("93.184.215.14", None),
        ("2606:4700::1", None),
    ],
)
def test_address_classification(address: str, kind: str | None) -> None:
    assert remote.refusal(address) == kind


def test_https_connects_to_the_checked_address_with_sni_and_verifies_the_certificate(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
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
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember(_socket: Any, name: str, _context: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = remember
    httpd = Server()
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"https://localhost:{httpd.server_address[1]}/data.json"
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            resolve_refs({"$ref": url}, settings=SETTINGS)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert names == ["localhost"]  # the TLS host name, though the socket went to an IP


def test_a_malformed_ref_is_permanent() -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs({"$ref": "https://x.example/a.png", "$type": "image/png"}, settings=SETTINGS)
    assert caught.value.message == (
        "$ref https://x.example/a.png refused: $ref: $type image/png is raw bytes,"
        ' so it needs "$encode": "base64"'
    )


# --- per-message bounds (issue 9) ----------------------------------------------------


def test_a_message_fetches_at_most_its_total_of_remote_content(server: Server) -> None:
    # 32 bytes each, 64 in all; the same one again is not fetched, nor counted, twice.
    refs = [ref(server, "/data.json"), ref(server, "/data.yaml", **{"$type": "text/yaml"})]
    refs.append(ref(server, "/data.json"))
    assert resolve_refs(refs, settings=SETTINGS.with_(ref_max_total_bytes=64))
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(refs, settings=SETTINGS.with_(ref_max_total_bytes=63))
    assert caught.value.message.endswith(
        "refused: the message's remote content is more than 63 bytes in all"
        " (SENDBEAT_REF_MAX_TOTAL_BYTES)"
    )


def test_a_message_resolves_at_most_its_number_of_refs(server: Server) -> None:
    three = [ref(server, "/data.json")] * 3
    assert resolve_refs(three, settings=SETTINGS.with_(max_refs=3))
    with pytest.raises(PermanentDeliveryError) as caught:
        resolve_refs(three, settings=SETTINGS.with_(max_refs=2))
    assert caught.value.message == (
        f"$ref {server.base}/data.json refused: the message has more than 2 $refs"
        " (SENDBEAT_MAX_REFS)"
    )


def test_deeply_nested_remote_content_is_refused_before_it_is_copied() -> None:
    deep = b"[" * 900 + b"]" * 900  # json.loads takes it; deepcopy would recurse too deep
    with pytest.raises(PermanentDeliveryError) as caught:
        remote.decode(deep, "json", "https://x.io/deep")
    assert caught.value.message == (
        "$ref https://x.io/deep refused: nested more than 100 levels deep"
    )


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        # 6to4 (2002::/16): the IPv4 in bits 16-48
        ("2002:a00:1::1", "a 6to4 address for 10.0.0.1, a private"),
        ("2002:7f00:1::", "a 6to4 address for 127.0.0.1, a loopback"),
        ("2002:a9fe:a9fe::", "a 6to4 address for 169.254.169.254, a link-local"),
        ("2002:5db8:d70e::1", None),  # a public IPv4: reachable anyway, allowed
        # NAT64, the well-known prefix (64:ff9b::/96): the IPv4 in the last 32 bits
        ("64:ff9b::10.0.0.1", "a NAT64 address for 10.0.0.1, a private"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 address for 169.254.169.254, a link-local"),
        ("64:ff9b::93.184.215.14", None),  # how an IPv6-only network reaches a site
        # NAT64, local use (64:ff9b:1::/48): always refused
        ("64:ff9b:1::10.0.0.1", "a local-use NAT64 (64:ff9b:1::/48)"),
        ("64:ff9b:1::5db8:d70e", "a local-use NAT64 (64:ff9b:1::/48)"),
        # Teredo (2001::/32): server IPv4 in bits 32-64, client IPv4 flipped in the last 32
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "a Teredo address for 10.0.0.1, a private"),
        ("2001:0:a00:1:8000:63bf:a247:28f1", "a Teredo address for 10.0.0.1, a private"),
        ("2001:0:4136:e378:8000:63bf:a247:28f1", "a Teredo (2001::/32)"),
        # IPv4-mapped (::ffff:0:0/96), as before
        ("::ffff:10.0.0.1", "a private"),
        ("::ffff:93.184.215.14", None),
        # IPv4-compatible (::/96, deprecated): always refused
        ("::10.0.0.1", "an IPv4-compatible (deprecated) address for 10.0.0.1, a private"),
        ("::93.184.215.14", "an IPv4-compatible (deprecated)"),
        ("::", "an unspecified"),
        ("::1", "a loopback"),
    ],
)
def test_ipv6_addresses_that_embed_an_ipv4_are_judged_by_it(address: str, kind: str | None) -> None:
    assert remote.refusal(address) == kind


def test_a_host_resolving_to_a_6to4_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:a00:1::1", port, 0, 0))]

    monkeypatch.setattr(remote.socket, "getaddrinfo", resolve)
    strict = SETTINGS.with_(allow_private_refs=False)
    with pytest.raises(PermanentDeliveryError) as caught:
        remote.pinned_address("sneaky.example", 80, "http://sneaky.example/x", strict)
    assert caught.value.message == (
        "$ref http://sneaky.example/x refused: 2002:a00:1::1 is a 6to4 address for 10.0.0.1,"
        " a private address (set SENDBEAT_ALLOW_PRIVATE_REFS=1 to allow)"
    )
