"""Hypothesis properties of every parser of outside input: they never raise anything but their own
error type, whatever a stranger sends (issue 13). Random bytes alone rarely reach deep into a MIME
parser, so the strategies here build structured hostile input: multipart reports with broken
boundaries, transfer encodings and charsets, 8-bit and folded fields, SMTP command lines with
hostile arguments.

    parser                                   may raise
    relay.delivery.dsn.parse_dsn             DsnParseError
    relay.inbound.arf.parse_arf              ArfParseError   (is_arf: nothing)
    relay.inbound.bounces.analyze            nothing (None when not a bounce)
    relay.mail.outbound.split_message             nothing; fields + rest == the input
    relay.accept.sender.header_fields/parse_headers nothing; parse_headers' text is valid Unicode (display)
    relay.accept.sender.check_header_from           DomainMismatch, InvalidRequest
    relay.smtp.envelope.parse_mail/_rcpt     ArgumentError
    relay.smtp.core.ServerConnection         nothing: protocol errors are events
"""

from __future__ import annotations

import base64
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.accept.sender import check_header_from, header_fields, parse_headers
from relay.delivery.dsn import DsnParseError, ParsedDsn, parse_dsn
from relay.errors import DomainMismatch, InvalidRequest
from relay.inbound.arf import ArfParseError, ArfReport, is_arf, parse_arf
from relay.inbound.bounces import Bounce, analyze
from relay.mail.outbound import split_message
from relay.members.auth import Principal
from relay.smtp.envelope import ArgumentError, parse_mail, parse_params, parse_rcpt
from relay.smtp.events import Event
from relay.smtp.limits import Limits
from tests.smtp.harness import run_stream

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENT_TYPES = typing.get_args(Event)

EIGHT_BIT = [b"caf\xe9", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", "日本".encode(), b"\x00", b"\xe2\x82"]
text_bytes = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"x@example.org", b"rfc822; a@b.example", b"5.1.1", b"4.4.7", b"9.9.9", b"failed",
                     b"delayed", b"abuse", b"=?utf-8?b?!!?=", b"\\x{E9}", b"\\x{ZZ}", b"\\x{", *EIGHT_BIT]),
    st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n ", b";", b"<", b">", b"@", *EIGHT_BIT]), max_size=12)
    .map(b"".join),
)
FIELD_NAMES = [b"Reporting-MTA", b"Final-Recipient", b"Original-Recipient", b"Action", b"Status",
               b"Diagnostic-Code", b"Remote-MTA", b"Arrival-Date", b"Feedback-Type", b"User-Agent", b"Version",
               b"Original-Mail-From", b"Original-Rcpt-To", b"Reported-Domain", b"Source-IP", b"X-\xe9", b"Bad Name",
               b"", b"From", b"Subject", b"Return-Path", b"Content-Type", b"Content-Transfer-Encoding"]


@st.composite
def field_lines(draw: st.DrawFn, max_fields: int = 8) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, max_fields))):
        name = draw(st.sampled_from(FIELD_NAMES))
        sep = draw(st.sampled_from([b": ", b":", b" : ", b"", b"::"]))
        lines.append(name + sep + draw(text_bytes))
    eol = draw(st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r\n"]))
    return eol.join(lines) + eol


@st.composite
def encoded(draw: st.DrawFn, payload: bytes) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding header line, payload encoded, or broken)."""
    cte = draw(st.sampled_from([b"", b"7bit", b"8bit", b"base64", b"quoted-printable", b"x-unknown", b"BASE64"]))
    if cte.lower() == b"base64":
        body = base64.b64encode(payload)
        if draw(st.booleans()):
            body = body[: draw(st.integers(0, len(body)))] + draw(st.sampled_from([b"!", b"=", b"\xff", b"", b"A"]))
    elif cte == b"quoted-printable":
        body = payload.replace(b"=", b"=3D") + draw(st.sampled_from([b"", b"=", b"=Z", b"=\r\n", b"=E9"]))
    else:
        body = payload
    return (b"Content-Transfer-Encoding: " + cte + b"\r\n" if cte else b""), body


@st.composite
def reports(draw: st.DrawFn) -> bytes:
    """A multipart/report (RFC 6522) shaped like a DSN (RFC 3464) or an ARF report (RFC 5965)."""
    kind = draw(st.sampled_from([b"delivery-status", b"global-delivery-status", b"feedback-report", b"x-junk"]))
    boundary = draw(st.sampled_from([b"b1", b"", b"\xe9\xff", b"x" * 90, b"a b", b'"q"', b"--"]))
    charset = draw(st.sampled_from([b"", b"; charset=utf-8", b"; charset=x-unknown", b"; charset=utf-7",
                                    b"; charset=\xff", b"; charset="]))
    blocks = draw(st.lists(field_lines(), min_size=0, max_size=4))
    report_body = b"\r\n".join(blocks)
    cte, report_body = draw(encoded(report_body))
    report = b"Content-Type: message/" + kind + charset + b"\r\n" + cte + b"\r\n" + report_body
    enclosed_type = draw(st.sampled_from([b"message/rfc822", b"text/rfc822-headers", b"message/global",
                                          b"message/rfc822-headers", b"text/plain"]))
    enclosed = (b"Content-Type: " + enclosed_type + b"\r\n\r\n" + draw(field_lines(12)) + b"\r\n"
                + draw(st.binary(max_size=60)))
    parts = [b"Content-Type: text/plain" + charset + b"\r\n\r\n" + draw(st.binary(max_size=60)), report, enclosed]
    parts = draw(st.permutations(parts)) if draw(st.booleans()) else parts
    parts = parts * draw(st.integers(1, 3))
    if draw(st.booleans()):  # a nested multipart with its own (maybe missing) boundary
        inner = b"Content-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\n" + report + b"\r\n"
        parts.append(inner + draw(st.sampled_from([b"--in--\r\n", b"", b"--out--\r\n"])))
    sep = b"\r\n--" + boundary + b"\r\n"
    close = draw(st.sampled_from([b"\r\n--" + boundary + b"--\r\n", b"", b"\r\n--" + boundary + b"\r\n"]))
    head = (b"From: " + draw(text_bytes) + b"\r\nTo: x\r\nSubject: " + draw(text_bytes) + b"\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=" + kind + b"; boundary=\"" + boundary + b"\"\r\n")
    return head + b"\r\n" + sep.lstrip(b"\r\n") + sep.join(parts) + close


@SETTINGS
@given(reports())
def test_parse_dsn_raises_only_its_own_error(raw: bytes) -> None:
    try:
        assert isinstance(parse_dsn(raw), ParsedDsn)
    except DsnParseError:
        pass


@SETTINGS
@given(reports())
def test_parse_arf_raises_only_its_own_error(raw: bytes) -> None:
    assert isinstance(is_arf(raw), bool)
    try:
        assert isinstance(parse_arf(raw), ArfReport)
    except ArfParseError:
        pass


@SETTINGS
@given(reports(), st.one_of(st.none(), st.sampled_from(["x@example.org", "a@b.example", "\udce9@x"])),
       st.booleans())
def test_bounce_analysis_never_raises(raw: bytes, recipient: str | None, null_sender: bool) -> None:
    result = analyze(raw, recipient, null_sender=null_sender)
    assert result is None or isinstance(result, Bounce)


@st.composite
def header_sections(draw: st.DrawFn) -> bytes:
    fields = draw(field_lines(16))
    if draw(st.booleans()):
        fields = b"From: " + draw(st.sampled_from([b"a@mine.example", b"\xe9 <a@mine.example>", b"<>", b"a@other.example",
                                                   b"a@mine.example, b@mine.example", b"\xff", b""])) + b"\r\n" + fields
    folding = draw(st.sampled_from([b"", b" folded", b"\tfolded \xe9", b"  ", b"\r\n \r\n"]))
    return fields + folding + draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"", b"\n\n"])) + draw(st.binary(max_size=40))


@SETTINGS
@given(header_sections())
def test_header_splitting_never_raises_and_round_trips(raw: bytes) -> None:
    fields, rest = split_message(raw)
    if b"\r\n\r\n" in raw:
        assert b"".join(fields) + rest == raw
    for name, value in header_fields(raw):
        assert isinstance(name, str) and isinstance(value, str)
    for value in parse_headers(raw).values():
        value.encode("utf-8")  # display text: valid Unicode even for undecodable 8-bit bytes
    principal = Principal(did="did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", handle=None, domains=frozenset({"mine.example"}),
                          pending=frozenset({"pending.example"}))
    try:
        check_header_from(principal, raw)
    except (DomainMismatch, InvalidRequest):
        pass


smtp_args = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(["FROM:", "TO:", "<", ">", "<>", "a@b.example", "@r1,@r2:", "\"q\\\"\"", " ",
                              "SIZE=", "SIZE=99999999999999999999", "BODY=8BITMIME", "SMTPUTF8", "AUTH=<>",
                              "=", "\x00", "é", "\udce9", "postmaster", "[1.2.3.4]", "[IPv6:::1]", "\t"]),
             max_size=12).map("".join),
)


@SETTINGS
@given(smtp_args, st.booleans())
def test_envelope_arguments_raise_only_argument_errors(arg: str, smtputf8: bool) -> None:
    for parse in (lambda: parse_mail(arg, max_size=1000), lambda: parse_rcpt(arg, smtputf8=smtputf8),
                  lambda: parse_params(arg)):
        try:
            parse()
        except ArgumentError as exc:
            assert 500 <= exc.reply.code < 600


VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT", b"AUTH PLAIN", b"AUTH LOGIN",
         b"AUTH XOAUTH2", b"VRFY", b"EXPN", b"NOOP", b"RSET", b"HELP", b"QUIT", b"mail from:", b"X" * 70]


@st.composite
def command_lines(draw: st.DrawFn) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(1, 25))):
        verb = draw(st.sampled_from(VERBS))
        arg = draw(st.one_of(st.binary(max_size=30), st.sampled_from(
            [b"", b" <a@b.example>", b"<> SIZE=10", b" " + base64.b64encode(b"\0u\0p"), b" !!!", b" =",
             b" " + base64.b64encode(b"\xff\xfe\0\xc3("), b"<\xe9@x.example> SMTPUTF8", b" 10 LAST", b" -1"])))
        end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b"", b"\x00\r\n"]))
        out.append(verb + arg + end)
    return out


@SETTINGS
@given(command_lines())
def test_smtp_command_lines_give_events_never_exceptions(lines: list[bytes]) -> None:
    limits = Limits(max_command_line=64, max_text_line=40, max_auth_line=64, max_message_size=200,
                    max_recipients=3, max_errors=8)
    for chunks in ([b"".join(lines)], lines):
        events = run_stream(chunks, limits, require_tls_for_auth=False)
        assert all(isinstance(e, EVENT_TYPES) for e in events)
