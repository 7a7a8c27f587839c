"""A real receiver's verdict: Rspamd scores what the real relay process delivers.

The relay (``atmos serve``) routes by Knot to an smtp-sink; the delivered bytes are then scanned by Rspamd
(tests/peers/rspamd.py: a private namespace, DNS answered only by a Knot serving the same records) as if
they came from the relay's public address 192.0.2.10 (documentation range: only DNS records name it,
nothing is sent there). Two messages: one submitted over SMTP by a mail client, one made by /v1/send
with HTML and non-ASCII text. Each must pass DKIM (all three signatures), SPF and DMARC, and no header
or MIME rule may fire. The scores go to the test output (``-s``) and the lead's notes.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.mail.dkimkeys import zone_txt
from tests.e2e.conftest import DID, DOMAIN, HANDLE, Member
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.e2e.test_delivery import delivery_toml, sink_has, wait_for
from tests.peers.knot import KnotServer
from tests.peers.rspamd import Scan, scan
from tests.peers.smtpsink import SmtpSink

RELAY_IP = "192.0.2.10"
OPERATOR = "relay.test"

# Symbols that say something about the message itself (its headers and MIME structure): none may fire
# with a positive score. Environment symbols (RBL lookups Knot refuses, no Received history at a
# first hop) are reported but are not about what the relay produced.
_ENVIRONMENT = {"RCVD_COUNT_ZERO", "RCVD_NO_TLS_LAST", "RBL_SENDERSCORE_FAIL", "ARC_NA", "ASN"}
# VERP (DESIGN §5: bounces attributed by the envelope sender) puts the bounce address on the operator
# domain, so the envelope sender never equals From: Rspamd's FORGED_SENDER (0.3) fires for every ESP that
# uses its own return-path domain (SES, Postmark, SendGrid alike). Known, and the only one allowed.
_VERP = {"FORGED_SENDER"}


def _base_zones() -> dict[str, list[str]]:
    mx = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"]
    return {"example.org": list(mx), DOMAIN: list(mx)}


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
        "example.org": ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"],
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


def _assert_trusted(answer: dict[str, Any], *, content: frozenset[str] = frozenset()) -> None:
    symbols: dict[str, Any] = answer["symbols"]
    names = set(symbols)
    print(f"rspamd score {answer['score']:.2f} (action {answer['action']}): "
          + ", ".join(f"{n}={s['score']:g}" for n, s in sorted(symbols.items()) if s["score"]))
    assert "R_DKIM_ALLOW" in names, sorted(names)
    passed = symbols["R_DKIM_ALLOW"]["options"]
    assert len(passed) == 3, passed  # member RSA, member Ed25519, operator RSA
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
    body = {"from": f"hello@{member.domain}", "to": "bob@example.org", "subject": "rspamd-api",
            "text": "Grüße aus Köln! Das Treffen ist am Donnerstag um zehn.\n\nZoë",
            "html": "<html><body><p>Grüße aus <b>Köln</b>! Das Treffen ist am Donnerstag um zehn.</p>"
                    "<p>Zoë</p></body></html>"}
    r = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {member.key}",
                                                      "X-Atmos-DID": member.did}, json=body, timeout=10)
    assert r.status_code == 200, r.text
    [got] = wait_for(lambda: sink_has(sink, "rspamd-api"))
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
