"""Delivery through the real relay process to a real recipient MTA (Postfix smtp-sink),
routed by MX records served by a real authoritative DNS server (Knot)."""

from __future__ import annotations

import email
import re
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from email import policy
from pathlib import Path
from typing import Any

import dkim
import dns.resolver as dns_resolver
import httpx
import pytest

from relay.delivery import verp
from relay.delivery.dsn import parse_dsn
from relay.mail.dkimkeys import zone_txt
from relay.store import open_store
from spool import SpoolLog
from tests.e2e.conftest import DID, DOMAIN, HANDLE, Member
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.peers.knot import KnotServer
from tests.peers.smtpsink import SmtpSink

SECRET = b"secret-key-" + b"y" * 24  # RelayProcess's ATMOS_SECRET_KEY


def zones() -> dict[str, list[str]]:
    mx = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"]
    return {
        "example.org": mx,
        DOMAIN: mx,  # the member's own domain: DSNs go back there
        "nullmx.example": ["@ 300 MX 0 ."],
        "nomx.example": ["@ 300 A 127.0.0.1"],  # implicit MX (RFC 5321 §5.1)
    }


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path_factory.mktemp("sink")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with KnotServer(tmp_path_factory.mktemp("knot"), zones(), servfail=["broken.example"]) as server:
        yield server


def delivery_toml(sink: SmtpSink, dns: KnotServer, per_destination: int = 5) -> str:
    return (f"[delivery]\nport = {sink.port}\nnameservers = [\"{dns.nameservers[0]}\"]\n"
            f"shutdown_grace = 5.0\nper_destination = {per_destination}\n")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles, sink: SmtpSink,
          dns: KnotServer) -> Iterator[RelayProcess]:
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files, extra_toml=delivery_toml(sink, dns))
    info = proc.enroll(DID, DOMAIN, HANDLE)
    publish_dkim(dns, DOMAIN, [info["dkim"]["rsa"], info["dkim"]["ed25519"]])
    publish_dkim(dns, "relay.test", proc.admin("dkim", "show")["keys"])
    proc.member = Member(DID, DOMAIN, HANDLE, info["api_key"])  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def publish_dkim(dns: KnotServer, zone: str, records: list[dict[str, Any]]) -> None:
    """Publish TXT records (values split into <=255-byte strings) next to the zone's other records."""
    lines = zones().get(zone, [])
    for rec in records:
        label = rec["name"].removesuffix("." + zone)
        lines = [*lines, f"{label} 300 TXT {zone_txt(rec['value'])}"]
    dns.update(zone, lines)


def knot_txt(dns: KnotServer) -> Callable[..., bytes]:
    """dkimpy's dnsfunc, answered by the Knot server over real DNS."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        res = dns_resolver.Resolver(configure=False)
        res.nameservers = [dns.host]
        res.port = dns.port
        answer = res.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        return b"".join(b"".join(rr.strings) for rr in answer)
    return lookup


def send(relay: RelayProcess, member: Member, to: str, subject: str) -> int:
    r = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did},
                   json={"from": f"hello@{member.domain}", "to": to, "subject": subject, "text": "Hello"}, timeout=10)
    assert r.status_code == 200, r.text
    mid: int = r.json()["accepted"][0]["messageId"]
    return mid


def status(relay: RelayProcess, member: Member, mid: int) -> dict[str, Any]:
    r = httpx.get(f"{relay.http}/v1/messages/{mid}",
                  headers={"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did}, timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def wait_for(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def sink_has(sink: SmtpSink, subject: str) -> list[Any]:
    line = re.compile(rb"^Subject: " + re.escape(subject.encode()) + rb"\r?$", re.MULTILINE)
    return [m for m in sink.messages() if line.search(m.data)]


def test_delivered_via_mx_with_verp_sender(relay: RelayProcess, member: Member, sink: SmtpSink,
                                           dns: KnotServer) -> None:
    mid = send(relay, member, "alice@example.org", "e2e-deliver-1")
    [got] = wait_for(lambda: sink_has(sink, "e2e-deliver-1"))
    assert got.rcpts == ("alice@example.org",)
    assert verp.decode(got.mail_from, secret=SECRET, domain="relay.test") == mid
    # Three DKIM signatures, each verified by dkimpy against the keys published in Knot.
    wire = got.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sigs = [line for line in wire.split(b"\r\n") if line.startswith(b"DKIM-Signature:")]
    assert len(sigs) == 3
    verifier = dkim.DKIM(wire)
    assert all(verifier.verify(idx=i, dnsfunc=knot_txt(dns)) for i in range(3))
    assert b"a=ed25519-sha256" in wire and b"d=relay.test" in wire
    msg = email.message_from_bytes(wire, policy=policy.default)
    assert msg["X-Atmos-Member-Did"] == member.did and msg["Feedback-ID"].endswith(":atmos")
    assert msg["List-Unsubscribe"].startswith(f"<{relay.http}/u/") and msg["List-Unsubscribe-Post"]
    tampered = wire.replace(b"Subject: e2e-deliver-1", b"Subject: e2e-deliver-X")
    assert not any(dkim.DKIM(tampered).verify(idx=i, dnsfunc=knot_txt(dns)) for i in range(3))
    st = wait_for(lambda: (s := status(relay, member, mid))["status"] == "sent" and s)
    [attempt] = st["timeline"]
    assert attempt["mxHost"] == "mx.example.org" and attempt["tls"] is False  # smtp-sink offers no STARTTLS
    assert attempt["reply"].startswith("250")


def test_implicit_mx_and_connection_reuse(relay: RelayProcess, member: Member, sink: SmtpSink) -> None:
    before = sink.counters()
    ids = [send(relay, member, f"r{i}@nomx.example", f"e2e-reuse-{i}") for i in range(6)]
    for i in range(6):
        wait_for(lambda i=i: sink_has(sink, f"e2e-reuse-{i}"))
    after = sink.counters()
    assert after["mesg"] - before["mesg"] == 6
    assert after["sess"] - before["sess"] < 6, "connections were not reused"
    assert all(status(relay, member, m)["status"] == "sent" for m in ids)


def test_null_mx_bounces_at_once_with_a_dsn(relay: RelayProcess, member: Member, sink: SmtpSink) -> None:
    mid = send(relay, member, "nobody@nullmx.example", "e2e-nullmx")
    st = wait_for(lambda: (s := status(relay, member, mid))["status"] == "bounced" and s)
    assert "null MX" in st["lastReply"]
    [dsn] = wait_for(lambda: [m for m in sink.messages() if m.rcpts == (f"hello@{member.domain}",)
                              and b"nobody@nullmx.example" in m.data])
    assert dsn.mail_from == ""  # null reverse-path: a bounce is never bounced (RFC 5321 §4.5.5)
    report = email.message_from_bytes(dsn.data, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parsed = parse_dsn(dsn.data)
    [rcpt] = parsed.recipients
    assert rcpt.final_recipient == "nobody@nullmx.example" and rcpt.action == "failed"
    assert rcpt.status == "5.1.10" and "null MX" in (rcpt.diagnostic or "")
    assert b"Subject: e2e-nullmx" in dsn.data  # the original headers ride along
    assert b"Hello" not in dsn.data.split(b"Subject: e2e-nullmx", 1)[1]  # but not the body


def test_dns_servfail_defers(relay: RelayProcess, member: Member) -> None:
    mid = send(relay, member, "x@broken.example", "e2e-servfail")
    st = wait_for(lambda: (s := status(relay, member, mid))["status"] == "deferred" and s)
    assert st["nextAttemptAt"] is not None and st["attempts"] == 1
    queue = relay.admin("queue", "show", str(mid))
    assert queue["queued"]["recipients"][0]["state"] == "deferred"
    assert relay.admin("queue", "hold", str(mid))["changed"] == 1
    assert relay.admin("queue", "show", str(mid))["queued"]["recipients"][0]["state"] == "held"
    assert relay.admin("queue", "delete", str(mid))["changed"] == 1
    st = wait_for(lambda: (s := status(relay, member, mid))["status"] == "bounced" and s)
    assert "deleted by operator" in st["lastReply"]


def test_sigterm_mid_burst_then_restart_delivers_each_once(tmp_path: Path, tls_files: TLSFiles,
                                                           dns: KnotServer) -> None:
    # A slow MX (1 s before answering DATA) so SIGTERM lands with deliveries in flight and most still queued.
    sink = SmtpSink(tmp_path / "slow-sink", "-w", "1").start()
    relay = RelayProcess(base=tmp_path, tls=tls_files, extra_toml=delivery_toml(sink, dns, per_destination=10))
    member = Member("did:plc:burstaaaaaaaaaaaaaaaaaaa", "burst.example.org", "", "")
    member.key = relay.enroll(member.did, member.domain)["api_key"]
    relay.start()
    subjects = [f"e2e-burst-{i}" for i in range(80)]
    with httpx.Client(timeout=10) as client:
        for subject in subjects:
            r = client.post(f"{relay.http}/v1/send",
                            headers={"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did},
                            json={"from": f"b@{member.domain}", "to": "bulk@example.org", "subject": subject,
                                  "text": "x"})
            assert r.status_code == 200
    assert relay.stop(signal.SIGTERM) == 0
    delivered = {s for s in subjects if sink_has(sink, s)}
    log = SpoolLog.open_readonly(relay.spool_dir())
    queued = {dict(m.envelope.attrs)["subject"] for m in log.live()}
    assert delivered.isdisjoint(queued) and delivered | queued == set(subjects)
    assert queued and delivered, f"SIGTERM did not land mid-burst ({len(delivered)} delivered)"
    relay.start()
    wait_for(lambda: all(sink_has(sink, s) for s in subjects), timeout=60)
    relay.stop()
    counts = {s: len(sink_has(sink, s)) for s in subjects}
    sink.stop()
    assert set(counts.values()) == {1}, {s: n for s, n in counts.items() if n != 1}


def test_reply_to_member_domain_is_forwarded_with_srs(relay: RelayProcess, member: Member, sink: SmtpSink) -> None:
    store = open_store(f"sqlite:///{relay.state_dir / 'relay.db'}")
    try:
        store.set_forward_to(member.domain, "owner@example.org")
        # As if the owner had followed the confirmation link (tests/e2e/test_abuse.py follows a real one).
        store.confirm_forward_to(member.domain, "owner@example.org", time.time())
    finally:
        store.close()
    reply = (f"From: customer@example.org\r\nTo: hello@{member.domain}\r\nSubject: e2e-reply\r\n"
             "Message-ID: <reply-1@example.org>\r\n\r\nThanks!\r\n").encode()
    with smtplib.SMTP(*relay.inbound, timeout=10) as s:
        s.sendmail("customer@example.org", [f"hello@{member.domain}"], reply)
        code, text = s.mail("x@example.org")
        assert code == 250
        code, text = s.rcpt("victim@elsewhere.example")  # never an open relay
        assert code >= 550, text
    [got] = wait_for(lambda: sink_has(sink, "e2e-reply"))
    assert got.rcpts == ("owner@example.org",)
    assert got.mail_from.lower().startswith("srs0=") and got.mail_from.endswith("@relay.test")
    assert "example.org" in got.mail_from and "customer" in got.mail_from
