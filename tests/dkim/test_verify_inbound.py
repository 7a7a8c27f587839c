"""DKIM verification of inbound mail with dkimpy (relay.dkim.verify), keys published by Knot: a feedback
report is believed for its source only when its signature verifies for a configured domain (RFC 6376 §6;
``inbound.fbl_sources``, d= alignment relaxed as in RFC 7489 §3.1.1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from relay.dkim.verify import DkimVerifier, authentication_results, passes_for
from relay.mail.operatorkey import OperatorKeys
from tests.peers.knot import KnotServer
from tests.peers.knot import knot_fixture as knot_fixture  # registers the ``knot`` fixture

REPORT = (b"From: fbl@fbl.example.net\r\nTo: fbl@relay.test\r\nSubject: complaint\r\n"
          b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <r1@fbl.example.net>\r\n"
          b"Content-Type: text/plain\r\n\r\nThis is an abuse report.\r\n")


@pytest.mark.trio
async def test_feedback_reports_are_believed_only_with_a_verifying_signature(
        knot: Callable[..., KnotServer], tmp_path: Path) -> None:
    key = OperatorKeys(tmp_path, b"k" * 32).current()  # any RSA key: the feedback provider's
    record = key.record("fbl.example.net")
    name = record["name"].removesuffix(".example.net")
    dns = knot({"example.net": [f"{name} TXT " + " ".join(f'"{s}"' for s in record["strings"])]})

    def signed(data: bytes, domain: bytes = b"fbl.example.net") -> bytes:
        return dkim.sign(data, key.selector.encode(), domain, key.rsa_private_pem,
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + data

    verifier = DkimVerifier(dns.nameservers, timeout=3)
    good = await verifier.verify(signed(REPORT))
    assert [(r.domain, r.selector, r.ok) for r in good] == [("fbl.example.net", key.selector, True)]
    assert passes_for(good, ["example.net"]) == "fbl.example.net"  # a subdomain of the configured source
    assert passes_for(good, ["other.example"]) is None
    assert b"dkim=pass header.d=fbl.example.net" in authentication_results("mx.relay.test", good)

    # A body changed after signing, a key that is not published, no signature: nothing is believed.
    tampered = await verifier.verify(signed(REPORT).replace(b"an abuse", b"a forged"))
    assert [r.ok for r in tampered] == [False] and passes_for(tampered, ["example.net"]) is None
    unpublished = await verifier.verify(signed(REPORT, b"fbl.example.org"))
    assert [r.ok for r in unpublished] == [False]
    assert await verifier.verify(REPORT) == []
    assert b"dkim=none" in authentication_results("mx.relay.test", [])
