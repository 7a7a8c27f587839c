"""The Received: trace field (RFC 5321 §4.4, RFC 3848) and Bcc: removal on submission."""

from __future__ import annotations

import email
from email import policy

import pytest

from relay.smtp.handler import Session
from relay.smtp.trace import protocol, received
from relay.submission import without_bcc


@pytest.mark.parametrize(("extended", "tls", "auth", "utf8", "expected"), [
    (False, False, False, False, "SMTP"), (True, False, False, False, "ESMTP"), (True, True, False, False, "ESMTPS"),
    (True, False, True, False, "ESMTPA"), (True, True, True, False, "ESMTPSA"), (True, True, True, True, "UTF8SMTPSA"),
])
def test_protocol_names(extended: bool, tls: bool, auth: bool, utf8: bool, expected: str) -> None:
    assert protocol(extended=extended, tls=tls, authenticated=auth, smtputf8=utf8) == expected


def test_received_as_postfix_writes_it() -> None:
    s = Session(peer=("192.0.2.7", 4242), tls=True, tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384",
                tls_bits=256, ehlo="client.example")
    field = received(s, by="mx1.relay.example", rcpts=["r@example.org"], authenticated=True, now=0)
    assert field == (b"Received: from client.example ([192.0.2.7])\r\n"
                     b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"
                     b"\tby mx1.relay.example (Atmosphere Relay) with ESMTPSA for <r@example.org>;\r\n"
                     b"\tThu, 01 Jan 1970 00:00:00 +0000\r\n")
    msg = email.message_from_bytes(field + b"Subject: x\r\n\r\nbody\r\n", policy=policy.default)
    assert "with ESMTPSA" in msg["Received"]


def test_received_names_no_recipient_of_several_and_cleans_the_ehlo_name() -> None:
    s = Session(peer=("2001:db8::1", 1), ehlo="evil(); x\x01", extended=True)
    field = received(s, by="mx", rcpts=["a@x.org", "b@x.org"], authenticated=False, now=0).decode()
    assert field.startswith("Received: from evilx ([IPv6:2001:db8::1])\r\n\tby mx (Atmosphere Relay) with ESMTP;\r\n")
    assert "a@x.org" not in field and "using" not in field


@pytest.mark.parametrize("data", [
    b"From: a@x.org\r\nBcc: hidden@x.org\r\nSubject: s\r\n\r\nbody\r\n",
    b"From: a@x.org\r\nbcc: hidden@x.org,\r\n\tother@x.org\r\nSubject: s\r\n\r\nbody\r\n",  # folded, any case
    b"Bcc:\r\nFrom: a@x.org\r\nSubject: s\r\n\r\nbody\r\n",
])
def test_bcc_is_removed(data: bytes) -> None:
    out = without_bcc(data)
    assert out.lower().count(b"bcc") == 0 and b"hidden" not in out and b"other@" not in out
    assert out.endswith(b"Subject: s\r\n\r\nbody\r\n")


def test_message_without_bcc_is_untouched() -> None:
    data = b"From: a@x.org\r\nSubject: Bcc: in the subject\r\n\r\nBcc: in the body\r\n"
    assert without_bcc(data) is data
