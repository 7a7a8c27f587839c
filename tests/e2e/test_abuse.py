"""Only a verified, accountable member can spend the shared IP's reputation (issue 15), end to end:
a real ``atmos serve`` process, Knot for every DNS answer, Postfix smtp-sink as every recipient MTA.

- ARF reports: believed only when DKIM-signed (dkimpy, key published in Knot) by a configured
  feedback-loop domain, attributed only through the relay's own VERP address, counted once;
  a forged report naming the member by X-Atmos-Member-Did changes nothing.
- Forwarding: a forward-to works only after its confirmation link, mailed by the relay itself to
  the sink, is followed; forwarded replies carry an ARC set that verifies against Knot.
- Delivery never reaches non-global addresses: an MX of 0.0.0.0 / :: / link-local bounces, and
  without the test-only setting even the loopback sink is refused.
- A second From: beyond the header limit is refused 552 5.3.4; a regenerated key ends old sessions
  (421); the state dir is 0700 and relay.db 0600.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import dkim
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.mail.dkimkeys import rsa_txt, zone_txt
from tests.e2e.conftest import DID, DOMAIN, HANDLE, Member
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.e2e.test_delivery import knot_txt
from tests.peers.knot import KnotServer
from tests.peers.smtpsink import SinkMessage, SmtpSink

FBL_DOMAIN = "fbl.isp.example"
OTHER_SIGNER = "not-a-loop.example"
SENDER_DOMAIN = "sender.example"
OWNER = "owner@example.org"


class Signer:
    """An RSA DKIM key for a domain, published in Knot, used by dkimpy to sign mail."""

    def __init__(self, domain: str, selector: str = "s1") -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.domain, self.selector = domain, selector
        self.pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
        self.record = f"{selector}._domainkey 300 TXT {zone_txt(rsa_txt(key.public_key()))}"

    def sign(self, data: bytes) -> bytes:
        sig: bytes = dkim.sign(data, self.selector.encode(), self.domain.encode(), self.pem,
                               include_headers=[b"from", b"to", b"subject", b"message-id", b"content-type"])
        return sig + data


SIGNERS = {d: Signer(d) for d in (FBL_DOMAIN, OTHER_SIGNER, SENDER_DOMAIN)}
MX = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"]


def zones() -> dict[str, list[str]]:
    return {
        "example.org": MX,
        DOMAIN: MX,
        **{d: [s.record] for d, s in SIGNERS.items()},
        # MX hosts no stranger may point the relay at.
        "zero.example": ["@ 300 MX 10 mx", "mx 300 A 0.0.0.0"],
        "v6zero.example": ["@ 300 MX 10 mx", "mx 300 AAAA ::"],
        "metadata.example": ["@ 300 MX 10 mx", "mx 300 A 169.254.169.254"],
        "private.example": ["@ 300 MX 10 mx", "mx 300 A 10.0.0.1", "mx 300 AAAA fd00::25"],
        "mapped.example": ["@ 300 MX 10 mx", "mx 300 AAAA ::ffff:10.0.0.1"],
    }


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path_factory.mktemp("sink")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with KnotServer(tmp_path_factory.mktemp("knot"), zones()) as server:
        yield server


def relay_toml(sink: SmtpSink, dns: KnotServer, *, loopback: bool = True) -> str:
    ns = dns.nameservers[0]
    return (f'[delivery]\nport = {sink.port}\nnameservers = ["{ns}"]\nretry_schedule = [0.2]\n'
            f'[inbound]\nfbl_sources = ["{FBL_DOMAIN}"]\n'
            f'[testing]\nallow_loopback_peers = {"true" if loopback else "false"}\n')


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles, sink: SmtpSink,
          dns: KnotServer) -> Iterator[RelayProcess]:
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files, extra_toml=relay_toml(sink, dns))
    info = proc.enroll(DID, DOMAIN, HANDLE)
    operator_keys = proc.admin("dkim", "show")["keys"]
    dns.update("relay.test", [f"{k['name'].removesuffix('.relay.test')} 300 TXT {zone_txt(k['value'])}"
                              for k in operator_keys])
    proc.member = Member(DID, DOMAIN, HANDLE, info["api_key"])  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def auth(member: Member) -> dict[str, str]:
    return {"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did}


def send(relay: RelayProcess, member: Member, to: str, subject: str) -> int:
    r = httpx.post(f"{relay.http}/v1/send", headers=auth(member), timeout=10,
                   json={"from": f"hello@{member.domain}", "to": to, "subject": subject, "text": "Hello",
                         "category": "newsletter"})
    assert r.status_code == 200, r.text
    mid: int = r.json()["accepted"][0]["messageId"]
    return mid


def message_status(relay: RelayProcess, member: Member, mid: int) -> dict[str, Any]:
    r = httpx.get(f"{relay.http}/v1/messages/{mid}", headers=auth(member), timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def delivered(sink: SmtpSink, predicate: Callable[[SinkMessage], bool], what: str) -> SinkMessage:
    found: SinkMessage = wait_for(lambda: next((m for m in sink.messages() if predicate(m)), None), what=what)
    return found


def inbound(relay: RelayProcess, mail_from: str, rcpts: list[str], data: bytes) -> tuple[int, str]:
    """One transaction on the relay's port-25 listener; the first failing reply or the final one."""
    with smtplib.SMTP(*relay.inbound, local_hostname="mx.isp.example", timeout=20) as client:
        client.ehlo()
        code, msg = client.docmd("MAIL", f"FROM:<{mail_from}>")
        assert code == 250
        for rcpt in rcpts:
            code, msg = client.docmd("RCPT", f"TO:<{rcpt}>")
            if code != 250:
                return code, msg.decode()
        code, msg = client.data(data)
        return code, msg.decode()


def standing(relay: RelayProcess, member: Member) -> dict[str, Any]:
    r = httpx.get(f"{relay.http}/member/status", headers=auth(member), timeout=10)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def suppressed(relay: RelayProcess, member: Member) -> set[str]:
    r = httpx.get(f"{relay.http}/v1/suppressions", headers=auth(member), timeout=10)
    return {s["recipient"] for s in r.json()["suppressions"]}


# ---- ARF -------------------------------------------------------------------------------------------


def arf(enclosed: bytes, *, rcpt: str, reporter: str = FBL_DOMAIN) -> bytes:
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = f"Feedback Loop <fbl@{reporter}>"
    report["To"] = "fbl@relay.test"
    report["Subject"] = "Abuse report"
    report["Message-ID"] = f"<arf-{time.monotonic_ns()}@{reporter}>"
    report.attach(MIMEText("This is an abuse report.\n"))
    feedback = MIMEBase("message", "feedback-report")
    feedback.set_payload(f"Feedback-Type: abuse\r\nUser-Agent: Loop/1.0\r\nVersion: 1\r\n"
                         f"Original-Rcpt-To: <{rcpt}>\r\n")
    report.attach(feedback)
    report.attach(MIMEMessage(email.message_from_bytes(enclosed, policy=email.policy.SMTP)))
    return report.as_bytes(policy=email.policy.SMTP)


def test_arf_reports_count_only_from_fbl_sources_and_only_through_verp(
        relay: RelayProcess, member: Member, sink: SmtpSink, dns: KnotServer) -> None:
    mid = send(relay, member, "carol@example.org", "newsletter for carol")
    got = delivered(sink, lambda m: m.rcpts == ("carol@example.org",), "the newsletter at the sink")
    assert got.mail_from.startswith("bounces+")  # the VERP envelope sender the report will carry back
    # The receiving mailbox adds Return-Path at final delivery; the provider encloses the message.
    enclosed = f"Return-Path: <{got.mail_from}>\r\n".encode() + got.data.replace(b"\n", b"\r\n").replace(
        b"\r\r\n", b"\r\n")
    before = standing(relay, member)["standing"]["complaints"]

    # 1. Forged, unsigned, naming the member by X-Atmos-Member-Did and a victim as the complainer.
    forged = ("From: x@attacker.example\r\nTo: victim@example.net\r\nSubject: hi\r\n"
              f"Message-ID: <f@attacker.example>\r\nX-Atmos-Member-Did: {member.did}\r\n\r\nhi\r\n").encode()
    assert inbound(relay, "", ["fbl@relay.test"], arf(forged, rcpt="victim@example.net"))[0] == 250
    # 2. The real message, but signed by a domain that is not a configured feedback loop.
    not_a_loop = SIGNERS[OTHER_SIGNER].sign(arf(enclosed, rcpt="carol@example.org", reporter=OTHER_SIGNER))
    assert inbound(relay, "", ["fbl@relay.test"], not_a_loop)[0] == 250
    # 3. The real message, unsigned: the report's From names the loop, but nothing proves it.
    assert inbound(relay, "", ["fbl@relay.test"], arf(enclosed, rcpt="carol@example.org"))[0] == 250
    time.sleep(0.5)  # what would have been counted is counted synchronously before the 250
    assert standing(relay, member)["standing"]["complaints"] == before
    assert "carol@example.org" not in suppressed(relay, member)
    assert "victim@example.net" not in suppressed(relay, member)

    # 4. Genuine: DKIM-signed by the loop's domain (verified by dkimpy against Knot), VERP-attributed.
    genuine = SIGNERS[FBL_DOMAIN].sign(arf(enclosed, rcpt="someone-else@example.net"))
    assert dkim.verify(genuine, dnsfunc=knot_txt(dns))  # the same check an outside verifier makes
    for _ in range(2):  # a repeat of the same report counts once
        assert inbound(relay, "", ["fbl@relay.test"], genuine)[0] == 250
    wait_for(lambda: standing(relay, member)["standing"]["complaints"] == before + 1, what="one complaint")
    time.sleep(0.3)
    assert standing(relay, member)["standing"]["complaints"] == before + 1
    # The complainer is the VERP recipient, not whoever the report's Original-Rcpt-To names.
    assert "carol@example.org" in suppressed(relay, member)
    assert "someone-else@example.net" not in suppressed(relay, member)
    assert message_status(relay, member, mid)["recipient"] == "carol@example.org"
    assert standing(relay, member)["status"] == "active"  # one complaint never suspends (min_complaints)
    # The three reports nobody could be held to are the operator's to read.
    kept = relay.admin("reports")
    reasons = " | ".join(r["reason"] for r in kept)
    assert len(kept) >= 3 and "inbound.fbl_sources" in reasons, reasons


# ---- forwarding ------------------------------------------------------------------------------------


REPLY = (b"From: Bob <bob@sender.example>\r\nTo: Alice <alice@" + DOMAIN.encode() + b">\r\n"
         b"Subject: Re: hello\r\nMessage-ID: <reply-1@sender.example>\r\n"
         b"Authentication-Results: relay.test; dkim=pass header.d=forged.example\r\n\r\nThanks!\r\n")


def test_forward_to_needs_the_confirmation_link_and_forwards_arc_sealed(
        relay: RelayProcess, member: Member, sink: SmtpSink, dns: KnotServer) -> None:
    r = httpx.put(f"{relay.http}/member/forward-to", headers=auth(member), timeout=10,
                  json={"domain": DOMAIN, "forward_to": OWNER})
    assert r.status_code == 200 and r.json()["confirmation_sent"] is True and r.json()["confirmed"] is False
    signed_reply = SIGNERS[SENDER_DOMAIN].sign(REPLY)
    # Until the owner follows the link, the member domain forwards nothing.
    assert inbound(relay, "bob@sender.example", [f"alice@{DOMAIN}"], signed_reply) == (
        550, "5.1.1 address not available")

    mail = delivered(sink, lambda m: m.rcpts == (OWNER,) and b"Confirm forwarding" in m.data, "the confirmation mail")
    [link] = re.findall(rb"(http://\S+/forward-to/confirm/\S+)", mail.data)
    url = link.decode()
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and "Confirm forwarding" in page.text  # a GET (link scanners) changes nothing
    assert inbound(relay, "bob@sender.example", [f"alice@{DOMAIN}"], signed_reply)[0] == 550
    done = httpx.post(url, timeout=10)
    assert done.status_code == 200 and "Forwarding confirmed" in done.text
    assert httpx.get(url.rsplit("/", 1)[0] + "/forged.token", timeout=10).status_code == 404

    code, _ = inbound(relay, "bob@sender.example", [f"alice@{DOMAIN}"], signed_reply)
    assert code == 250
    fwd = delivered(sink, lambda m: m.rcpts == (OWNER,) and b"Thanks!" in m.data, "the forwarded reply")
    assert fwd.mail_from.startswith("SRS0=") and fwd.mail_from.endswith("@relay.test")
    data = fwd.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"ARC-Seal: i=1;" in head and b"ARC-Message-Signature: i=1;" in head
    assert b"ARC-Authentication-Results: i=1; relay.test;" in head
    assert b"dkim=pass header.d=sender.example" in head
    assert b"forged.example" not in head  # an Authentication-Results claiming to be ours is dropped
    assert not re.search(rb"(?im)^DKIM-Signature:[^\r]*d=relay\.test", head)  # not presented as ours
    cv, results, reason = dkim.arc_verify(data, dnsfunc=knot_txt(dns))
    assert cv == dkim.CV_Pass, (results, reason)
    # The original author's signature survived forwarding.
    assert dkim.verify(data, dnsfunc=knot_txt(dns))


# ---- delivery to non-global addresses ----------------------------------------------------------------


@pytest.mark.parametrize(("domain", "shown"), [
    ("zero.example", "0.0.0.0 is unspecified"),
    ("v6zero.example", ":: is unspecified"),
    ("metadata.example", "169.254.169.254 is link-local"),
    ("private.example", "10.0.0.1 is private"),
    ("mapped.example", "::ffff:10.0.0.1 is private (carries 10.0.0.1)"),
])
def test_mx_on_a_non_global_address_bounces(relay: RelayProcess, member: Member, domain: str, shown: str) -> None:
    mid = send(relay, member, f"someone@{domain}", f"to {domain}")
    final = wait_for(lambda: (s := message_status(relay, member, mid))["status"] == "bounced" and s, what="bounced")
    assert "no MX host has a globally routable address" in final["lastReply"] and shown in final["lastReply"]


def test_loopback_is_refused_without_the_test_setting(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles,
                                                      sink: SmtpSink, dns: KnotServer) -> None:
    proc = RelayProcess(base=tmp_path_factory.mktemp("strict"), tls=tls_files,
                        extra_toml=relay_toml(sink, dns, loopback=False))
    info = proc.enroll(DID, DOMAIN, HANDLE)
    proc.start()
    try:
        m = Member(DID, DOMAIN, HANDLE, info["api_key"])
        mid = send(proc, m, "dave@example.org", "to the loopback sink")
        final = wait_for(lambda: (s := message_status(proc, m, mid))["status"] == "bounced" and s, what="bounced")
        assert "127.0.0.1 is loopback" in final["lastReply"]
        assert all(x.rcpts != ("dave@example.org",) for x in sink.messages())  # never connected
        # Webhooks too: http:// is production-refused, and so is an https URL on a private address.
        for url in ("http://127.0.0.1:9/hook", "https://10.1.2.3/hook", "https://[::ffff:127.0.0.1]/"):
            r = httpx.put(f"{proc.http}/member/webhook", headers=auth(m), json={"url": url}, timeout=10)
            assert r.status_code == 400, (url, r.text)
    finally:
        proc.stop()


# ---- header section, key regeneration, file modes -----------------------------------------------------


def submission(relay: RelayProcess, tls: TLSFiles) -> smtplib.SMTP:
    client = smtplib.SMTP(*relay.submission, local_hostname="client.test", timeout=20)
    client.starttls(context=ssl.create_default_context(cafile=str(tls.ca_pem)))
    return client


def test_second_from_after_the_header_limit_is_refused(relay: RelayProcess, member: Member,
                                                       tls_files: TLSFiles) -> None:
    padding = "".join(f"X-Pad-{i}: {'p' * 900}\r\n" for i in range(300))  # ~270 KiB, lines < 1000
    data = (f"From: a@{DOMAIN}\r\nTo: x@example.org\r\nSubject: pad\r\n{padding}From: ceo@victim.example\r\n\r\n"
            "hi\r\n").encode()
    with submission(relay, tls_files) as client:
        client.login(member.did, member.key)
        client.mail(f"a@{DOMAIN}")
        client.rcpt("x@example.org")
        code, msg = client.data(data)
    assert (code, msg.decode().split(" ", 1)[0]) == (552, "5.3.4"), msg


def test_http_send_with_an_oversized_header_section_is_400(relay: RelayProcess, member: Member) -> None:
    headers = {f"X-Pad-{i}": "p" * 900 for i in range(300)}
    r = httpx.post(f"{relay.http}/v1/send", headers=auth(member), timeout=10, json={
        "from": f"a@{DOMAIN}", "to": "x@example.org", "subject": "pad", "text": "hi", "headers": headers})
    assert (r.status_code, r.json()["code"]) == (400, "HEADER_TOO_LARGE"), r.text
    assert "limits.header_size" in r.json()["error"]


def test_regenerating_the_key_ends_sessions_that_used_the_old_one(relay: RelayProcess, member: Member,
                                                                  tls_files: TLSFiles) -> None:
    client = submission(relay, tls_files)
    try:
        client.login(member.did, member.key)
        assert client.mail(f"a@{DOMAIN}")[0] == 250
        client.rset()
        fresh = relay.admin("enroll", "--did", member.did, "--domain", member.domain, "--skip-dns", "--new-key")
        # MAIL FROM re-reads the stored key once its last read is over 1 s old (KEY_RECHECK): within
        # about a second the open session ends with 421, and no message is accepted meanwhile.
        deadline = time.monotonic() + 5
        while True:
            code, msg = client.mail(f"a@{DOMAIN}")
            if code != 250 or time.monotonic() > deadline:
                break
            client.rset()
            time.sleep(0.1)
        assert (code, msg.decode().split(" ", 1)[0]) == (421, "4.7.0"), msg
    finally:
        client.close()
    member.key = fresh["api_key"]  # the rest of the module uses the new key
    with submission(relay, tls_files) as again:
        again.login(member.did, member.key)
        assert again.mail(f"a@{DOMAIN}")[0] == 250


def test_webhook_secrets_are_sealed_at_rest(relay: RelayProcess, member: Member) -> None:
    import sqlite3

    r = httpx.put(f"{relay.http}/member/webhook", headers=auth(member), json={"url": "https://hooks.example/x"},
                  timeout=10)
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    db = sqlite3.connect(f"file:{relay.state_dir / 'relay.db'}?mode=ro", uri=True)
    try:
        [(stored,)] = db.execute("SELECT secret FROM webhooks WHERE did = ?", (member.did,)).fetchall()
    finally:
        db.close()
    assert stored.startswith("sealed:v1:") and secret not in stored and secret.startswith("whsec_")
    httpx.delete(f"{relay.http}/member/webhook", headers=auth(member), timeout=10)


def test_state_dir_and_database_are_private(relay: RelayProcess) -> None:
    assert stat.S_IMODE(relay.state_dir.stat().st_mode) == 0o700
    for name in ("relay.db", "relay.db-wal", "relay.db-shm"):
        path = relay.state_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert (relay.state_dir / "relay.db").exists()


def test_a_squatted_domain_can_still_be_claimed_and_the_operator_can_release_it(relay: RelayProcess) -> None:
    squatter, owner = "did:plc:squat" + "s" * 19, "did:plc:owner" + "o" * 19
    first = relay.admin("enroll", "--did", squatter, "--domain", "squat.example")
    assert first["state"] == "pending"
    # Before: "already enrolled by another member" forever. Now a competing claim with its own token.
    second = relay.admin("enroll", "--did", owner, "--domain", "squat.example")
    assert second["state"] == "pending" and second["challenge"]["value"] != first["challenge"]["value"]
    released = relay.admin("domain", "release", "squat.example")
    assert sorted(r["did"] for r in released["released"]) == sorted([squatter, owner])
    again = relay.admin("domain", "release", "squat.example", check=False)
    assert again.returncode != 0 and "not enrolled or claimed" in (again.stderr + again.stdout)
    # The operator vouching (--skip-dns) takes a domain from a pending squatter at once.
    relay.admin("enroll", "--did", squatter, "--domain", "squat.example")
    taken = relay.admin("enroll", "--did", owner, "--domain", "squat.example", "--skip-dns")
    assert taken["state"] == "verified"


def test_confirmation_mails_are_limited_per_member(relay: RelayProcess, member: Member) -> None:
    """The relay mails an address the member chose: a member cannot turn that into a mail bomb."""
    codes = []
    for i in range(7):
        r = httpx.put(f"{relay.http}/member/forward-to", headers=auth(member), timeout=10,
                      json={"domain": DOMAIN, "forward_to": f"target{i}@example.net"})
        codes.append(r.status_code)
    assert 429 in codes and codes.count(200) <= 5, codes
    last = httpx.put(f"{relay.http}/member/forward-to", headers=auth(member), timeout=10,
                     json={"domain": DOMAIN, "forward_to": "target9@example.net"})
    assert (last.status_code, last.json()["code"]) == (429, "RATE_LIMITED")


def test_a_submitted_body_that_embeds_spool_records_never_becomes_one(
        tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> None:
    """Over SMTP a member submits a body carrying well-formed spool records (old CRC format and new
    format under a guessed key), each queueing mail as another DID; the record around it is damaged
    (as a torn write would) and the relay restarts: recovery never picks up what the member wrote."""
    import os
    import signal

    from spool import Envelope
    from spool.record import RecordKey, draft_message, seal_message
    from tests.spool.test_forgery import VICTIM, legacy_record

    proc = RelayProcess(base=tmp_path_factory.mktemp("forge"), tls=tls_files)  # mail stays queued (closed port)
    info = proc.enroll(DID, DOMAIN, HANDLE)
    proc.start()
    m = Member(DID, DOMAIN, HANDLE, info["api_key"])
    planted_env = Envelope(mail_from="ceo@victim.example", rcpts=("target@evil.example",), did=VICTIM, attrs={},
                           arrival=1.0)
    v2 = draft_message(RecordKey(os.urandom(32)), planted_env, b"Subject: forged\r\n\r\nhi\r\n")
    header, suffix = seal_message(v2, 990_000)
    planted = legacy_record(planted_env, b"Subject: forged\r\n\r\nhi\r\n", 991_000) + header + v2.prefix + \
        v2.data + suffix
    body = (f"From: a@{DOMAIN}\r\nTo: x@example.org\r\nSubject: carrier\r\n\r\n").encode() + planted + b"\r\n"
    try:
        with submission(proc, tls_files) as client:
            client.login(m.did, m.key)
            client.sendmail(f"a@{DOMAIN}", ["x@example.org"], body)
            client.sendmail(f"a@{DOMAIN}", ["y@example.org"], b"From: a@" + DOMAIN.encode() + b"\r\n\r\nafter\r\n")
    finally:
        proc.stop(signal.SIGKILL)
    spool_dir = proc.spool_dir()
    assert stat.S_IMODE((spool_dir / "record.key").stat().st_mode) == 0o600
    [seg] = sorted(spool_dir.glob("seg-*.log"))
    blob = bytearray(seg.read_bytes())
    at = blob.index(b"Subject: carrier")
    start = blob.rindex(b"\xe5ASQ", 0, at)
    blob[start] ^= 0xFF  # the carrier's header no longer parses: recovery must resync past it
    seg.write_bytes(bytes(blob))
    proc.start()
    try:
        queued = proc.admin("queue", "list")
        assert [q["recipients"][0]["address"] for q in queued] == ["y@example.org"]
        assert all(q["did"] != VICTIM for q in queued)
        assert list((spool_dir / "quarantine").glob("*.bin"))  # the damaged range is kept, not dropped
    finally:
        proc.stop()
