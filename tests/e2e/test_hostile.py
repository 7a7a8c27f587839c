"""Issue 13 vectors against the real ``atmos serve`` process: each one answered, the relay still alive.

After every vector: the process has not exited, ``/healthz`` answers 200 and a fresh SMTP session is
served. No traceback reaches the relay's log.
"""

from __future__ import annotations

import json
import smtplib
import socket
import sqlite3
import ssl
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Member
from tests.e2e.relayproc import RelayProcess

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
FRAME = bytes([0x81, 0x85]) + b"abcd" + bytes(b ^ k for b, k in zip(b"hello", b"abcda", strict=True))
ADMIN = b"admin-token-" + b"x" * 20  # relayproc's ATMOS_ADMIN_TOKEN


def http_addr(relay: RelayProcess) -> tuple[str, int]:
    host, _, port = relay.http.removeprefix("http://").rpartition(":")
    return host, int(port)


def raw_http(relay: RelayProcess, data: bytes, *, wait: float = 3.0) -> bytes:
    with socket.create_connection(http_addr(relay), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    break
        except TimeoutError:
            pass
        return out


def assert_alive(relay: RelayProcess) -> None:
    assert relay.proc is not None and relay.proc.poll() is None, "".join(relay.output[-50:])
    r = httpx.get(f"{relay.http}/healthz", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    with smtplib.SMTP(*relay.submission, timeout=10) as s:
        assert s.ehlo("client.test")[0] == 250
    assert not [line for line in relay.output if "Traceback" in line], "".join(relay.output[-80:])


def ws_upgrade(path: bytes, token: bytes | None) -> bytes:
    auth = b"Authorization: Bearer " + token + b"\r\n" if token is not None else b""
    return (b"GET " + path + b" HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n" + auth + b"\r\n")


@pytest.mark.parametrize("path", [b"/admin/ws", b"/xrpc/com.atproto.label.subscribeLabels", b"/no/such/path"])
@pytest.mark.parametrize("token", [None, b"wrong-token", ADMIN])
def test_websocket_upgrade_with_trailing_frame(relay: RelayProcess, path: bytes, token: bytes | None) -> None:
    """Issue 13: a masked frame in the same sendall as the upgrade request ended the process."""
    answer = raw_http(relay, ws_upgrade(path, token) + FRAME)
    assert answer.startswith(b"HTTP/1.1 "), answer
    assert_alive(relay)


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: !!!\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
])
def test_h2c_is_not_spoken(relay: RelayProcess, raw: bytes) -> None:
    """Issue 13: an undecodable HTTP2-Settings ended the process; h2c is off, HTTP/1.1 answers."""
    answer = raw_http(relay, raw)
    assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 101"), answer
    assert_alive(relay)


def auth(member: Member) -> dict[str, str]:
    return {"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did}


@pytest.mark.parametrize(("body", "field"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nested"),
    (b'{"from": "a@mail.example.com", "to": "b@example.org", "subject": "x \\ud800", "text": "t"}', "subject"),
    (b'{"from": "a@mail.example.com", "to": ["b@example.org", "\\udfff@x.org"], "text": "t"}', "to[1]"),
    (b'{"from": "a@mail.example.com", "to": {"b": 1}, "text": "t"}', "to"),
    (b'{"from": "a@mail.example.com", "to": "b@example.org", "headers": ["X-A", "1"], "text": "t"}', "headers"),
    (b'{"from": "a@mail.example.com", "to": "b@example.org", "headers": {"X-A": {"b": 1}}, "text": "t"}', "X-A"),
    (b'{"from": 1e999, "to": "b@example.org", "text": "t"}', "from"),
    (b'"just a string"', "body"),
    (b"\xff\xfe{}", "JSON"),
    # Issue 13: the Latin-1 bytes that broke SMTP gave 500 INTERNAL over HTTP: not UTF-8, so not JSON.
    (b'{"from": "a@mail.example.com", "to": "b@example.org", "subject": "caf\xe9", "text": "t"}', "JSON"),
])
def test_bad_json_is_400_naming_the_field(relay: RelayProcess, member: Member, body: bytes, field: str) -> None:
    r = httpx.post(f"{relay.http}/v1/send", content=body, timeout=10,
                   headers={**auth(member), "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "INVALID_REQUEST" and field in r.json()["error"], r.json()
    assert_alive(relay)


@pytest.mark.parametrize("path", ["/member/forward-to", "/member/webhook", "/v1/suppressions"])
def test_nested_json_elsewhere_is_not_a_500(relay: RelayProcess, member: Member, path: str) -> None:
    for method in ("PUT", "POST", "DELETE"):
        r = httpx.request(method, f"{relay.http}{path}", content=b"[" * 50_000, headers=auth(member), timeout=10)
        assert r.status_code < 500, (method, r.status_code, r.text)
    assert_alive(relay)


def test_message_id_beyond_sqlite_integers_is_404(relay: RelayProcess, member: Member) -> None:
    """Found by scripts/fuzz: the id reached SQLite and raised OverflowError (500)."""
    for path in ("/v1/messages/99999999999999999999999", "/v1/messages/9223372036854775808"):
        r = httpx.get(f"{relay.http}{path}", headers=auth(member), timeout=10)
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND", r.text
    assert_alive(relay)


def submit(relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext, data: bytes) -> str:
    with smtplib.SMTP(*relay.submission, timeout=10) as s:
        s.ehlo("client.test")
        s.starttls(context=client_ctx)
        s.ehlo("client.test")
        s.login(member.did, member.key)
        s.mail(f"hello@{member.domain}")
        s.rcpt("someone@example.org")
        code, text = s.data(data)
        assert code == 250, text
        return text.decode()


def test_latin1_subject_is_stored_and_shown_and_survives_restart(
    relay: RelayProcess, member: Member, client_ctx: ssl.SSLContext
) -> None:
    """Issue 13: a Latin-1 ``Subject: café`` got 250, then the status writer raised, the relay exited,
    and every restart died in start-up reconciliation while the message was queued."""
    data = (f"From: hello@{member.domain}\r\nTo: someone@example.org\r\n".encode()
            + b"Subject: caf\xe9 cr\xe8me\r\nMessage-ID: <latin1@test>\r\n\r\nBonjour \xe0 tous\r\n")
    reply = submit(relay, member, client_ctx, data)
    message_id = int(reply.split("queued as ")[1].split(",")[0].split(";")[0])
    status = httpx.get(f"{relay.http}/v1/messages/{message_id}", headers=auth(member), timeout=10)
    assert status.status_code == 200 and status.json()["subject"] == "caf\ufffd cr\ufffdme"
    assert_alive(relay)
    # Start-up replay: the row and the store's spool mark are missing (as after a crash before the
    # writer flushed) while the message is still queued (its delivery stays deferred: relayproc routes
    # to a closed port), so the spool replays the message to the store at the next start.
    assert relay.stop() == 0
    with sqlite3.connect(relay.state_dir / "relay.db") as db:
        db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        db.execute("DELETE FROM spool_marks")
    relay.start()
    assert_alive(relay)
    status = httpx.get(f"{relay.http}/v1/messages/{message_id}", headers=auth(member), timeout=10)
    assert status.status_code == 200 and status.json()["subject"] == "caf\ufffd cr\ufffdme", status.text
    # The message itself keeps its bytes: what is queued is what was submitted.
    from spool import SpoolLog

    queued = SpoolLog.open_readonly(relay.spool_dir())
    queue_id = next(m.queue_id for m in queued.live() if message_id in m.rcpt_ids)
    assert b"Subject: caf\xe9 cr\xe8me\r\n" in queued.read_data(queue_id)


def web_sessions(relay: RelayProcess) -> int:
    with sqlite3.connect(f"file:{relay.state_dir / 'relay.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM web_sessions").fetchone()[0])


def test_anonymous_get_enroll_writes_nothing(relay: RelayProcess) -> None:
    before = web_sessions(relay)
    for _ in range(20):
        r = httpx.get(f"{relay.http}/enroll", timeout=10)
        assert r.status_code == 200 and "atmos_session=" in r.headers["set-cookie"]
    # One browser (its cookie sent back by hand: this relay's cookies are Secure, the test speaks http).
    first = httpx.get(f"{relay.http}/enroll", timeout=10)
    cookie = {"Cookie": first.headers["set-cookie"].split(";")[0]}
    token = first.text.split('name="csrf" value="')[1].split('"')[0]
    again = httpx.get(f"{relay.http}/enroll", headers=cookie, timeout=10)
    assert f'value="{token}"' in again.text and "set-cookie" not in again.headers  # the same anonymous session
    # A form posted with a forged token is refused, still without a row.
    forged = httpx.post(f"{relay.http}/enroll", data={"csrf": "forged", "handle": "x.test"}, headers=cookie)
    assert forged.status_code == 403
    assert web_sessions(relay) == before


def metrics_faults(relay: RelayProcess) -> dict[str, float]:
    text = httpx.get(f"{relay.http}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("atmos_faults_total{"):
            name = line.split('where="')[1].split('"')[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def test_no_contained_faults_after_the_vectors(relay: RelayProcess) -> None:
    """The vectors above are handled, not merely contained: no connection ended by an internal error."""
    assert metrics_faults(relay) == {"http_connection": 0.0, "status_writer": 0.0}


def test_healthz_is_503_while_the_spool_refuses_mail(
    tmp_path_factory: pytest.TempPathFactory, tls_files: Any, client_ctx: ssl.SSLContext
) -> None:
    proc = RelayProcess(base=tmp_path_factory.mktemp("full"), tls=tls_files,
                        extra_toml="[spool]\nmax_bytes = 200000\nsegment_bytes = 100000\n")
    proc.write_config()
    info = proc.enroll("did:plc:fullaaaaaaaaaaaaaaaaaaaa", "full.example.com")
    member = Member("did:plc:fullaaaaaaaaaaaaaaaaaaaa", "full.example.com", "", info["api_key"])
    proc.start()
    try:
        assert httpx.get(f"{proc.http}/healthz", timeout=5).status_code == 200
        body = {"from": f"a@{member.domain}", "to": "b@example.org", "subject": "big", "text": "x" * 60_000}
        codes = [httpx.post(f"{proc.http}/v1/send", json=body, headers=auth(member), timeout=10).status_code
                 for _ in range(6)]
        assert 200 in codes and codes[-1] == 507, codes  # InsufficientStorage
        r = httpx.get(f"{proc.http}/healthz", timeout=5)
        assert r.status_code == 503 and r.json()["status"] == "refusing", r.text
        assert any("spool full" in reason for reason in r.json()["reasons"]), r.json()
        assert json.dumps(r.json())  # the reasons are plain JSON
    finally:
        assert proc.stop() == 0
