"""send_message arguments: exact validation errors and the MIME that render() builds."""

from __future__ import annotations

import base64
import contextlib
import email
import json
import time
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from app.core import message as message_module
from app.core.errors import InvalidMessage
from app.core.message import (
    MessageLimits,
    contains_refs,
    parse_address,
    recipients_of,
    render,
    substitute,
    validate_arguments,
)

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
PDF = b"%PDF-1.4\x00\xff\xfe binary \r\n bytes"


def arguments(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "recipients": ["ann@example.com"],
        "headers": {"from": "Sender <sender@example.com>", "subject": "Hello"},
        "content": {"text/plain": "Hi there"},
    }
    base.update(changes)
    return base


def problems(value: object, path: str = "arguments") -> list[str]:
    with pytest.raises(InvalidMessage) as caught:
        validate_arguments(value, path=path)
    assert caught.value.message == caught.value.errors[0]
    return caught.value.errors


def parsed(message: EmailMessage) -> EmailMessage:
    """What a receiver sees: the serialized bytes parsed back."""
    result = email.message_from_bytes(message.as_bytes(), policy=policy.default)
    assert isinstance(result, EmailMessage)
    return result


def one(value: dict[str, Any]) -> EmailMessage:
    [envelope] = render(value, now=NOW, mail_domain="mail.test")
    return parsed(envelope.message)


# --- validation ---------------------------------------------------------------------


def test_valid_arguments_pass() -> None:
    validate_arguments(arguments())
    validate_arguments(arguments(recipients="ann@example.com, Bob <bob@example.com>"))
    validate_arguments(arguments(recipients={"ann@example.com": {"name": "Ann"}, "b@x.io": None}))
    validate_arguments(arguments(recipients=['"Doe, Ann" <ann@example.com>']))


def test_arguments_must_be_an_object() -> None:
    assert problems([1]) == ["arguments: must be an object"]
    assert problems("x", path="metadata.arguments") == ["metadata.arguments: must be an object"]


def test_required_fields_and_unknown_fields() -> None:
    assert problems({"template": "x"}) == [
        "arguments.template: is not a known field (use recipients, headers, content, variables,"
        " recipient_override, attachments, webhook)",
        "arguments.recipients: is required",
        "arguments.headers: is required",
        "arguments.content: is required",
    ]


def test_every_recipient_problem_is_listed() -> None:
    assert problems(arguments(recipients="ann@example.com, nobody, x@@y.com")) == [
        "arguments.recipients: 'nobody' is not a valid email address",
        "arguments.recipients: 'x@@y.com' is not a valid email address",
    ]
    assert problems(arguments(recipients=["ann@example.com", 7, "a@b.com, c@d.com"])) == [
        "arguments.recipients[1]: must be a string",
        "arguments.recipients[2]: 'a@b.com, c@d.com' is not a valid email address",
    ]
    assert problems(arguments(recipients={"bad": {}, "ann@example.com": [1]})) == [
        "arguments.recipients.bad: 'bad' is not a valid email address",
        "arguments.recipients.ann@example.com: the recipient's variables must be an object"
        " (or null)",
    ]


def test_recipients_shape() -> None:
    assert problems(arguments(recipients=5)) == [
        "arguments.recipients: must be a comma-separated string, an array of addresses"
        " or an object mapping addresses to variables"
    ]
    assert problems(arguments(recipients=" , ")) == [
        "arguments.recipients: must name at least one address"
    ]
    assert problems(arguments(recipients=[])) == [
        "arguments.recipients: must name at least one address"
    ]


def test_header_problems() -> None:
    headers = {
        "Subject": "ok",
        "reply-to": "ok@example.com, broken",
        "cc": "c@example.com",
        "X-Tag": 3,
        "bcc": "spy@example.com",
        "To": "other@example.com",
        "Content-Type": "text/evil",
        "Bad Name": "x",
    }
    assert problems(arguments(headers=headers)) == [
        "arguments.headers.reply-to: 'broken' is not a valid email address",
        "arguments.headers.X-Tag: must be a string",
        "arguments.headers.bcc: is not supported; every recipient gets its own copy,"
        " so list the address in recipients",
        "arguments.headers.To: is set from recipients",
        "arguments.headers.Content-Type: is not a header you may set (use from, subject,"
        " reply-to, cc, an X- header or another header listed in docs/messages.md)",
        "arguments.headers: 'Bad Name' is not a valid header name",
        "arguments.headers.from: is required",
    ]


def test_header_values_with_cr_or_lf_are_rejected() -> None:
    headers = {
        "from": "a@example.com",
        "subject": "Hi\r\nBcc: victim@example.com",
        "X-Note": "one\ntwo",
    }
    assert problems(arguments(headers=headers)) == [
        "arguments.headers.subject: must not contain CR or LF",
        "arguments.headers.X-Note: must not contain CR or LF",
    ]
    assert problems(arguments(headers={"from": "a@example.com", "X-A\nB": "v"})) == [
        "arguments.headers: 'X-A\\nB' is not a valid header name"
    ]


def test_from_must_be_one_valid_address_and_headers_are_case_insensitive() -> None:
    assert problems(arguments(headers={"From": "a@example.com, b@example.com"})) == [
        "arguments.headers.From: 'a@example.com, b@example.com' is not a valid email address"
    ]
    assert problems(arguments(headers={"From": "a@example.com", "from": "a@example.com"})) == [
        "arguments.headers.from: is given twice (header names are case-insensitive)"
    ]


def test_content_problems() -> None:
    assert problems(arguments(content={})) == [
        "arguments.content: must have text/plain or text/html"
    ]
    assert problems(arguments(content={"text/plain": 1, "text/markdown": "x"})) == [
        "arguments.content.text/plain: must be a string",
        "arguments.content.text/markdown: is not a supported content type"
        " (use text/plain or text/html)",
    ]


def test_attachment_problems() -> None:
    attachments = {
        "ok.pdf": {"content_type": "application/pdf", "content": "JVBERg=="},
        "bad.bin": {"content": "not base64!"},
        "../etc/passwd": {"content": "AA=="},
        "x.txt": {"content_type": "text", "size": 3},
        "y.txt": "AA==",
    }
    assert problems(arguments(attachments=attachments)) == [
        "arguments.attachments.bad.bin.content: is not valid base64",
        "arguments.attachments: '../etc/passwd' is not a valid file name (no / \\ NUL or line breaks)",  # noqa: E501
        "arguments.attachments.x.txt.size: is not an attachment field (use content_type, content)",
        "arguments.attachments.x.txt.content_type: must be a media type such as application/pdf",
        "arguments.attachments.x.txt.content: is required",
        "arguments.attachments.y.txt: must be an object with content_type and content",
    ]


def test_variables_and_override_problems() -> None:
    assert problems(arguments(variables=[1], recipient_override="nope")) == [
        "arguments.variables: must be an object",
        "arguments.recipient_override: 'nope' is not a valid email address",
    ]


def test_a_ref_stands_in_for_any_value_and_only_its_shape_is_checked() -> None:
    ref = {"$ref": "https://example.com/data.json"}
    validate_arguments(
        arguments(
            recipients=ref,
            headers={"from": "a@example.com", "subject": ref},
            content=ref,
            variables=ref,
            attachments={"a.png": {"content": {**ref, "$type": "image/png", "$encode": "base64"}}},
        )
    )
    validate_arguments(ref)


def test_ref_shape_problems() -> None:
    bad = {
        "$ref": "ftp://example.com/x",
        "$type": "image/png",
        "$encode": "hex",
        "$method": "PUT",
        "$cache": True,
    }
    assert problems(arguments(content=bad)) == [
        "arguments.content.$cache: is not a $ref key (use $ref, $type, $encode, $method)",
        "arguments.content.$ref: must be an http or https URL",
        'arguments.content.$encode: must be "base64"',
        "arguments.content.$method: must be GET or POST",
    ]
    raw = {"$ref": "https://example.com/logo.png", "$type": "image/png"}
    assert problems(arguments(variables=raw)) == [
        'arguments.variables: $type image/png is raw bytes, so it needs "$encode": "base64"'
    ]
    assert problems(arguments(variables={"$ref": "https://x.io/a", "$type": "nonsense"})) == [
        "arguments.variables.$type: must be a media type such as application/json",
        'arguments.variables: $type nonsense is raw bytes, so it needs "$encode": "base64"',
    ]


def test_contains_refs_and_recipients_of() -> None:
    assert contains_refs({"a": [1, {"b": {"$ref": "https://x.io"}}]})
    assert not contains_refs({"a": [1, {"b": {"ref": "https://x.io"}}]})
    assert recipients_of(arguments(recipients="Ann <ann@example.com>, bob@example.com")) == [
        "ann@example.com",
        "bob@example.com",
    ]
    assert recipients_of(arguments(recipients={"c@example.com": {}})) == ["c@example.com"]
    assert recipients_of(arguments(recipients={"$ref": "https://x.io/r.json"})) == []


# --- rendering ----------------------------------------------------------------------


def test_text_only_is_text_plain_with_the_standard_headers() -> None:
    message = one(arguments(headers={"from": "Sender <s@example.com>", "subject": "Hi"}))
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Hi there\n"
    assert message["From"] == "Sender <s@example.com>"
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == "Hi"
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@mail.test>")
    assert parsedate_to_datetime(message["Date"]) == NOW


def test_html_only_is_text_html() -> None:
    message = one(arguments(content={"text/html": "<p>Hi</p>"}))
    assert message.get_content_type() == "text/html"
    assert message.get_content() == "<p>Hi</p>\n"


def test_text_and_html_make_multipart_alternative() -> None:
    message = one(arguments(content={"text/plain": "plain", "text/html": "<b>rich</b>"}))
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [part.get_content() for part in parts] == ["plain\n", "<b>rich</b>\n"]


def test_attachments_make_multipart_mixed_and_bytes_survive() -> None:
    content = base64.encodebytes(PDF).decode("ascii")  # with line breaks, as MIME writes it
    value = arguments(
        content={"text/plain": "see attached", "text/html": "<p>see attached</p>"},
        attachments={
            "report.pdf": {"content_type": "application/pdf", "content": content},
            "notes.txt": {"content": base64.b64encode(b"n").decode()},
        },
    )
    message = one(value)
    assert message.get_content_type() == "multipart/mixed"
    body, pdf, notes = message.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert pdf.get_content_type() == "application/pdf"
    assert pdf.get_filename() == "report.pdf"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_payload(decode=True) == PDF
    assert notes.get_content_type() == "text/plain"  # guessed from the file name
    assert notes.get_payload(decode=True) == b"n"


def test_per_recipient_variables_override_global_ones() -> None:
    value = arguments(
        recipients={"ann@example.com": {"name": "Ann"}, "bob@example.com": None},
        headers={"from": "s@example.com", "subject": "Hi {{ name }} #{{n}}"},
        content={"text/plain": "Dear {{name}}, {{unknown}} {{ flag }}", "text/html": "<p>{{name}}"},
        variables={"name": "friend", "n": 3, "flag": True},
    )
    envelopes = list(render(value, now=NOW, mail_domain="mail.test"))
    assert [envelope.recipient for envelope in envelopes] == ["ann@example.com", "bob@example.com"]
    ann, bob = (parsed(envelope.message) for envelope in envelopes)
    assert ann["Subject"] == "Hi Ann #3"
    assert bob["Subject"] == "Hi friend #3"
    ann_text, ann_html = ann.iter_parts()
    assert ann_text.get_content() == "Dear Ann, {{unknown}} true\n"
    assert ann_html.get_content() == "<p>Ann\n"
    assert ann["Message-ID"] != bob["Message-ID"]


def test_substitute_leaves_unknown_placeholders_and_does_not_rescan() -> None:
    assert substitute("{{a}} {{ b }} {{c}}", {"a": "{{b}}", "b": None}) == "{{b}}  {{c}}"
    assert substitute("{{list}}", {"list": [1, "é"]}) == '[1, "é"]'


def test_utf8_subject_body_and_display_names_round_trip() -> None:
    value = arguments(
        recipients=["Zoë Ärger <zoe@example.com>"],
        headers={"from": "Jürgen Groß <j@example.com>", "subject": "Grüße, {{who}} ✓"},
        content={"text/plain": "Привет, {{who}}!", "text/html": "<p>日本語 {{who}}</p>"},
        variables={"who": "Zoë"},
    )
    [envelope] = render(value, now=NOW, mail_domain="mail.test")
    raw = envelope.message.as_bytes()
    assert raw.isascii()  # encoded-words and quoted-printable: safe for any server
    message = parsed(envelope.message)
    assert message["Subject"] == "Grüße, Zoë ✓"
    assert message["From"].addresses[0].display_name == "Jürgen Groß"
    assert message["To"] == "Zoë Ärger <zoe@example.com>"
    text, html = message.iter_parts()
    assert text.get_content() == "Привет, Zoë!\n"
    assert html.get_content() == "<p>日本語 Zoë</p>\n"


def test_envelope_addresses_cc_reply_to_and_idn() -> None:
    value = arguments(
        recipients=["Ann <ann@bücher.example>"],
        headers={
            "from": "Sender <s@example.com>",
            "cc": "c@example.com, Ann <ann@bücher.example>",
            "reply-to": "help@example.com",
            "X-Campaign": "spring",
        },
    )
    [envelope] = render(value, now=NOW, mail_domain="mail.test")
    assert envelope.mail_from == "s@example.com"
    assert envelope.recipient == "ann@xn--bcher-kva.example"
    assert envelope.rcpt_to == ("ann@xn--bcher-kva.example", "c@example.com")
    message = parsed(envelope.message)
    assert message["Cc"] == "c@example.com, Ann <ann@xn--bcher-kva.example>"
    assert message["Reply-To"] == "help@example.com"
    assert message["X-Campaign"] == "spring"


def test_recipient_override_delivers_only_to_the_override_and_keeps_to() -> None:
    value = arguments(
        recipients="ann@example.com, bob@example.com",
        headers={"from": "s@example.com", "cc": "boss@example.com"},
        recipient_override="qa@example.com",
    )
    envelopes = list(render(value, now=NOW, mail_domain="mail.test"))
    assert [e.recipient for e in envelopes] == ["ann@example.com", "bob@example.com"]
    assert [e.rcpt_to for e in envelopes] == [("qa@example.com",), ("qa@example.com",)]
    assert [parsed(e.message)["To"] for e in envelopes] == ["ann@example.com", "bob@example.com"]


def test_render_rejects_cr_lf_headers_and_subjects_made_by_variables() -> None:
    with pytest.raises(InvalidMessage) as caught:
        render(
            arguments(headers={"from": "s@example.com", "subject": "x\r\nBcc: v@example.com"}),
            now=NOW,
            mail_domain="mail.test",
        )
    assert caught.value.errors == ["arguments.headers.subject: must not contain CR or LF"]
    value = arguments(
        headers={"from": "s@example.com", "subject": "Hi {{name}}"},
        variables={"name": "x\nBcc: v@example.com"},
    )
    with pytest.raises(InvalidMessage) as caught:
        render(value, now=NOW, mail_domain="mail.test")
    assert caught.value.message == (
        "arguments.headers.subject: contains CR or LF after substituting the variables"
        " for ann@example.com"
    )


def test_render_rejects_undecodable_attachments_and_leftover_refs() -> None:
    with pytest.raises(InvalidMessage) as caught:
        render(
            arguments(attachments={"a.bin": {"content": "%%%"}}), now=NOW, mail_domain="mail.test"
        )
    assert caught.value.errors == ["arguments.attachments.a.bin.content: is not valid base64"]
    with pytest.raises(InvalidMessage) as caught:
        render(arguments(variables={"$ref": "https://x.io/v"}), now=NOW, mail_domain="m.test")
    assert caught.value.message == "arguments: a $ref is left unresolved"


def test_render_checks_resolved_remote_content_again() -> None:
    # A $ref for the content that came back as a list, not an object.
    with pytest.raises(InvalidMessage) as caught:
        render(arguments(content=["not", "content"]), now=NOW, mail_domain="mail.test")
    assert caught.value.errors == ["arguments.content: must be an object"]


# --- limits (issue 9): each bound refused early, naming the field and the limit --------


def test_a_megabyte_of_recipients_is_refused_before_any_parsing() -> None:
    started = time.perf_counter()
    assert problems(arguments(recipients="." * 1024 * 1024)) == [
        "arguments.recipients: is 1,048,576 characters; the limit is 322,000"
        " (322 for each of SENDBEAT_MAX_RECIPIENTS = 1,000 addresses)"
    ]
    assert time.perf_counter() - started < 1  # the stdlib parser would take hours


def test_32_kb_of_one_address_is_refused_fast() -> None:
    started = time.perf_counter()  # the stdlib parser took ~6 s over these dots
    assert problems(arguments(recipients="." * 32 * 1024)) == [
        "arguments.recipients: is 32,768 characters; an address may have at most 320 (RFC 3696)"
    ]
    assert time.perf_counter() - started < 1


def test_a_thousand_addresses_parse_quickly() -> None:
    listed = ", ".join(f"User {i} <user{i}@example.com>" for i in range(1000))
    started = time.perf_counter()
    validate_arguments(arguments(recipients=listed))
    assert time.perf_counter() - started < 1
    assert len(recipients_of(arguments(recipients=listed))) == 1000


@pytest.mark.parametrize(
    "piece",
    [
        "a " * 150 + "<a@example.com>",  # valid: many words (the stdlib parser: ~4 ms each)
        "a." * 155 + "@example.com",  # an obsolete local part (~7 ms each)
        "a." * 150 + " <a@example.com>",  # an obsolete display name
        "a@" + ("\u00fc" * 60 + ".") * 5,  # IDN labels the codec refuses
    ],
    ids=["words", "obsolete-local", "obsolete-name", "long-idn"],
)
def test_the_largest_recipients_string_of_awkward_addresses_is_read_fast(piece: str) -> None:
    listed = ", ".join([piece[:320]] * 1000)  # 1,000 addresses of 320 characters: allowed
    started = time.perf_counter()
    with contextlib.suppress(InvalidMessage):  # the obsolete forms are refused
        validate_arguments(arguments(recipients=listed))
    assert time.perf_counter() - started < 1  # 2-7 s through the stdlib parser


def test_addresses_are_read_as_the_mail_library_would_write_them() -> None:
    cases = {
        "ann@example.com": ("", "ann", "example.com"),
        " Ann   Lee <ann@example.com> ": ("Ann Lee", "ann", "example.com"),
        '"Lee, Ann" <ann@example.com>': ("Lee, Ann", "ann", "example.com"),
        '"A \\"B\\"" <a@example.com>': ('A "B"', "a", "example.com"),
        '"ann lee"@example.com': ("", "ann lee", "example.com"),
        "Jos\u00e9 <j@b\u00fccher.de>": ("Jos\u00e9", "j", "xn--bcher-kva.de"),
        "<ann@example.com>": ("", "ann", "example.com"),
    }
    for text, (name, username, domain) in cases.items():
        found = parse_address(text)
        assert found is not None, text
        assert (found.display_name, found.username, found.domain) == (name, username, domain)
    refused = [
        "John Q. Public <j@example.com>",  # a dot in a display name needs quotes
        "ann@example.com (comment)",
        "a.@example.com",
        "\u00fc@example.com",  # a non-ASCII local part needs SMTPUTF8
        "ann@exa mple.com",
        "ann@-example.com",
        "a@b@example.com",
        "Ann <ann@example.com",
        "",
    ]
    for text in refused:
        assert parse_address(text) is None, text


def test_an_address_longer_than_320_characters_is_refused_everywhere() -> None:
    long = "a" * 64 + "@" + "b" * 60 + "." + "c" * 60 + "." + "d" * 60 + "." + "e" * 60 + ".io"
    assert len(long) == 311
    validate_arguments(arguments(recipients=[long]))  # 311 characters: fine
    longer = "Ann " + "x" * 10 + " <" + long + ">"
    too_long = "arguments.{}: is 328 characters; an address may have at most 320 (RFC 3696)"
    assert problems(arguments(recipients=[longer])) == [too_long.format("recipients[0]")]
    assert problems(arguments(recipient_override=longer)) == [too_long.format("recipient_override")]
    cc = {"from": "s@example.com", "cc": f"b@example.com, {longer}"}
    assert problems(arguments(headers=cc)) == [too_long.format("headers.cc")]


@pytest.mark.parametrize("form", ["string", "array", "object"])
def test_more_recipients_than_the_limit_are_refused_naming_it(form: str) -> None:
    addresses = [f"r{i}@example.com" for i in range(4)]
    value = {
        "string": ", ".join(addresses),
        "array": addresses,
        "object": dict.fromkeys(addresses),
    }[form]
    with pytest.raises(InvalidMessage) as caught:
        validate_arguments(arguments(recipients=value), limits=MessageLimits(max_recipients=3))
    assert caught.value.errors == [
        "arguments.recipients: has 4 recipients; the limit is SENDBEAT_MAX_RECIPIENTS = 3"
    ]
    validate_arguments(arguments(recipients=value), limits=MessageLimits(max_recipients=4))


@pytest.mark.parametrize(
    ("char", "named"),
    [
        ("\x0b", "U+000B"),
        ("\x0c", "U+000C"),
        ("\x1c", "U+001C"),
        ("\x1d", "U+001D"),
        ("\x1e", "U+001E"),
        ("\x85", "U+0085"),
        ("\u2028", "U+2028"),
        ("\u2029", "U+2029"),
    ],
)
def test_header_values_with_any_line_separator_are_refused(char: str, named: str) -> None:
    assert f"a{char}b".splitlines() == ["a", "b"]  # the mail library's view of it
    headers = {"from": "s@example.com", "subject": f"Hi{char}there", "X-Note": f"a{char}b"}
    assert problems(arguments(headers=headers)) == [
        f"arguments.headers.subject: must not contain {named}, a line break to the mail library",
        f"arguments.headers.X-Note: must not contain {named}, a line break to the mail library",
    ]


def test_a_subject_broken_by_a_variable_is_refused_before_any_copy() -> None:
    value = arguments(
        recipients={"ann@example.com": None, "bob@example.com": {"name": "Bob\u2028Bcc: x"}},
        headers={"from": "s@example.com", "subject": "Hi {{name}}"},
        variables={"name": "friend"},
    )
    assert problems(value) == [
        "arguments.headers.subject: contains U+2028, a line break to the mail library after"
        " substituting the variables for bob@example.com"
    ]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"headers": {"from": "s@example.com", "subject": "Hi \ud800"}}, "headers.subject"),
        ({"recipients": ["ann\udc00@example.com"]}, "recipients[0]"),
        ({"content": {"text/plain": "Hi \udfff"}}, "content.text/plain"),
        ({"variables": {"name": ["ok", "bad \ud83d"]}}, "variables.name[1]"),
        ({"attachments": {"a\ud800.txt": {"content": "AA=="}}}, "attachments"),
    ],
)
def test_lone_surrogates_anywhere_are_refused(change: dict[str, Any], where: str) -> None:
    [problem] = problems(arguments(**change))
    assert problem.startswith(f"arguments.{where}: ")
    assert "a lone surrogate (U+D" in problem and "not valid Unicode" in problem
    if where == "attachments":
        assert "the name 'a\\ud800.txt' contains" in problem
    problem.encode("utf-8")  # the error itself can be stored and sent


def test_deep_nesting_is_refused_without_recursion() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    assert problems(arguments(variables={"deep": deep})) == [
        "arguments.variables.deep" + "[0]" * 98 + ": is nested more than 100 levels deep"
    ]


def test_a_huge_number_of_values_is_refused_before_it_is_all_walked() -> None:
    many = arguments(variables={"rows": [{}] * 3_000_000})  # ~10 MB as JSON
    started = time.perf_counter()
    assert problems(many) == [
        "arguments: holds more than 100,000 values in all (the members of its objects and"
        " arrays, at every level)"
    ]
    assert time.perf_counter() - started < 0.5


def test_attachments_are_counted() -> None:
    files = {f"f{i}.txt": {"content": ""} for i in range(101)}
    assert problems(arguments(attachments=files)) == [
        "arguments.attachments: has 101 attachments; at most 100 are allowed"
    ]
    del files["f0.txt"]
    validate_arguments(arguments(attachments=files))


def test_a_header_value_longer_than_8192_characters_is_refused() -> None:
    headers = {"from": "s@example.com", "X-Long": "x" * 8193}
    assert problems(arguments(headers=headers)) == [
        "arguments.headers.X-Long: is 8,193 characters; a header value may have at most 8,192"
    ]


def test_all_headers_together_are_capped() -> None:
    headers = {"from": "s@example.com", "X-A": "é" * 8000, "X-B": "é" * 8000}
    validate_arguments(arguments(headers=headers))  # 16,023 characters
    assert problems(arguments(headers={**headers, "X-C": "é" * 400})) == [
        "arguments.headers: the header names and values come to 16,426 characters;"
        " at most 16,384 are allowed"
    ]


def test_placeholder_amplification_is_refused_without_rendering() -> None:
    # A 25 KB request that would render 30 MB: refused by arithmetic, in milliseconds.
    value = arguments(content={"text/plain": "{{a}}" * 3000}, variables={"a": "x" * 10_000})
    assert len(json.dumps(value)) < 30_000
    started = time.perf_counter()
    [problem] = problems(value)
    assert time.perf_counter() - started < 0.5
    assert problem == (
        "arguments: the message for ann@example.com would be 30,001,079 bytes; the limit is"
        " SENDBEAT_MAX_MESSAGE_BYTES = 26,214,400"
    )


def test_the_size_estimate_counts_each_recipients_own_variables() -> None:
    limits = MessageLimits(max_message_bytes=64 * 1024)
    value = arguments(
        recipients={"ann@example.com": {"a": "x"}, "bob@example.com": {"a": "y" * 40_000}},
        headers={"from": "s@example.com", "subject": "{{a}}"},
        content={"text/plain": "{{a}} {{a}}"},
    )
    with pytest.raises(InvalidMessage) as caught:
        validate_arguments(value, limits=limits)
    assert caught.value.errors[0].startswith("arguments.headers.subject: is 40,000 characters")
    value["headers"]["subject"] = "Hi"
    with pytest.raises(InvalidMessage) as caught:
        validate_arguments(value, limits=limits)
    assert caught.value.message.startswith("arguments: the message for bob@example.com would be")
    assert caught.value.message.endswith("the limit is SENDBEAT_MAX_MESSAGE_BYTES = 65,536")


def test_the_variables_total_size_is_capped() -> None:
    limits = MessageLimits(max_variables_bytes=1000)
    shared = {"note": "x" * 600}
    own = {"a@example.com": {"note": "y" * 390}, "b@example.com": None}
    validate_arguments(arguments(variables=shared), limits=limits)
    with pytest.raises(InvalidMessage) as caught:
        validate_arguments(arguments(variables=shared, recipients=own), limits=limits)
    assert caught.value.errors == [
        "arguments.variables: the variables, global and per recipient, are 1,014 bytes as"
        " JSON; the limit is SENDBEAT_MAX_VARIABLES_BYTES = 1,000"
    ]


def test_the_number_of_refs_is_capped() -> None:
    refs = {f"v{i}": {"$ref": f"https://x.io/{i}"} for i in range(21)}
    assert problems(arguments(variables=refs)) == [
        "arguments: has 21 $refs; the limit is SENDBEAT_MAX_REFS = 20"
    ]
    del refs["v0"]
    validate_arguments(arguments(variables=refs))


def test_render_builds_each_copy_only_when_it_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[str] = []
    original = message_module._message

    def counted(*args: Any) -> EmailMessage:
        built.append(args[2].addr_spec)
        return original(*args)

    monkeypatch.setattr(message_module, "_message", counted)
    recipients = ["a@example.com", "b@example.com", "c@example.com"]
    copies = render(arguments(recipients=recipients), now=NOW, mail_domain="m.test")
    assert built == []
    first = next(copies)
    assert (first.recipient, built) == ("a@example.com", ["a@example.com"])
    assert [copy.recipient for copy in copies] == recipients[1:]
    assert built == recipients


def test_render_refuses_a_copy_that_serializes_larger_than_the_limit() -> None:
    # Estimated at ~800 KB as UTF-8; quoted-printable makes it ~2.4 MB.
    value = arguments(content={"text/plain": "é" * 400_000})
    copies = render(
        value, now=NOW, mail_domain="m.test", limits=MessageLimits(max_message_bytes=2 << 20)
    )
    with pytest.raises(InvalidMessage) as caught:
        next(copies)
    assert caught.value.message.startswith("arguments: the message for ann@example.com is 2,4")
    assert caught.value.message.endswith("the limit is SENDBEAT_MAX_MESSAGE_BYTES = 2,097,152")


WRITTEN_AS_IS = [
    {"subject": "Report 000001", "from": "Reports <reports@example.com>"},
    {"subject": "Long " * 20, "from": "a.b+c@example.com"},
    {"subject": "Héllo wörld", "from": "Zoë <zoe@example.com>"},
    {"subject": "=?utf-8?q?looks_encoded?=", "from": '"Smith, John" <j@example.com>'},
    {"subject": "two  spaces and a trailing one ", "from": '"Quoted" <q@example.com>'},
    {"subject": " leading", "from": "x@example.com", "cc": "A <a@example.com>, b@example.com"},
    {"subject": "Reply", "from": "x@example.com", "reply-to": '"Desk (help)" <d@example.com>'},
    {"subject": "x" * 70, "from": '"Dept. Q" <q@example.com>', "cc": "Ünï <u@example.com>"},
]


@pytest.mark.parametrize("headers", WRITTEN_AS_IS)
def test_the_fast_policy_writes_the_bytes_the_stdlib_policy_writes(
    headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Header values kept as written (message._Policy) come out byte for byte as the mail
    library's own header parser writes them, whatever the value."""
    args = arguments(
        recipients=["ann@example.com", "Bob Jones <bob@example.com>", "Ünal <u@example.com>"],
        headers=headers,
        content={"text/plain": "Hi there", "text/html": "<p>Hi</p>"},
    )
    monkeypatch.setattr(message_module.uuid, "uuid4", lambda: UUID)

    def copies() -> list[bytes]:
        built = list(render(args, now=NOW, mail_domain="sendbeat.local", instance_id="i-1"))
        for envelope in built:
            envelope.message["X-Sendbeat-Instance"] = "i-1"
        return [envelope.message.as_bytes() for envelope in built]

    fast = copies()
    monkeypatch.setattr(message_module, "POLICY", policy.default)
    assert copies() == fast
    assert all(b"Message-ID: <i-1." in copy for copy in fast)


class _Uuid:
    hex = "0" * 32


UUID = _Uuid()
