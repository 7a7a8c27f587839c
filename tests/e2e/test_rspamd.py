"""A real receiver's verdict: Rspamd scores what the real relay process delivers.

The relay (``atmos serve``) routes by Knot to an smtp-sink; the delivered bytes are then scanned by Rspamd
(tests/peers/rspamd.py: a private namespace, DNS answered only by a Knot serving the same records) as if
they came from the relay's public address 192.0.2.10 (documentation range: only DNS records name it,
nothing is sent there). Two messages the relay sends: one submitted over SMTP by a mail client, one made
by /v1/send with HTML, non-ASCII text, a PDF and a text attachment. Each must pass DKIM (all three), SPF
and DMARC, and no header or MIME rule may fire. And one the relay forwards: a reply from an outside sender
(example.org, DKIM-signed with its own key) to the member's domain, forwarded by the inbound listener to the
member's confirmed forward-to with SRS and an ARC set sealed with the operator key (RFC 8617): ARC must
verify (ARC_ALLOW), the sender's DKIM must survive, DMARC must pass for the sender's domain. The scores go
to the test output (``-s``) and the lead's notes.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.mail.dkimkeys import rsa_txt, zone_txt
from relay.store import open_store
from tests.e2e.conftest import DID, DOMAIN, HANDLE, Member
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.e2e.test_delivery import delivery_toml, sink_has, wait_for
from tests.peers.knot import KnotServer
from tests.peers.rspamd import Scan, scan
from tests.peers.smtpsink import SmtpSink

RELAY_IP = "192.0.2.10"
OPERATOR = "relay.test"
MAILBOX = "mailbox.example"  # where the member reads replies (their forward-to)
OWNER = f"alice@{MAILBOX}"
SENDER_IP = "198.51.100.25"  # the outside sender's own MTA (documentation range), as its SPF says

# Symbols that say something about the message itself (its headers and MIME structure): none may fire
# with a positive score. Environment symbols (RBL lookups Knot refuses, no Received history at a
# first hop) are reported but are not about what the relay produced.
_ENVIRONMENT = {"RCVD_COUNT_ZERO", "RCVD_NO_TLS_LAST", "RBL_SENDERSCORE_FAIL", "ARC_NA", "ASN"}
# VERP (DESIGN §5: bounces attributed by the envelope sender) puts the bounce address on the operator
# domain, so the envelope sender never equals From: Rspamd's FORGED_SENDER (0.3) fires for every ESP that
# uses its own return-path domain (SES, Postmark, SendGrid alike). Known, and the only one allowed.
_VERP = {"FORGED_SENDER"}


class _Sender:
    """example.org, an outside correspondent: its own RSA DKIM key (dkimpy signs with it), SPF, DMARC."""

    selector = "mail2026"

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
        self.records = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1",
                        f"@ 300 TXT {zone_txt(f'v=spf1 ip4:{SENDER_IP} -all')}",
                        f"_dmarc 300 TXT {zone_txt('v=DMARC1; p=reject')}",
                        f"{self.selector}._domainkey 300 TXT {zone_txt(rsa_txt(key.public_key()))}"]

    def sign(self, data: bytes) -> bytes:
        sig: bytes = dkim.sign(data, self.selector.encode(), b"example.org", self.pem,
                               include_headers=[b"from", b"to", b"subject", b"date", b"message-id",
                                                b"in-reply-to", b"references", b"mime-version", b"content-type"])
        return sig + data


SENDER = _Sender()


def _base_zones() -> dict[str, list[str]]:
    mx = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"]
    return {"example.org": list(SENDER.records), DOMAIN: list(mx), MAILBOX: list(mx)}


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path_factory.mktemp("sink")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with KnotServer(tmp_path_factory.mktemp("knot"), _base_zones()) as server:
        yield server


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles, sink: SmtpSink,
              dns: KnotServer) -> Iterator[tuple[RelayProcess, Member, dict[str, list[str]]]]:
    """The relay, its member, and the zones a receiver sees (what the member and operator publish)."""
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files,
                        extra_toml=delivery_toml(sink, dns) + f'[dns]\nrelay_ips = ["{RELAY_IP}"]\n'
                        f'nameservers = ["{dns.nameservers[0]}"]\n')
    info = proc.enroll(DID, DOMAIN, HANDLE)
    member_records = [r for r in info["records"] if r["type"] == "TXT"]
    operator_keys = proc.admin("dkim", "show")["keys"]
    zones = {
        DOMAIN: ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"] + [_txt(r, DOMAIN) for r in member_records],
        OPERATOR: [f"@ A {RELAY_IP}", "@ MX 10 relay.test.", f'@ TXT {zone_txt(f"v=spf1 ip4:{RELAY_IP} -all")}',
                   f'_dmarc TXT {zone_txt(f"v=DMARC1; p=reject; rua=mailto:postmaster@{OPERATOR}")}']
                  + [_txt(k, OPERATOR) for k in operator_keys],
        "example.org": list(SENDER.records),
        MAILBOX: ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"],
        "2.0.192.in-addr.arpa": ["10 PTR relay.test."],
    }
    # The relay checks the member's records itself; publish them where it looks too.
    dns.update(DOMAIN, zones[DOMAIN])
    proc.start()
    yield proc, Member(DID, DOMAIN, HANDLE, info["api_key"]), zones
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def _txt(record: dict[str, Any], origin: str) -> str:
    name = record["name"]
    label = "@" if name == origin else name.removesuffix("." + origin)
    return f"{label} 300 TXT {zone_txt(record['value'])}"


def _verdicts(tmp_path: Path, zones: dict[str, list[str]], got: Any, *others: bytes) -> list[dict[str, Any]]:
    data = got.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return scan(tmp_path, zones, [Scan(m, ip=RELAY_IP, helo=OPERATOR, mail_from=got.mail_from, rcpt=got.rcpts[0],
                                       hostname=OPERATOR) for m in (data, *others)])


def _positive(answer: dict[str, Any]) -> set[str]:
    return {n for n, s in answer["symbols"].items() if s["score"] > 0}


def _assert_trusted(answer: dict[str, Any], *, content: frozenset[str] = frozenset(),
                    signed_by: int = 3) -> None:
    symbols: dict[str, Any] = answer["symbols"]
    names = set(symbols)
    print(f"rspamd score {answer['score']:.2f} (action {answer['action']}): "
          + ", ".join(f"{n}={s['score']:g}" for n, s in sorted(symbols.items()) if s["score"]))
    assert "R_DKIM_ALLOW" in names, sorted(names)
    passed = symbols["R_DKIM_ALLOW"]["options"]
    assert len(passed) == signed_by, passed  # sent: member RSA, member Ed25519, operator RSA
    assert {"R_SPF_ALLOW", "DMARC_POLICY_ALLOW"} <= names, sorted(names)
    assert not names & {"R_DKIM_REJECT", "R_DKIM_TEMPFAIL", "R_DKIM_PERMFAIL", "R_SPF_FAIL", "R_SPF_SOFTFAIL",
                        "DMARC_POLICY_REJECT", "DMARC_POLICY_QUARANTINE"}
    allowed = _ENVIRONMENT | _VERP | content
    fired = {n: s["score"] for n, s in symbols.items() if s["score"] > 0 and n not in allowed}
    assert fired == {}, f"header/MIME rules fired: {fired}"
    assert answer["action"] == "no action"


def test_smtp_submitted_mail_passes_rspamd(published: tuple[RelayProcess, Member, dict[str, list[str]]],
                                           sink: SmtpSink, tls_files: TLSFiles, tmp_path: Path) -> None:
    relay, member, zones = published
    message = (f"From: Alice <hello@{member.domain}>\r\nTo: Bob <bob@example.org>\r\n"
               "Subject: rspamd-smtp\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
               f"Message-ID: <rspamd-smtp.1@{member.domain}>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
               "Hello Bob,\r\n\r\nthe meeting moved to Thursday at ten. See you there.\r\n\r\nAlice\r\n")
    with smtplib.SMTP(*relay.submission, timeout=10) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(tls_files.ca_pem)))
        s.login(member.did, member.key)
        s.sendmail(f"hello@{member.domain}", ["bob@example.org"], message.encode())
    [got] = wait_for(lambda: sink_has(sink, "rspamd-smtp"))
    [answer] = _verdicts(tmp_path, zones, got)
    _assert_trusted(answer)


def test_api_html_and_non_ascii_mail_passes_rspamd(published: tuple[RelayProcess, Member, dict[str, list[str]]],
                                                   sink: SmtpSink, tmp_path: Path) -> None:
    relay, member, zones = published
    # Two attachments: a PDF (base64), and a text file with a non-ASCII name and content, which the relay
    # sends as text (quoted-printable): base64 text is what Rspamd's MIME_BASE64_TEXT holds against a message.
    body: dict[str, Any] = {
        "from": f"hello@{member.domain}", "to": "bob@example.org", "subject": "rspamd-api",
        "text": "Grüße aus Köln! Das Treffen ist am Donnerstag um zehn.\n\nZoë",
        "html": "<html><body><p>Grüße aus <b>Köln</b>! Das Treffen ist am Donnerstag um zehn.</p>"
                "<p>Zoë</p></body></html>",
        "attachments": [{"filename": "Tagesordnung.pdf", "content": base64.b64encode(_pdf()).decode(),
                         "contentType": "application/pdf"},
                        {"filename": "Anfahrt nach Köln.txt", "contentType": "text/plain",
                         "content": base64.b64encode("Vom Hauptbahnhof 5 Minuten zu Fuß.\n".encode()).decode()}]}
    r = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {member.key}",
                                                      "X-Atmos-DID": member.did}, json=body, timeout=10)
    assert r.status_code == 200, r.text
    [got] = wait_for(lambda: sink_has(sink, "rspamd-api"))
    assert b"Content-Disposition: attachment; filename=\"Tagesordnung.pdf\"" in got.data
    assert b"Content-Type: text/plain; charset=utf-8; name*=utf-8''Anfahrt%20nach%20K%C3%B6ln.txt" in got.data
    assert b"Content-Transfer-Encoding: base64" in got.data and b"zu Fu=C3=9F." in got.data
    # Rspamd 3.4's chartable scores accented Latin text as R_MIXED_CHARSET whatever the encoding (8bit,
    # base64, latin-1 alike): the same words written by hand in plain 8-bit UTF-8 are the reference, and
    # what fires on them is the words' doing, not the relay's MIME.
    reference = (f"From: hello@{member.domain}\r\nTo: bob@example.org\r\nSubject: rspamd-api\r\n"
                 "Date: Wed, 02 Dec 2026 07:00:00 +0000\r\nMessage-ID: <ref.1@mail.example.com>\r\n"
                 "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 "Content-Transfer-Encoding: 8bit\r\n\r\n" + body["text"].replace("\n", "\r\n") + "\r\n").encode()
    answer, ref = _verdicts(tmp_path, zones, got, reference)
    content = frozenset(_positive(ref) & {"R_MIXED_CHARSET"})
    _assert_trusted(answer, content=content)


def _pdf() -> bytes:
    """A small well-formed one-page PDF (PDF 1.4: objects, cross-reference table with exact offsets)."""
    text = b"BT /F1 18 Tf 72 760 Td (Tagesordnung: Donnerstag, 10 Uhr) Tj ET"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
               b" /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = b"%PDF-1.4\n"
    offsets = []
    for n, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def test_forwarded_reply_passes_rspamd_with_arc(published: tuple[RelayProcess, Member, dict[str, list[str]]],
                                               sink: SmtpSink, tls_files: TLSFiles, tmp_path: Path) -> None:
    relay, member, zones = published
    store = open_store(f"sqlite:///{relay.state_dir / 'relay.db'}")
    try:
        store.set_forward_to(member.domain, OWNER)
        # As if the owner had followed the confirmation link (tests/e2e/test_abuse.py follows a real one).
        store.confirm_forward_to(member.domain, OWNER, time.time())
    finally:
        store.close()
    reply = (f"From: Bob <bob@example.org>\r\nTo: Alice <hello@{member.domain}>\r\nSubject: Re: rspamd-fwd\r\n"
             "Date: Wed, 02 Dec 2026 08:15:00 +0000\r\nMessage-ID: <rspamd-fwd.1@example.org>\r\n"
             f"In-Reply-To: <rspamd-smtp.1@{member.domain}>\r\nReferences: <rspamd-smtp.1@{member.domain}>\r\n"
             "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n"
             "\r\nHi Alice,\r\n\r\nThursday at ten works for me. I will bring the slides.\r\n\r\nBob\r\n")
    # What example.org's own MTA would hand over: its DKIM signature over the reply.
    signed = SENDER.sign(reply.encode())
    with smtplib.SMTP(*relay.inbound, local_hostname="mx.example.org", timeout=10) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(tls_files.ca_pem)))  # as MTAs do between them
        s.sendmail("bob@example.org", [f"hello@{member.domain}"], signed)
    [got] = wait_for(lambda: sink_has(sink, "Re: rspamd-fwd"))
    assert got.rcpts == (OWNER,) and got.mail_from.lower().startswith("srs0=")
    [answer] = _verdicts(tmp_path, zones, got)
    symbols = answer["symbols"]
    # The seal verifies against the operator key in Knot; the original author's signature survived.
    assert "ARC_ALLOW" in symbols, sorted(symbols)
    assert not set(symbols) & {"ARC_REJECT", "ARC_INVALID", "ARC_DNSFAIL", "ARC_NA"}, sorted(symbols)
    assert [o.split(":")[0] for o in symbols["R_DKIM_ALLOW"]["options"]] == ["example.org"], symbols
    _assert_trusted(answer, signed_by=1)
