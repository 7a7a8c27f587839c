"""Reading and classifying bounces (pure): RFC 3464 DSNs, our own builder, common non-standard formats."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.dsn import FailedRecipient, build_dsn
from relay.inbound.bounces import analyze, classify

DATA = Path(__file__).parent / "data"
ORIGINAL = (
    b"From: Alice <alice@member.example>\r\nTo: gone@remote.example\r\nSubject: hello 5.2.2 quota\r\n"
    b"X-Atmos-Member-Did: did:plc:memberaaaaaaaaaaaaaaaaaa\r\nMessage-ID: <m1@member.example>\r\n\r\nbody\r\n"
)


def our_dsn(status: str, diagnostic: str, action: str = "failed", rcpt: str = "gone@remote.example") -> bytes:
    return build_dsn(
        reporting_mta="mx.relay.example",
        original_envelope_from="bounces+7-abcdefghij@relay.example",
        original_headers=ORIGINAL,
        failed=[FailedRecipient(rcpt, status, action, "mx.remote.example", diagnostic)],  # type: ignore[arg-type]
        arrival=1_700_000_000.0,
        now=1_700_000_100.0,
        message_id_domain="relay.example",
        from_address="MAILER-DAEMON@relay.example",
    )


@pytest.mark.parametrize(
    ("status", "text", "klass"),
    [
        ("5.1.1", "550 5.1.1 <x@y>: Recipient address rejected: User unknown", "hard"),
        ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "hard"),
        ("5.0.0", "550 5.0.0 <x@y>... User unknown", "hard"),
        ("5.4.4", "Host or domain name not found", "hard"),
        ("5.2.2", "552 5.2.2 The email account that you tried to reach is over quota", "mailbox-full"),
        ("4.2.2", "452 4.2.2 Mailbox full", "mailbox-full"),
        ("5.0.0", "552 Requested mail action aborted: exceeded storage allocation (quota)", "mailbox-full"),
        ("4.4.1", "connect to mx.remote.example[192.0.2.1]:25: Connection refused", "soft"),
        ("4.7.0", "421 4.7.0 Try again later, closing connection (greylisted)", "soft"),
        ("5.7.1", "550 5.7.1 Service unavailable, Client host blocked using Spamhaus", "policy"),
        ("5.7.26", "550 5.7.26 Unauthenticated email from member.example is not accepted due to DMARC policy",
         "policy"),
        ("5.0.0", "554 5.0.0 Service unavailable; Client host [192.0.2.9] blocked using zen.spamhaus.org", "policy"),
        ("5.3.0", "554 5.3.0 Message rejected as spam by Content Filtering", "policy"),
        ("5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable", "hard"),
        (None, "550 Requested action not taken: mailbox unavailable", "hard"),
        (None, "451 Temporary local problem", "soft"),
    ],
)
def test_classify(status: str | None, text: str, klass: str) -> None:
    assert classify(status, text) == klass


def test_our_own_dsn_is_read_and_classified() -> None:
    report = analyze(our_dsn("5.1.1", "550 5.1.1 <gone@remote.example>: user unknown"), "gone@remote.example")
    assert report is not None and report.standard and report.failed
    assert (report.status, report.klass, report.recipient) == ("5.1.1", "hard", "gone@remote.example")
    assert report.diagnostic == "550 5.1.1 <gone@remote.example>: user unknown"


def test_dsn_classes_from_our_builder() -> None:
    cases = {
        ("5.2.2", "552 5.2.2 mailbox full"): "mailbox-full",
        ("5.7.1", "550 5.7.1 message refused by policy"): "policy",
        ("4.4.7", "451 4.4.7 delivery time expired"): "soft",
    }
    for (status, diag), klass in cases.items():
        report = analyze(our_dsn(status, diag))
        assert report is not None and report.failed and report.klass == klass, (status, report)


def test_delay_warnings_are_not_failures() -> None:
    report = analyze(our_dsn("4.4.1", "451 4.4.1 no answer", action="delayed"))
    assert report is not None and report.action == "delayed" and not report.failed


def test_captured_postfix_dsn() -> None:
    """A DSN written by a real Postfix (3.7) smtp(8)/bounce(8) after a 550 5.1.1 at RCPT."""
    raw = (DATA / "postfix-dsn-5.1.1.eml").read_bytes()
    report = analyze(raw, "reject-gone@remote.test")
    assert report is not None and report.standard and report.failed
    assert (report.status, report.klass, report.recipient) == ("5.1.1", "hard", "reject-gone@remote.test")
    assert "550 5.1.1" in report.diagnostic and "user unknown" in report.diagnostic


QMAIL = b"""\
Return-Path: <>
From: MAILER-DAEMON@mx.example.net
To: bounces+7-abcdefghij@relay.example
Subject: failure notice

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<gone@example.net>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <bounces+7-abcdefghij@relay.example>
Subject: your quota 5.2.2 and 4.2.2 and spam

hello
"""

EXIM = b"""\
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: bounces+7-abcdefghij@relay.example
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: full@example.org
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  full@example.org
    host mx.example.org [192.0.2.1]
    SMTP error from remote mail server after RCPT TO:<full@example.org>:
    552 5.2.2 Mailbox full: quota exceeded

------ This is a copy of the message, including all the headers. ------

Subject: 5.1.1 5.7.1 words in the returned message
"""

EXCHANGE_PLAIN = b"""\
From: postmaster@outlook.example
Subject: Undeliverable: hello
Content-Type: text/plain; charset=utf-8

Delivery has failed to these recipients or groups:

someone@outlook.example
Your message wasn't delivered because the recipient's email provider rejected it.

Remote Server returned '550 5.7.606 Access denied, banned sending IP [192.0.2.1].'
"""

NO_CODES = b"""\
From: Mail Delivery Subsystem <MAILER-DAEMON@old.example>
Subject: Returned mail: see transcript for details

The original message was received at Mon, 1 Jan 2024
   ----- The following addresses had permanent fatal errors -----
<nobody@old.example>
   ----- Transcript of session follows -----
... while talking to old.example.:
>>> RCPT To:<nobody@old.example>
<<< User unknown
"""

VACATION = b"""\
From: Bob <bob@remote.example>
To: bounces+7-abcdefghij@relay.example
Subject: Out of office: hello
Auto-Submitted: auto-replied

I am away until Monday. For urgent matters call 555 1234 or see section 5.1.1.
"""


@pytest.mark.parametrize(
    ("raw", "null_sender", "status", "klass", "recipient"),
    [
        (QMAIL, True, "5.1.1", "hard", None),
        (EXIM, False, "5.2.2", "mailbox-full", "full@example.org"),
        (EXCHANGE_PLAIN, False, "5.7.606", "policy", None),
        (NO_CODES, True, "5.1.1", "hard", None),
    ],
)
def test_non_standard_bounces(raw: bytes, null_sender: bool, status: str, klass: str, recipient: str | None) -> None:
    report = analyze(raw.replace(b"\n", b"\r\n"), null_sender=null_sender)
    assert report is not None and not report.standard and report.failed
    assert (report.status, report.klass, report.recipient) == (status, klass, recipient)


def test_auto_replies_are_not_bounces() -> None:
    assert analyze(VACATION.replace(b"\n", b"\r\n"), null_sender=False) is None
    human = b"From: Bob <bob@remote.example>\r\nSubject: Re: hello\r\n\r\n550 thanks, 5.1.1 noted\r\n"
    assert analyze(human) is None


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_analyze_never_raises(raw: bytes) -> None:
    analyze(raw)
    analyze(b"Subject: Undelivered Mail\r\nFrom: MAILER-DAEMON@x\r\n\r\n" + raw, null_sender=True)
