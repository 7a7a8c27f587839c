"""The SMTP service and send API as members meet them: real clients nobody here wrote (issue 18).

Postfix as a smarthost (``smtp_sasl_password_maps``, TLS ``encrypt``), msmtp, curl's SMTP (``-T`` of an
LF-only file), nodemailer current and 6.x (the one ``@atproto/pds`` pins), Python ``smtplib`` on 587
and ``SMTP_SSL`` on 465, against the real ``atmos serve``, delivering to Postfix's smtp-sink. The user
name forms that survive every client: the sending domain, the handle, the DID, and a DID the client
split at its first colon.
"""

from __future__ import annotations

import base64
import email
import json
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from email import policy
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import DID, DOMAIN, HANDLE, Member
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.peers.postfix import BouncingPostfix
from tests.peers.require import require
from tests.peers.smtpsink import SinkMessage, SmtpSink

CLIENTS = Path(__file__).resolve().parents[1] / "clients"


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path_factory.mktemp("sink")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles, sink: SmtpSink) -> Iterator[RelayProcess]:
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files,
                        extra_toml=f'[delivery]\nrelayhost = "[127.0.0.1]:{sink.port}"\n',
                        env={"ATMOS_LOG_LEVEL": "INFO"})
    proc.write_config()
    info = proc.enroll(DID, DOMAIN, HANDLE)
    proc.member = Member(DID, DOMAIN, HANDLE, info["api_key"])  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def delivered(sink: SmtpSink, subject: str, count: int = 1) -> list[SinkMessage]:
    line = re.compile(rb"^Subject: " + re.escape(subject.encode()) + rb"\r?$", re.MULTILINE)
    found: list[SinkMessage] = wait_for(
        lambda: (hits if len(hits := [m for m in sink.messages() if line.search(m.data)]) >= count else None))
    return found


def parsed(msg: SinkMessage) -> email.message.EmailMessage:
    out = email.message_from_bytes(msg.data.replace(b"\r\n", b"\n"), policy=policy.default)
    assert isinstance(out, email.message.EmailMessage)
    return out


def rfc5322(sender: str, to: str, subject: str, *, extra: str = "", eol: str = "\r\n") -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Message-ID: <{abs(hash(subject))}@t>",
             *([extra] if extra else []), "", "Hello from a real client.", ".leading dot line", ""]
    return eol.join(lines).encode()


def user_names(member: Member) -> dict[str, tuple[str, str]]:
    """(user, password) as each kind of client hands them to AUTH."""
    return {
        "domain": (member.domain, member.key),
        "handle": (member.handle, member.key),
        "did": (member.did, member.key),
        # Postfix, curl and nodemailer 6.x split "did:plc:...:key" at the first colon.
        "mangled-did": ("did", member.did.removeprefix("did:") + ":" + member.key),
    }


# ---- Python smtplib: 587 STARTTLS and 465 implicit TLS ---------------------------------------------


@pytest.mark.parametrize("form", ["domain", "handle", "did", "mangled-did"])
def test_smtplib_587_every_user_name_form(relay: RelayProcess, member: Member, sink: SmtpSink,
                                          client_ctx: ssl.SSLContext, form: str) -> None:
    user, password = user_names(member)[form]
    subject = f"smtplib-587-{form}"
    with smtplib.SMTP(*relay.submission, timeout=20) as s:
        s.starttls(context=client_ctx)
        s.login(user, password)
        s.sendmail(f"app@{member.domain}", ["r587@example.org"], rfc5322(f"app@{member.domain}", "r587@example.org",
                                                                         subject))
    (msg,) = delivered(sink, subject)
    assert msg.rcpts == ("r587@example.org",)


def test_smtplib_smtp_ssl_465(relay: RelayProcess, member: Member, sink: SmtpSink,
                              client_ctx: ssl.SSLContext) -> None:
    with smtplib.SMTP_SSL(*relay.submissions, context=client_ctx, timeout=20) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")  # RFC 8314 §3.3: already under TLS
        assert "PLAIN" in s.esmtp_features["auth"]
        s.login(member.domain, member.key)
        s.sendmail(f"app@{member.domain}", ["r465@example.org"], rfc5322(f"app@{member.domain}", "r465@example.org",
                                                                         "smtplib-465"))
    (msg,) = delivered(sink, "smtplib-465")
    received = parsed(msg).get_all("Received") or []
    ours = [r for r in received if "Atmosphere Relay" in r]
    assert ours and "with ESMTPSA" in ours[-1] and "using TLSv1" in ours[-1]  # RFC 3848, as Postfix writes it


def test_465_same_auth_policy_as_587(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    with smtplib.SMTP_SSL(*relay.submissions, context=client_ctx, timeout=20) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            s.login(member.domain, "not-the-key")
        assert bad.value.smtp_code == 535
    with smtplib.SMTP_SSL(*relay.submissions, context=client_ctx, timeout=20) as s:
        s.ehlo("client.test")
        code, _ = s.docmd("MAIL", f"FROM:<app@{member.domain}>")
        assert code == 530  # authentication required, as on 587
        s.login(member.domain, member.key)
        code, text = s.docmd("MAIL", "FROM:<ceo@bank.example>")
        assert code == 550 and b"not enrolled" in text


def test_plaintext_on_465_is_not_smtp(relay: RelayProcess) -> None:
    import socket
    with socket.create_connection(relay.submissions, timeout=10) as sock:
        sock.sendall(b"EHLO plain.test\r\n")
        sock.settimeout(10)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not data.startswith(b"220")  # no plaintext banner: a TLS handshake was expected


def test_bcc_removed_and_received_added(relay: RelayProcess, member: Member, sink: SmtpSink,
                                        client_ctx: ssl.SSLContext) -> None:
    data = rfc5322(f"app@{member.domain}", "to@example.org", "bcc-hygiene", extra="Bcc: secret@example.org")
    with smtplib.SMTP(*relay.submission, timeout=20) as s:
        s.starttls(context=client_ctx)
        s.login(member.domain, member.key)
        s.sendmail(f"app@{member.domain}", ["to@example.org", "secret@example.org"], data)
    for msg in delivered(sink, "bcc-hygiene", count=2):
        assert b"secret@example.org" not in msg.data.split(b"\r\n\r\n")[0].split(b"\n\n")[0]
        assert parsed(msg)["Bcc"] is None
        (trace,) = [r for r in parsed(msg).get_all("Received") or [] if "Atmosphere Relay" in r]
        assert trace.startswith("from ") and "[127.0.0.1]" in trace and "with ESMTPSA" in trace
        assert " for <" not in trace  # two recipients: neither is named to the other


# ---- curl, msmtp --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_curl_uploads_an_lf_only_file(relay: RelayProcess, member: Member, sink: SmtpSink, tls_files: TLSFiles,
                                      tmp_path: Path, scheme: str) -> None:
    curl = require("curl")
    subject = f"curl-{scheme}-lf"
    mail = tmp_path / "mail.txt"
    mail.write_bytes(rfc5322(f"app@{member.domain}", "curl@example.org", subject, eol="\n"))
    assert b"\r" not in mail.read_bytes()
    host, port = relay.submission if scheme == "smtp" else relay.submissions
    res = subprocess.run(
        [curl, "--silent", "--show-error", "--url", f"{scheme}://{host}:{port}", *(["--ssl-reqd"] if scheme == "smtp"
         else []), "--cacert", str(tls_files.ca_pem), "--user", f"{member.domain}:{member.key}",
         "--mail-from", f"app@{member.domain}", "--mail-rcpt", "curl@example.org", "-T", str(mail)],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    (msg,) = delivered(sink, subject)
    body = parsed(msg).get_content()
    assert "Hello from a real client." in body and "leading dot line" in body


def test_curl_user_did_split_at_first_colon(relay: RelayProcess, member: Member, sink: SmtpSink,
                                            tls_files: TLSFiles, tmp_path: Path) -> None:
    curl = require("curl")
    mail = tmp_path / "mail.txt"
    mail.write_bytes(rfc5322(f"app@{member.domain}", "curl@example.org", "curl-did"))
    res = subprocess.run(
        [curl, "--silent", "--show-error", "--url", f"smtp://{relay.submission[0]}:{relay.submission[1]}",
         "--ssl-reqd", "--cacert", str(tls_files.ca_pem), "--user", f"{member.did}:{member.key}",
         "--mail-from", f"app@{member.domain}", "--mail-rcpt", "curl@example.org", "-T", str(mail)],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    delivered(sink, "curl-did")


def test_msmtp(relay: RelayProcess, member: Member, sink: SmtpSink, tls_files: TLSFiles, tmp_path: Path) -> None:
    msmtp = require("msmtp")
    conf = tmp_path / "msmtprc"
    conf.write_text(
        "defaults\nauth on\ntls on\ntls_starttls on\n"
        f"tls_trust_file {tls_files.ca_pem}\nlogfile {tmp_path / 'msmtp.log'}\n\n"
        f"account relay\nhost {relay.submission[0]}\nport {relay.submission[1]}\n"
        f"from app@{member.domain}\nuser {member.domain}\npassword {member.key}\n")
    conf.chmod(0o600)
    res = subprocess.run([msmtp, "-C", str(conf), "-a", "relay", "msmtp@example.org"],
                         input=rfc5322(f"app@{member.domain}", "msmtp@example.org", "via-msmtp", eol="\n"),
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    delivered(sink, "via-msmtp")


# ---- nodemailer (current, and 6.x as inside @atproto/pds) --------------------------------------------


def nodemailer(module: str, transport: Any, ca: Path, mail: dict[str, Any]) -> dict[str, Any]:
    node = require("node")
    if not (CLIENTS / "node_modules" / module).is_dir():
        subprocess.run([str(CLIENTS / "install.sh")], check=True, timeout=300)
    res = subprocess.run([node, str(CLIENTS / "send.mjs"), module, json.dumps(
        {"transport": transport, "ca": str(ca), "mail": mail})], capture_output=True, text=True, timeout=60,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca)})
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("module", ["nodemailer", "nodemailer6"])
def test_nodemailer_smtp_url_with_did(relay: RelayProcess, member: Member, sink: SmtpSink, tls_files: TLSFiles,
                                      module: str) -> None:
    # The URL form PDS operators write into PDS_EMAIL_SMTP_URL; the DID's colons reach us split.
    url = f"smtp://{member.did}:{member.key}@{relay.submission[0]}:{relay.submission[1]}"
    subject = f"{module}-url-did"
    out = nodemailer(module, url, tls_files.ca_pem, {"from": f"App <app@{member.domain}>", "to": "n@example.org",
                                                     "subject": subject, "text": "hi"})
    assert out["ok"], out
    delivered(sink, subject)


@pytest.mark.parametrize("module", ["nodemailer", "nodemailer6"])
def test_nodemailer_secure_465(relay: RelayProcess, member: Member, sink: SmtpSink, tls_files: TLSFiles,
                               module: str) -> None:
    transport = {"host": relay.submissions[0], "port": relay.submissions[1], "secure": True,
                 "auth": {"user": member.domain, "pass": member.key}}
    subject = f"{module}-secure"
    out = nodemailer(module, transport, tls_files.ca_pem, {"from": f"app@{member.domain}", "to": "n@example.org",
                                                           "subject": subject, "text": "hi"})
    assert out["ok"], out
    delivered(sink, subject)


# ---- Postfix as a smarthost ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["domain", "did"])
def test_postfix_smarthost_with_sasl(relay: RelayProcess, member: Member, sink: SmtpSink, tls_files: TLSFiles,
                                     form: str) -> None:
    user = member.domain if form == "domain" else member.did  # the DID: Postfix splits it at the first colon
    postfix = BouncingPostfix({}, hostname="smarthost-client.test")
    passwd = postfix.base / "sasl_passwd"
    relayhost = f"[{relay.submission[0]}]:{relay.submission[1]}"
    ca = postfix.base / "ca.pem"
    postfix.relayhost = relayhost
    postfix.extra_main = (
        "smtp_sasl_auth_enable = yes\n"
        f"smtp_sasl_password_maps = texthash:{passwd}\nsmtp_sasl_security_options = noanonymous\n"
        f"smtp_tls_security_level = encrypt\nsmtp_tls_CAfile = {ca}\n")
    try:
        postfix.base.mkdir(parents=True, exist_ok=True)
        shutil.copy(tls_files.ca_pem, ca)
        ca.chmod(0o644)
        passwd.write_text(f"{relayhost} {user}:{member.key}\n")
        postfix.start()
        subject = f"postfix-smarthost-{form}"
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as s:
            s.sendmail(f"app@{member.domain}", ["pf@example.org"],
                       rfc5322(f"app@{member.domain}", "pf@example.org", subject))
        (msg,) = delivered(sink, subject, count=1)
        traces = parsed(msg).get_all("Received") or []
        assert any("with ESMTPSA" in t and "Atmosphere Relay" in t for t in traces)
        assert any("smarthost-client.test" in t for t in traces)  # Postfix's own trace field came along
    except (AssertionError, OSError, smtplib.SMTPException):
        print(postfix.maillog())
        raise
    finally:
        postfix.stop()


# ---- HTTP /v1/send: names, cc, bcc, attachments, tags, metadata, batch --------------------------------


def auth(member: Member) -> dict[str, str]:
    return {"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did}


def test_http_send_full_payload(relay: RelayProcess, member: Member, sink: SmtpSink) -> None:
    pdf = bytes(range(256)) * 64
    payload = {
        "from": f"Zoë from Example <app@{member.domain}>", "to": ["Ann <ann@example.org>"],
        "cc": ['"Doe, Bob" <bob@example.org>'], "bcc": ["hidden@example.org"],
        "replyTo": f"Support <help@{member.domain}>", "subject": "http-full", "text": "plain",
        "html": '<p>see <img src="cid:logo"></p>',
        "attachments": [{"filename": "report.pdf", "content": base64.b64encode(pdf).decode(),
                         "contentType": "application/pdf"},
                        {"filename": "logo.png", "content": base64.b64encode(b"PNG").decode(),
                         "contentType": "image/png", "contentId": "logo"}],
        "tags": ["welcome", "v2"], "metadata": {"user_id": "42"},
    }
    r = httpx.post(f"{relay.http}/v1/send", headers=auth(member), json=payload, timeout=20)
    assert r.status_code == 200, r.text
    assert sorted(a["recipient"] for a in r.json()["accepted"]) == ["ann@example.org", "bob@example.org",
                                                                     "hidden@example.org"]
    msgs = delivered(sink, "http-full", count=3)
    assert sorted(r for m in msgs for r in m.rcpts) == ["ann@example.org", "bob@example.org", "hidden@example.org"]
    for raw in msgs:
        msg = parsed(raw)
        assert b"hidden@example.org" not in raw.data.split(b"\n\n")[0].split(b"\r\n\r\n")[0]
        assert msg["From"].addresses[0].display_name == "Zoë from Example"
        assert msg["Cc"].addresses[0].display_name == "Doe, Bob"
        assert msg.get_content_type() == "multipart/mixed"
        related, report = list(msg.iter_parts())
        assert related.get_content_type() == "multipart/related"
        assert report.get_content() == pdf
    mid = r.json()["accepted"][0]["messageId"]
    status = httpx.get(f"{relay.http}/v1/messages/{mid}", headers=auth(member), timeout=10).json()
    assert status["tags"] == ["welcome", "v2"] and status["metadata"] == {"user_id": "42"}


def test_http_attachments_over_limit_413(relay: RelayProcess, member: Member) -> None:
    big = base64.b64encode(b"\0" * (10 * 1024 * 1024 + 1)).decode()
    r = httpx.post(f"{relay.http}/v1/send", headers=auth(member), timeout=60, json={
        "from": f"app@{member.domain}", "to": "a@example.org", "subject": "big", "text": "x",
        "attachments": [{"filename": "big.bin", "content": big}]})
    assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_http_batch(relay: RelayProcess, member: Member, sink: SmtpSink) -> None:
    good = {"from": f"app@{member.domain}", "to": "b1@example.org", "subject": "batch-1", "text": "x"}
    bad = {"from": f"app@{member.domain}", "to": "b2@example.org", "subject": "batch-2", "text": "x", "nope": 1}
    r = httpx.post(f"{relay.http}/v1/send/batch", headers=auth(member), json=[good, bad], timeout=20)
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["status"] == 200 and first["accepted"][0]["recipient"] == "b1@example.org"
    assert second["status"] == 400 and second["code"] == "INVALID_REQUEST" and "nope" in second["error"]
    delivered(sink, "batch-1")
    too_many = httpx.post(f"{relay.http}/v1/send/batch", headers=auth(member), json=[good] * 101, timeout=20)
    assert too_many.status_code == 400 and "at most 100" in too_many.json()["error"]


# ---- default category, refusals -----------------------------------------------------------------------


def test_default_category_makes_mail_transactional(relay: RelayProcess, member: Member, sink: SmtpSink,
                                                   client_ctx: ssl.SSLContext) -> None:
    def send(subject: str) -> SinkMessage:
        with smtplib.SMTP(*relay.submission, timeout=20) as s:
            s.starttls(context=client_ctx)
            s.login(member.domain, member.key)
            s.sendmail(f"app@{member.domain}", ["cat@example.org"],
                       rfc5322(f"app@{member.domain}", "cat@example.org", subject))
        (msg,) = delivered(sink, subject)
        return msg

    assert parsed(send("category-bulk"))["List-Unsubscribe"] is not None
    r = httpx.put(f"{relay.http}/member/category", headers=auth(member), timeout=10,
                  json={"domain": member.domain, "category": "transactional"})
    assert r.status_code == 200 and r.json() == {"domain": member.domain, "category": "transactional",
                                                 "transactional": True}
    try:
        msg = parsed(send("category-default"))
        assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
        bad = httpx.put(f"{relay.http}/member/category", headers=auth(member), timeout=10,
                        json={"domain": "someone-else.example", "category": "transactional"})
        assert bad.status_code == 403 and bad.json()["code"] == "DOMAIN_MISMATCH"
        bad = httpx.put(f"{relay.http}/member/category", headers=auth(member), timeout=10,
                        json={"domain": member.domain, "category": "not ok!"})
        assert bad.status_code == 400 and bad.json()["error"].startswith("category:")
    finally:
        httpx.put(f"{relay.http}/member/category", headers=auth(member), timeout=10,
                  json={"domain": member.domain, "category": ""})


def test_refusals_are_logged_and_counted(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    def count(reason: str) -> float:
        text = httpx.get(f"{relay.http}/metrics", timeout=10).text
        m = re.search(rf'^atmos_smtp_refusals_total{{listener="submission",reason="{reason}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    before = count("auth_failed"), count("domain_mismatch")
    with smtplib.SMTP(*relay.submission, timeout=20) as s:
        s.starttls(context=client_ctx)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(member.domain, "wrong-key")
        s.login(member.domain, member.key)
        assert s.docmd("MAIL", "FROM:<x@not-mine.example>")[0] == 550
    # smtplib tries PLAIN, then LOGIN: each refused AUTH counts
    assert wait_for(lambda: count("auth_failed") > before[0] and count("domain_mismatch") == before[1] + 1)
    log = "".join(relay.output)
    assert re.search(r"refused credentials on submission from 127\.0\.0\.1 did=-: 535 5\.7\.8", log), log[-3000:]
    assert re.search(rf"refused mailfrom on submission from 127\.0\.0\.1 did={re.escape(member.did)}: 550", log)


def test_port_465_reported_in_ready_line_run_json_and_banner(relay: RelayProcess) -> None:
    host, port = relay.submissions
    assert port not in (0, relay.submission[1])
    run = json.loads((relay.state_dir / "run.json").read_text())
    assert run["submissions"] == [f"{host}:{port}"]
    assert any(line.startswith(f"  SMTP submissions  {host}:{port}") for line in relay.output)
