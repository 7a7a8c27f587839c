"""RFC 3464 DSNs: ours parsed back with the stdlib, a hand-written Postfix DSN, odd inputs, junk."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import quopri
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.dsn import (
    DsnParseError,
    FailedRecipient,
    ParsedDsn,
    ParsedRecipient,
    build_dsn,
    parse_dsn,
)

ARRIVAL = 1_739_188_798.0  # 2025-02-10 11:59:58 UTC
NOW = 1_739_195_998.0  # two hours later
ORIGINAL = (
    b"Received: from client.member.example by relay.example with ESMTPSA\r\n"
    b"\tid 42; Mon, 10 Feb 2025 11:59:58 +0000\r\n"
    b"From: Alice <alice@member.example>\r\n"
    b"To: Bob <bob@dest.example>\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Message-ID: <orig-1@member.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
)
BODY = b"THE SECRET BODY: revenue was 12 million.\r\n"
USER_UNKNOWN = "550 5.1.1 <bob@dest.example>: Recipient address rejected: User unknown in virtual mailbox table"

BOB = FailedRecipient(
    recipient="bob@dest.example",
    status="5.1.1",
    action="failed",
    remote_mta="mx1.dest.example",
    diagnostic=USER_UNKNOWN,
    last_attempt=ARRIVAL + 5,
)


def build(
    failed: list[FailedRecipient], *, headers: bytes = ORIGINAL + b"\r\n" + BODY, sender: str = "alice@member.example"
) -> bytes:
    return build_dsn(
        reporting_mta="relay.example",
        original_envelope_from=sender,
        original_headers=headers,
        failed=failed,
        arrival=ARRIVAL,
        now=NOW,
        message_id_domain="relay.example",
        from_address="MAILER-DAEMON@relay.example",
    )


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def parts_of(msg: email.message.EmailMessage) -> list[email.message.EmailMessage]:
    parts = msg.get_payload()
    assert isinstance(parts, list)
    typed = [p for p in parts if isinstance(p, email.message.EmailMessage)]
    assert len(typed) == len(parts)
    return typed


def blocks_of(part: email.message.EmailMessage) -> list[email.message.Message]:
    """The field blocks of a message/delivery-status part, as the stdlib splits them."""
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    typed = [b for b in blocks if isinstance(b, email.message.Message)]
    assert len(typed) == len(blocks)
    return typed


def assert_wire_safe(raw: bytes) -> None:
    """7bit, CRLF only, no line over 998 octets (RFC 5322 §2.1.1, §2.3; RFC 2045 §2.7)."""
    assert raw.isascii()
    assert b"\0" not in raw
    assert raw.endswith(b"\r\n")
    assert re.search(rb"[^\r]\n|\r[^\n]", raw) is None, "bare CR or LF"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def rfc5322_date(t: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(t, UTC))


# ---------------------------------------------------------------- the builder, read by the stdlib


def test_a_bounce_parsed_back_with_the_stdlib() -> None:
    raw = build([BOB])
    assert_wire_safe(raw)
    msg = parse(raw)
    assert not msg.defects

    # Top-level header fields.
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay.example>"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@relay.example"
    assert msg["To"].addresses[0].addr_spec == "alice@member.example"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Date"].datetime == datetime.fromtimestamp(NOW, UTC)
    assert re.fullmatch(r"<[0-9a-f]{32}\.dsn@relay\.example>", msg["Message-ID"])
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"

    notice, report, returned = parts_of(msg)
    assert [p.get_content_type() for p in (notice, report, returned)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    for part in (notice, report, returned):
        assert not part.defects

    # 1. The human explanation: what failed, the remote's answer verbatim, what to do.
    text = notice.get_content().replace("\r\n", "\n")
    assert "relay.example" in text
    assert "<bob@dest.example>: delivery failed (status 5.1.1)" in text
    assert "The server mx1.dest.example answered:" in text
    assert USER_UNKNOWN in text
    assert "mistyped" in text

    # 2. The machine-readable report (RFC 3464 §2.2, §2.3).
    per_message, per_recipient = blocks_of(report)
    assert dict(per_message.items()) == {
        "Reporting-MTA": "dns; relay.example",
        "Arrival-Date": rfc5322_date(ARRIVAL),
    }
    assert dict(per_recipient.items()) == {
        "Final-Recipient": "rfc822; bob@dest.example",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx1.dest.example",
        "Diagnostic-Code": f"smtp; {USER_UNKNOWN}",
        "Last-Attempt-Date": rfc5322_date(ARRIVAL + 5),
    }

    # 3. The original headers, and never the body.
    assert returned.get_content().encode() == ORIGINAL
    assert b"SECRET" not in raw and b"revenue" not in raw


def test_the_report_is_long_line_safe_and_folds_reversibly() -> None:
    """A long reply is folded at single spaces; unfolding gives it back exactly (RFC 5322 §2.2.3)."""
    long_reply = "550-5.7.1 " + " ".join(f"word{i:03d}" for i in range(300))
    raw = build([FailedRecipient("bob@dest.example", "5.7.1", "failed", "mx1.dest.example", long_reply)])
    assert_wire_safe(raw)
    report_lines = raw.split(b"\r\n")
    assert max(len(line) for line in report_lines) <= 78
    _, report, _ = parts_of(parse(raw))
    assert blocks_of(report)[1]["Diagnostic-Code"] == f"smtp; {long_reply}"
    assert parse_dsn(raw).recipients[0].diagnostic == long_reply


def test_a_huge_unbroken_token_is_cut_below_998() -> None:
    token = "550 " + "x" * 3000
    raw = build([FailedRecipient("bob@dest.example", "5.0.0", "failed", None, token)])
    assert_wire_safe(raw)
    diagnostic = parse_dsn(raw).recipients[0].diagnostic
    assert diagnostic is not None and diagnostic.replace(" ", "") == token.replace(" ", "")


def test_a_non_ascii_diagnostic_does_not_break_it() -> None:
    reply = "550 5.7.1 Message refusé : boîte «inconnue» — 拒否 \\ ✓"
    raw = build([FailedRecipient("bob@dest.example", "5.7.1", "failed", "mx1.dest.example", reply, ARRIVAL + 5)])
    assert_wire_safe(raw)
    msg = parse(raw)
    assert not msg.defects
    notice, report, _ = parts_of(msg)
    # The human part carries it in UTF-8, quoted-printable; the report in RFC 6533 escapes.
    assert notice["Content-Transfer-Encoding"] == "quoted-printable"
    assert notice.get_content_charset() == "utf-8"
    assert reply in notice.get_content()
    assert blocks_of(report)[1]["Diagnostic-Code"] == (
        "smtp; 550 5.7.1 Message refus\\x{E9} : bo\\x{EE}te \\x{AB}inconnue\\x{BB} \\x{2014} "
        "\\x{62D2}\\x{5426} \\x{5C} \\x{2713}"
    )
    # Our parser reverses the escapes exactly.
    assert parse_dsn(raw).recipients[0].diagnostic == reply


def test_multi_line_diagnostics_become_one_line() -> None:
    reply = "550-5.1.1 The email account that you tried to reach does not exist.\r\n550 5.1.1 Learn more"
    raw = build([FailedRecipient("bob@dest.example", "5.1.1", "failed", "mx.dest.example", reply)])
    assert_wire_safe(raw)
    assert parse_dsn(raw).recipients[0].diagnostic == reply.replace("\r\n", " ")
    assert "    550 5.1.1 Learn more" in parts_of(parse(raw))[0].get_content()


def test_a_delay_warning() -> None:
    waiting = FailedRecipient(
        "carol@dest.example",
        "4.2.2",
        "delayed",
        "mx1.dest.example",
        "452 4.2.2 Mailbox full",
        NOW - 60,
        will_retry_until=ARRIVAL + 86_400,
    )
    raw = build([waiting])
    assert_wire_safe(raw)
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail"
    notice, report, _ = parts_of(msg)
    words = " ".join(notice.get_content().split())
    assert "This is only a warning" in words
    assert "you do not need to send the message again" in words
    assert "The relay will keep trying until Tue, 11 Feb 2025 11:59:58 +0000." in words
    fields = dict(blocks_of(report)[1].items())
    assert fields["Action"] == "delayed"
    assert fields["Status"] == "4.2.2"
    assert fields["Will-Retry-Until"] == rfc5322_date(ARRIVAL + 86_400)


def test_several_recipients_and_a_dns_failure() -> None:
    nxdomain = FailedRecipient(
        "dave@gone.example",
        "5.1.2",
        "failed",
        None,
        "gone.example does not exist (NXDOMAIN)",
        ARRIVAL + 1,
    )
    expired = FailedRecipient(
        "erin@slow.example", "4.4.1", "failed", "mx.slow.example", "connection timed out", ARRIVAL + 6000
    )
    raw = build([BOB, nxdomain, expired])
    assert_wire_safe(raw)
    msg = parse(raw)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    notice, report, _ = parts_of(msg)
    blocks = blocks_of(report)
    assert len(blocks) == 4
    assert blocks[2]["Final-Recipient"] == "rfc822; dave@gone.example"
    assert "Remote-MTA" not in blocks[2]
    # A diagnostic that is not an SMTP reply gets an X- type (RFC 3464 §2.3.6).
    assert blocks[2]["Diagnostic-Code"] == "X-Atmos; gone.example does not exist (NXDOMAIN)"
    assert blocks[3]["Diagnostic-Code"] == "X-Atmos; connection timed out"
    text = notice.get_content().replace("\r\n", "\n")
    assert "The delivery system answered:" in text
    assert "<erin@slow.example>: delivery failed after repeated temporary errors (status 4.4.1)" in text

    parsed = parse_dsn(raw)
    assert [r.final_recipient for r in parsed.recipients] == [
        "bob@dest.example",
        "dave@gone.example",
        "erin@slow.example",
    ]
    assert [r.diagnostic_type for r in parsed.recipients] == ["smtp", "x-atmos", "x-atmos"]


def test_our_own_dsn_parses_back() -> None:
    raw = build([BOB])
    assert parse_dsn(raw) == ParsedDsn(
        reporting_mta="relay.example",
        arrival_date=rfc5322_date(ARRIVAL),
        recipients=(
            ParsedRecipient(
                final_recipient="bob@dest.example",
                action="failed",
                status="5.1.1",
                remote_mta="mx1.dest.example",
                diagnostic_type="smtp",
                diagnostic=USER_UNKNOWN,
                last_attempt_date=rfc5322_date(ARRIVAL + 5),
            ),
        ),
    )


def test_an_internationalized_recipient_uses_the_utf8_address_type() -> None:
    raw = build([FailedRecipient("jörg+news@bücher.example", "5.1.1", "failed", None, "550 5.1.1 unknown")])
    assert_wire_safe(raw)
    _, report, _ = parts_of(parse(raw))
    # RFC 6533 §3 utf-8-addr-xtext: "+", "=" and "\" are not QCHARs and are escaped too.
    assert blocks_of(report)[1]["Final-Recipient"] == "utf-8; j\\x{F6}rg\\x{2B}news@b\\x{FC}cher.example"
    assert parse_dsn(raw).recipients[0].final_recipient == "jörg+news@bücher.example"


def test_non_ascii_original_headers_go_quoted_printable() -> None:
    headers = "Subject: Grüße aus Köln\r\nX-Long: " + "y" * 1200 + "\r\n"
    raw = build([BOB], headers=headers.encode("utf-8") + b"\r\nbody\r\n")
    assert_wire_safe(raw)
    _, _, returned = parts_of(parse(raw))
    assert returned["Content-Transfer-Encoding"] == "quoted-printable"
    assert returned.get_payload(decode=True) == headers.encode("utf-8")
    assert b"body" not in raw.split(b"Undelivered Message Headers")[1]


def test_bare_lf_headers_and_a_whole_message_are_cut_to_the_header_section() -> None:
    raw = build([BOB], headers=b"From: a@member.example\nSubject: x\n\nbody line\n")
    assert_wire_safe(raw)
    _, _, returned = parts_of(parse(raw))
    assert returned.get_content() == "From: a@member.example\r\nSubject: x\r\n"
    assert b"body line" not in raw


def test_header_injection_is_impossible() -> None:
    evil = FailedRecipient(
        "bob@dest.example\r\nBcc: victim@else.example",
        "5.1.1",
        "failed",
        "mx.dest.example\r\nX-Evil: 1",
        "550 nope\r\n\r\n--boundary\r\nContent-Type: text/html",
    )
    raw = build([evil])
    assert_wire_safe(raw)
    msg = parse(raw)
    assert msg["Bcc"] is None
    _, report, _ = parts_of(msg)
    block = blocks_of(report)[1]
    assert block["X-Evil"] is None and block["Bcc"] is None and block["Content-Type"] is None
    parsed = parse_dsn(raw).recipients[0]
    assert parsed.final_recipient == evil.recipient
    assert parsed.remote_mta == "mx.dest.example\\x{0D}\\x{0A}X-Evil:1"


def test_it_is_deterministic() -> None:
    assert build([BOB]) == build([BOB])
    later = build_dsn(
        reporting_mta="relay.example",
        original_envelope_from="alice@member.example",
        original_headers=ORIGINAL,
        failed=[BOB],
        arrival=ARRIVAL,
        now=NOW + 1,
        message_id_domain="relay.example",
        from_address="MAILER-DAEMON@relay.example",
    )
    assert parse(later)["Message-ID"] != parse(build([BOB]))["Message-ID"]


def test_a_from_address_with_a_display_name_is_kept() -> None:
    raw = build_dsn(
        reporting_mta="relay.example",
        original_envelope_from="<alice@member.example>",
        original_headers=ORIGINAL,
        failed=[BOB],
        arrival=ARRIVAL,
        now=NOW,
        message_id_domain="relay.example",
        from_address="Atmosphere Relay <mailer-daemon@relay.example>",
    )
    msg = parse(raw)
    assert msg["From"] == "Atmosphere Relay <mailer-daemon@relay.example>"
    assert msg["To"].addresses[0].addr_spec == "alice@member.example"


@pytest.mark.parametrize("sender", ["", "<>", "  ", " <> "])
def test_never_bounce_a_bounce(sender: str) -> None:
    with pytest.raises(ValueError, match="never bounce a bounce"):
        build([BOB], sender=sender)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"failed": []}, "at least one recipient"),
        ({"failed": [FailedRecipient("b@d.example", "5.1", "failed")]}, "RFC 3463"),
        ({"failed": [FailedRecipient("b@d.example", "6.0.0", "failed")]}, "RFC 3463"),
        ({"failed": [FailedRecipient("b@d.example", "5.0.0", "relayed")]}, "action"),  # type: ignore[arg-type]
        ({"reporting_mta": "relay example"}, "reporting_mta"),
        ({"message_id_domain": "relay.example\r\n"}, "message_id_domain"),
        ({"from_address": "MAILER-DAEMON@relay.example\r\nBcc: x@y"}, "from_address"),
        ({"from_address": "postmaster"}, "from_address"),
    ],
)
def test_bad_inputs_are_refused(change: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {
        "reporting_mta": "relay.example",
        "original_envelope_from": "alice@member.example",
        "original_headers": ORIGINAL,
        "failed": [BOB],
        "arrival": ARRIVAL,
        "now": NOW,
        "message_id_domain": "relay.example",
        "from_address": "MAILER-DAEMON@relay.example",
    }
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        build_dsn(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the parser, on other people's DSNs

# Hand-written in Postfix's bounce(8) format: LF line endings (as on disk), folded fields
# indented by four spaces, X-Postfix-* extension fields, Original-Recipient without a space,
# an X-Postfix diagnostic type, raw 8-bit UTF-8, and text/rfc822-headers.
POSTFIX_DSN = b"""\
Return-Path: <>
Received: by mail.sender.example (Postfix)
\tid 4TbQ2d3xyzz4; Mon, 10 Feb 2025 12:00:05 +0000 (UTC)
Date: Mon, 10 Feb 2025 12:00:05 +0000 (UTC)
From: MAILER-DAEMON@mail.sender.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces+17-abcdefghij@relay.example
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4TbQ2d3xyzz4.1739188805/mail.sender.example"
Content-Transfer-Encoding: 8bit
Message-Id: <20250210120005.4TbQ2d3xyzz4@mail.sender.example>

This is a MIME-encapsulated message.

--4TbQ2d3xyzz4.1739188805/mail.sender.example
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mail.sender.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<nobody@dest.example>: host mx1.dest.example[192.0.2.25] said: 550 5.1.1
    <nobody@dest.example>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

<gone@nxdomain.example>: Host or domain name not found. Name service error for
    name=nxdomain.example type=AAAA: Host not found

<r\xc3\xa9mi@dest.example>: host mx1.dest.example[192.0.2.25] said: 550 5.7.1
    Message refus\xc3\xa9 (in reply to end of DATA command)

--4TbQ2d3xyzz4.1739188805/mail.sender.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.sender.example
X-Postfix-Queue-ID: 4TbQ2d3xyzz4
X-Postfix-Sender: rfc822; bounces+17-abcdefghij@relay.example
Arrival-Date: Mon, 10 Feb 2025 11:59:58 +0000 (UTC)

Final-Recipient: rfc822; nobody@dest.example
Original-Recipient: rfc822;nobody@dest.example
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx1.dest.example
Diagnostic-Code: smtp; 550 5.1.1 <nobody@dest.example>: Recipient address
    rejected: User unknown in virtual mailbox table

Final-Recipient: rfc822; gone@nxdomain.example
Original-Recipient: rfc822;gone@nxdomain.example
Action: failed
Status: 5.4.4
Diagnostic-Code: X-Postfix; Host or domain name not found. Name service error
    for name=nxdomain.example type=AAAA: Host not found

Final-Recipient: rfc822; r\xc3\xa9mi@dest.example
Action: failed
Status: 5.7.1
Remote-MTA: dns; mx1.dest.example
Diagnostic-Code: smtp; 550 5.7.1 Message refus\xc3\xa9

--4TbQ2d3xyzz4.1739188805/mail.sender.example
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

Return-Path: <bounces+17-abcdefghij@relay.example>
Received: from relay.example (relay.example [198.51.100.7])
\tby mail.sender.example (Postfix) with ESMTPS id 4TbQ2d3xyzz4
\tfor <nobody@dest.example>; Mon, 10 Feb 2025 11:59:58 +0000 (UTC)
From: Alice <alice@member.example>
To: nobody@dest.example
Subject: Hello
Message-ID: <orig-1@member.example>

--4TbQ2d3xyzz4.1739188805/mail.sender.example--
"""

POSTFIX_PARSED = ParsedDsn(
    reporting_mta="mail.sender.example",
    arrival_date="Mon, 10 Feb 2025 11:59:58 +0000 (UTC)",
    recipients=(
        ParsedRecipient(
            final_recipient="nobody@dest.example",
            original_recipient="nobody@dest.example",
            action="failed",
            status="5.1.1",
            remote_mta="mx1.dest.example",
            diagnostic_type="smtp",
            diagnostic="550 5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown in virtual mailbox table",
        ),
        ParsedRecipient(
            final_recipient="gone@nxdomain.example",
            original_recipient="gone@nxdomain.example",
            action="failed",
            status="5.4.4",
            diagnostic_type="x-postfix",
            diagnostic="Host or domain name not found. Name service error for name=nxdomain.example type=AAAA: Host not found",
        ),
        ParsedRecipient(
            final_recipient="rémi@dest.example",
            action="failed",
            status="5.7.1",
            remote_mta="mx1.dest.example",
            diagnostic_type="smtp",
            diagnostic="550 5.7.1 Message refusé",
        ),
    ),
)


def test_a_postfix_dsn() -> None:
    assert parse_dsn(POSTFIX_DSN) == POSTFIX_PARSED


def test_a_postfix_dsn_with_crlf_line_endings() -> None:
    assert parse_dsn(POSTFIX_DSN.replace(b"\n", b"\r\n")) == POSTFIX_PARSED


def test_the_stdlib_agrees_on_the_postfix_sample() -> None:
    """The sample is well-formed: the stdlib sees the same three parts and blocks."""
    msg = parse(POSTFIX_DSN)
    _, report, returned = parts_of(msg)
    assert report.get_content_type() == "message/delivery-status"
    assert len(blocks_of(report)) == 4
    assert returned.get_content_type() == "text/rfc822-headers"


def test_variations_seen_in_the_wild() -> None:
    """No type prefix, angle brackets, upper case, a comment after the status, no per-message block."""
    raw = (
        b"From: postmaster@dest.example\r\n"
        b"Subject: Delivery Status Notification (Failure)\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type="delivery-status"; boundary="b1"\r\n'
        b"\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"Delivery has failed.\r\n"
        b"--b1\r\n"
        b"Content-Type: Message/Delivery-Status\r\n"
        b"\r\n"
        b"final-recipient: RFC822;<Nobody@Dest.example>\r\n"
        b"ACTION: Failed\r\n"
        b"STATUS: 5.1.10 (recipient address has null MX)\r\n"
        b"Remote-MTA: mx.dest.example\r\n"
        b"Diagnostic-Code: smtp;556 5.1.10 no mail here\r\n"
        b"\r\n"
        b"Original-Recipient: rfc822;only-original@dest.example\r\n"
        b"Action: delayed\r\n"
        b"Status: 4.4.7\r\n"
        b"\r\n"
        b"--b1--\r\n"
    )
    assert parse_dsn(raw) == ParsedDsn(
        reporting_mta=None,
        arrival_date=None,
        recipients=(
            ParsedRecipient(
                final_recipient="Nobody@Dest.example",
                action="failed",
                status="5.1.10",
                remote_mta="mx.dest.example",
                diagnostic_type="smtp",
                diagnostic="556 5.1.10 no mail here",
            ),
            ParsedRecipient(
                final_recipient="only-original@dest.example",
                original_recipient="only-original@dest.example",
                action="delayed",
                status="4.4.7",
            ),
        ),
    )


def test_a_global_delivery_status_part() -> None:
    """RFC 6533 message/global-delivery-status: UTF-8 as is; the stdlib does not split it into blocks."""
    raw = (
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=global-delivery-status; boundary="g"\r\n'
        "\r\n"
        "--g\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Échec.\r\n"
        "--g\r\n"
        "Content-Type: message/global-delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.exemple.fr\r\n"
        "\r\n"
        "Final-Recipient: utf-8; josé@exemple.fr\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 utilisateur\r\n"
        "  inconnu\r\n"
        "\r\n"
        "Final-Recipient: rfc822; ana@exemple.fr\r\n"
        "Action: failed\r\n"
        "Status: 5.2.1\r\n"
        "\r\n"
        "--g--\r\n"
    ).encode()
    parsed = parse_dsn(raw)
    assert parsed.reporting_mta == "mx.exemple.fr"
    assert [(r.final_recipient, r.status, r.diagnostic) for r in parsed.recipients] == [
        ("josé@exemple.fr", "5.1.1", "550 5.1.1 utilisateur inconnu"),
        ("ana@exemple.fr", "5.2.1", None),
    ]


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
@pytest.mark.parametrize("media_type", ["message/delivery-status", "message/global-delivery-status"])
def test_an_encoded_report_part(encoding: str, media_type: str) -> None:
    """Some MTAs base64 or QP the report; the stdlib would split it before decoding, so we keep it whole."""
    report = "Reporting-MTA: dns; mx.exemple.fr\r\n\r\nFinal-Recipient: rfc822; zoé@exemple.fr\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    body = (
        base64.encodebytes(report.encode()).replace(b"\n", b"\r\n")
        if encoding == "base64"
        else quopri.encodestring(report.encode().replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
    )
    raw = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--b\r\nContent-Type: " + media_type.encode() + b"\r\n"
        b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body + b"\r\n--b--\r\n"
    )
    parsed = parse_dsn(raw)
    assert parsed.reporting_mta == "mx.exemple.fr"
    assert [(r.final_recipient, r.action, r.status) for r in parsed.recipients] == [
        ("zoé@exemple.fr", "failed", "5.1.1")
    ]


def test_a_boundary_that_names_the_report_type() -> None:
    raw = build([BOB]).replace(b"=_atmos_dsn_", b"message/delivery-status_")
    assert parse_dsn(raw).recipients[0].final_recipient == "bob@dest.example"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"Subject: hello\r\n\r\njust a message\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
        b"\xff\xfe\x00garbage",
    ],
)
def test_not_a_dsn(raw: bytes) -> None:
    with pytest.raises(DsnParseError):
        parse_dsn(raw)


def test_a_report_with_no_recipients_is_empty_not_an_error() -> None:
    raw = b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; a.example\r\n"
    assert parse_dsn(raw) == ParsedDsn("a.example", None, ())


@given(st.binary(max_size=2000))
def test_parse_never_raises_anything_but_dsn_parse_error(junk: bytes) -> None:
    try:
        parse_dsn(junk)
    except DsnParseError:
        pass


@given(
    st.lists(
        st.text(
            alphabet=st.characters(exclude_characters="\r\n"),
            min_size=0,
            max_size=200,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_parse_never_raises_on_report_like_junk(lines: list[str]) -> None:
    body = "\r\n".join(["Content-Type: message/delivery-status", "", *lines, ""]).encode("utf-8", "surrogatepass")
    try:
        parse_dsn(body)
    except DsnParseError:
        pass


safe_text = st.text(st.characters(codec="utf-8"), max_size=300)


@given(
    local=st.text(st.characters(codec="utf-8", exclude_characters="<>"), min_size=1, max_size=40),
    diagnostic=safe_text,
    remote=st.none() | st.from_regex(r"\A[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,3}\Z"),
    status=st.sampled_from(["5.1.1", "5.7.1", "4.4.7", "5.0.0", "4.2.2"]),
    action=st.sampled_from(["failed", "delayed"]),
    headers=st.binary(max_size=500),
)
def test_any_input_builds_a_safe_dsn_that_parses_back(
    local: str, diagnostic: str, remote: str | None, status: str, action: str, headers: bytes
) -> None:
    rcpt = FailedRecipient(f"{local}@dest.example", status, action, remote, diagnostic, ARRIVAL)  # type: ignore[arg-type]
    raw = build([rcpt], headers=headers)
    assert_wire_safe(raw)
    msg = parse(raw)
    assert len(parts_of(msg)) == 3
    (parsed,) = parse_dsn(raw).recipients
    assert parsed.final_recipient == rcpt.recipient
    assert (parsed.action, parsed.status, parsed.remote_mta) == (action, status, remote)
    one_line = " ".join(re.split(r"\r\n|\r|\n", diagnostic.strip()))
    assert parsed.diagnostic == (one_line or None)
