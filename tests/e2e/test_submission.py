"""SMTP submission through the real relay process, with stdlib smtplib and swaks as clients."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import subprocess

import httpx
import pytest

from relay.store import open_store
from tests.e2e.conftest import Member, message
from tests.e2e.relayproc import RelayProcess
from tests.peers.require import require

EXTRA_TOML = "[limits]\nmessage_size = 65536\nrecipients_per_message = 5\n"


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def connect(relay: RelayProcess, ctx: ssl.SSLContext, *, tls: bool = True) -> smtplib.SMTP:
    s = smtplib.SMTP(*relay.submission, timeout=10)
    s.ehlo("client.test")
    if tls:
        s.starttls(context=ctx)
        s.ehlo("client.test")
    return s


def test_ehlo_advertises_extensions(relay: RelayProcess, client_ctx: ssl.SSLContext) -> None:
    s = smtplib.SMTP(*relay.submission, timeout=10)
    code, _ = s.ehlo("client.test")
    assert code == 250
    for ext in ("starttls", "pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "size"):
        assert s.has_extn(ext), ext
    assert not s.has_extn("auth"), "AUTH must not be offered before STARTTLS"
    s.starttls(context=client_ctx)
    s.ehlo("client.test")
    assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
    assert not s.has_extn("starttls")
    s.quit()


def test_auth_before_starttls_is_530(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx, tls=False)
    code, text = s.docmd("AUTH", "PLAIN AGRpZAB4")
    assert code == 530 and b"5.7.0" in text and b"STARTTLS" in text
    s.close()


def test_send_with_did_plain_is_queued(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    data = message(f"hello@{member.domain}", "rcpt@example.org", subject="plain-did")
    s.mail(f"hello@{member.domain}")
    s.rcpt("rcpt@example.org")
    code, text = s.data(data)
    assert code == 250, text
    ids = [int(i) for i in text.decode().rsplit(" ", 1)[1].split(",")]
    s.quit()
    r = httpx.get(f"{relay.http}/v1/messages/{ids[0]}",
                  headers={"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did})
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("accepted", "deferred") and r.json()["recipient"] == "rcpt@example.org"
    queue = relay.admin("queue", "list")
    assert any(q["queue_id"] == ids[0] for q in queue)


def test_login_with_handle_and_auth_login(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.user, s.password = member.handle, member.key
    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235
    s.sendmail(f"a@{member.domain}", ["x@example.org", "y@example.org"],
               message(f"a@{member.domain}", "x@example.org", subject="login-handle"))
    s.quit()


@pytest.mark.parametrize("user", ["did:plc:e2eaaaaaaaaaaaaaaaaaaaaa", "alice.example.com", "nobody.example"])
def test_bad_key_is_535(relay: RelayProcess, client_ctx: ssl.SSLContext, user: str) -> None:
    s = connect(relay, client_ctx)
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        s.login(user, "atmos_wrong")
    assert err.value.smtp_code == 535 and b"5.7.8" in err.value.smtp_error
    s.close()


def test_mail_before_auth_is_refused(relay: RelayProcess, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    code, text = s.mail("a@mail.example.com")
    assert code == 530 and b"5.7.0" in text
    s.close()


def test_foreign_envelope_domain_is_550_510(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    code, text = s.mail("ceo@bank.example")
    assert code == 550 and b"5.1.0" in text and b"bank.example" in text
    s.close()


def test_foreign_header_from_is_550_510(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    s.mail(f"a@{member.domain}")
    s.rcpt("x@example.org")
    code, text = s.data(message("ceo@bank.example", "x@example.org"))
    assert code == 550 and b"5.1.0" in text
    s.close()


def test_too_big_is_552_after_dot(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    s.mail(f"a@{member.domain}")
    s.rcpt("x@example.org")
    code, text = s.data(message(f"a@{member.domain}", "x@example.org", body="x" * 900 + "\r\n") * 80)
    assert code == 552 and b"5.3.4" in text
    code, _ = s.noop()  # the session survives and can go on
    assert code == 250
    s.quit()


def test_too_many_recipients(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    s.mail(f"a@{member.domain}")
    codes = [s.rcpt(f"r{i}@example.org")[0] for i in range(6)]
    assert codes[:5] == [250] * 5 and codes[5] == 452
    s.close()


def test_suppressed_recipient_is_550_571(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    store = open_store(f"sqlite:///{relay.state_dir / 'relay.db'}")
    try:
        store.add_suppression(member.did, "gone@example.org", "unsubscribed")
    finally:
        store.close()
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    sender = f"a@{member.domain}"
    # Only a suppressed recipient: refused after DATA, once the category is known.
    s.mail(sender)
    s.rcpt("gone@example.org")
    code, text = s.data(message(sender, "gone@example.org", subject="bulk-1"))
    assert code == 550 and b"5.7.1" in text and b"suppressed recipient" in text
    # With another recipient: accepted for that one, the suppressed one named in the reply.
    s.mail(sender)
    s.rcpt("gone@example.org")
    s.rcpt("fine@example.org")
    code, text = s.data(message(sender, "fine@example.org", subject="bulk-2"))
    assert code == 250 and b"not sent to suppressed gone@example.org" in text
    assert len(text.split(b"queued as ")[1].split(b";")[0].split(b",")) == 1
    # Transactional mail still reaches the suppressed recipient.
    s.mail(sender)
    s.rcpt("gone@example.org")
    reset = message(sender, "gone@example.org", subject="reset").replace(
        b"Subject: reset", b"Subject: reset\r\nX-Atmos-Category: password-reset")
    code, text = s.data(reset)
    assert code == 250 and b"suppressed" not in text
    s.close()


def test_bare_lf_smuggling_stays_text(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    s.mail(f"a@{member.domain}")
    s.rcpt("x@example.org")
    assert s.docmd("DATA")[0] == 354
    body = message(f"a@{member.domain}", "x@example.org", subject="smuggle")
    smuggled = b"\n.\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@example.org>\r\nDATA\r\nevil\r\n"
    s.send(body + smuggled + b"\r\n.\r\n")
    code, text = s.getreply()
    assert code == 250, text  # one message (bare LFs normalized), ended only by the real CRLF.CRLF
    code, _ = s.noop()
    assert code == 250  # the smuggled commands were never executed as commands
    s.close()
    queue = relay.admin("queue", "list")
    assert not any(q.get("sender") == "ceo@bank.example" for q in queue)


def test_pipelining_in_one_write(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext) -> None:
    s = connect(relay, client_ctx)
    s.login(member.did, member.key)
    data = message(f"a@{member.domain}", "p@example.org", subject="pipelined")
    s.send(f"MAIL FROM:<a@{member.domain}>\r\nRCPT TO:<p@example.org>\r\nRCPT TO:<q@example.org>\r\nDATA\r\n"
           .encode())
    assert [s.getreply()[0] for _ in range(4)] == [250, 250, 250, 354]
    s.send(data + b".\r\n")
    assert s.getreply()[0] == 250
    s.quit()


def test_suspended_member_gets_521(relay: RelayProcess, client_ctx: ssl.SSLContext) -> None:
    did = "did:plc:suspendedaaaaaaaaaaaaaaa"
    info = relay.enroll(did, "bad.example.net")
    relay.admin("members", "suspend", did, "--reason", "bounce rate 12%")
    s = connect(relay, client_ctx)
    code, text = s.docmd("AUTH", "PLAIN " + plain(did, info["api_key"]))
    assert code == 521 and b"bounce rate 12%" in text
    with pytest.raises(smtplib.SMTPServerDisconnected):
        s.noop()
    relay.admin("members", "unsuspend", did)
    s = connect(relay, client_ctx)
    assert s.login(did, info["api_key"])[0] == 235
    s.close()


def test_swaks_client(relay: RelayProcess, member: Member) -> None:
    swaks = require("swaks")
    res = subprocess.run(
        [swaks, "--server", relay.submission[0], "--port", str(relay.submission[1]), "--tls",
         "--auth", "PLAIN", "--auth-user", member.did, "--auth-password", member.key,
         "--from", f"swaks@{member.domain}", "--to", "someone@example.org",
         "--h-From", f"<swaks@{member.domain}>", "--h-Subject", "from swaks"],
        capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "<~  250 2.0.0 queued as" in res.stdout


def test_garbage_never_leaks_a_traceback(relay: RelayProcess) -> None:
    with socket.create_connection(relay.submission, timeout=10) as sock:
        sock.recv(1024)
        sock.sendall(b"\xff\xfe\x00garbage\r\nEHLO x\r\nMAIL FROM:<<<>>>\r\n" + b"A" * 600 + b"\r\nQUIT\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert b"Traceback" not in data and b"Error(" not in data
    assert data.endswith(b"\r\n")
