"""Nothing a stranger sends takes the real relay down or starves it (issue 13, SMTP and auth side).

One ``atmos serve`` process with small budgets; each test attacks one way and then checks that the
relay still answers ``/healthz``, still serves other sessions, and gave the documented reply.
Clients from other loopback addresses (127.0.0.2, ...) stand for other people on the internet.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from relay.delivery import verp
from tests.e2e.conftest import Member
from tests.e2e.relayproc import RelayProcess

SMTP_TOML = (
    "max_connections_per_ip = 6\npre_auth_timeout = 2.0\npre_auth_time = 5.0\npre_mail_timeout = 2.0\n"
    "pre_mail_time = 5.0\nerror_limit = 5\njunk_command_limit = 10\ndata_buffer_bytes = 400000\n"
)
EXTRA_TOML = (
    "[inbound]\nper_ip_per_minute = 6000\nper_ip_burst = 1000\nreport_size = 200000\n"
    "[auth]\nper_ip_per_minute = 1\nper_ip_burst = 5\nper_did_per_minute = 1\nper_did_burst = 60\nbcrypt_queue = 2\n"
)


class Raw:
    """A blocking line-level SMTP client: see every reply, including unsolicited 421s."""

    def __init__(self, address: tuple[str, int], source: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout, source_address=(source, 0))
        self.buf = b""

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return (0, "EOF") if not lines else (int(lines[-1][:3]), "\n".join(lines))
                self.buf += chunk
            line, _, self.buf = self.buf.partition(b"\r\n")
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] == b" ":
                return int(lines[-1][:3]), "\n".join(lines)

    def cmd(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def eof(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def healthy(relay: RelayProcess) -> None:
    assert relay.proc is not None and relay.proc.poll() is None, "the relay process exited"
    r = httpx.get(f"{relay.http}/healthz", timeout=10)
    assert r.status_code == 200, r.text


def served(relay: RelayProcess, listener: str = "submission", source: str = "127.0.0.9") -> None:
    """Another client, from another address, gets a normal session."""
    c = Raw(relay.submission if listener == "submission" else relay.inbound, source=source)
    try:
        assert c.reply()[0] == 220
        assert c.cmd(b"EHLO other.example")[0] == 250
        assert c.cmd(b"QUIT")[0] == 221
    finally:
        c.close()


def poll(condition: Callable[[], bool], deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        time.sleep(0.05)


# ---- connections per client address ---------------------------------------------------------


def test_connections_per_ip_then_421(relay: RelayProcess) -> None:
    mine = [Raw(relay.submission, source="127.0.0.2") for _ in range(6)]
    try:
        for c in mine:
            assert c.reply()[0] == 220
        extra = Raw(relay.submission, source="127.0.0.2")
        code, text = extra.reply()
        assert code == 421 and "4.7.0 too many connections from your address" in text
        assert extra.eof()
        extra.close()
        served(relay)  # another address is not affected, on either listener
        served(relay, "inbound", source="127.0.0.2")  # the cap is per listener
        healthy(relay)
    finally:
        for c in mine:
            c.close()

    def slot_free() -> bool:
        c = Raw(relay.submission, source="127.0.0.2")
        try:
            return c.reply()[0] == 220
        finally:
            c.close()

    poll(slot_free)


# ---- idle and time limits before AUTH / MAIL; the command budget -----------------------------


@pytest.mark.parametrize("listener", ["submission", "inbound"])
def test_idle_before_the_gate_is_closed(relay: RelayProcess, listener: str) -> None:
    c = Raw(relay.submission if listener == "submission" else relay.inbound, source="127.0.0.3")
    assert c.reply()[0] == 220
    assert c.cmd(b"EHLO idle.example")[0] == 250
    code, text = c.reply()  # unsolicited, after pre_auth_timeout / pre_mail_timeout
    assert code == 421 and "4.4.2" in text
    assert c.eof()
    c.close()
    served(relay, listener)
    healthy(relay)


def test_noop_forever_before_auth_ends_at_pre_auth_time(relay: RelayProcess) -> None:
    c = Raw(relay.submission, source="127.0.0.3")
    assert c.reply()[0] == 220
    assert c.cmd(b"EHLO noop.example")[0] == 250
    end = time.monotonic() + 30
    while True:
        assert time.monotonic() < end
        time.sleep(1.0)  # under the 2 s idle limit and the junk budget: only the gate time ends this
        code, text = c.cmd(b"NOOP")
        if code != 250:
            break
    assert code == 421 and "4.7.0 authentication required within 5 s" in text
    assert c.eof()
    c.close()
    served(relay)
    healthy(relay)


def test_junk_commands_then_421(relay: RelayProcess) -> None:
    c = Raw(relay.inbound, source="127.0.0.4")
    assert c.reply()[0] == 220
    assert c.cmd(b"EHLO junk.example")[0] == 250
    c.sock.sendall(b"NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n" * 10)
    codes = []
    while True:
        code, text = c.reply()
        codes.append(code)
        if code in (0, 421):
            break
    assert code == 421 and "4.7.0 too many errors" in text
    assert len(codes) == 10 + 5 + 1  # the free junk budget, then error_limit more, then 421
    c.close()
    served(relay, "inbound")
    healthy(relay)


def test_refused_recipients_count_as_errors_then_421(relay: RelayProcess) -> None:
    c = Raw(relay.inbound, source="127.0.0.4")
    assert c.reply()[0] == 220
    assert c.cmd(b"EHLO scan.example")[0] == 250
    assert c.cmd(b"MAIL FROM:<scanner@example.net>")[0] == 250
    codes = []
    for i in range(3000):
        code, text = c.cmd(b"RCPT TO:<user%d@relay.test>" % i)
        codes.append(code)
        if code in (0, 421):
            break
    assert codes[:6] == [550] * 6 and code == 421 and "4.7.0 too many errors" in text
    assert len(codes) == 7  # past error_limit (5) the next command gets 421: not 3,000 store queries
    assert c.eof()
    c.close()
    served(relay, "inbound")
    healthy(relay)


# ---- DATA buffered in memory, relay-wide --------------------------------------------------------


def test_data_buffers_are_capped_relay_wide(relay: RelayProcess) -> None:
    clients = [Raw(relay.inbound, source=f"127.0.0.{5 + i}") for i in range(2)]
    for c in clients:
        assert c.reply()[0] == 220
        assert c.cmd(b"EHLO big.example")[0] == 250
        assert c.cmd(b"MAIL FROM:<big@example.net>")[0] == 250
        assert c.cmd(b"RCPT TO:<postmaster@relay.test>")[0] == 250
        assert c.cmd(b"DATA")[0] == 354
    line = b"x" * 998 + b"\r\n"
    for c in clients:  # 2 x 250 kB in DATA at once: more than data_buffer_bytes (400 kB)
        c.sock.sendall(b"Subject: big\r\n\r\n" + line * 250)
    results = {}
    for i, c in enumerate(clients):
        try:
            c.sock.sendall(b".\r\n")
            results[i] = c.reply()
        except OSError:  # closed with our bytes unread: the kernel may reset before the 421 is read
            results[i] = (0, "reset")
    codes = [code for code, _ in results.values()]
    assert codes.count(250) == 1 and set(codes) - {250} <= {0, 421}, results  # one overdrew the budget: closed
    assert all("4.3.1 insufficient system resources" in text for code, text in results.values() if code == 421)
    poll(lambda: any("DATA buffers full" in line for line in relay.output))
    for c in clients:
        c.close()
    # The budget is given back: a new message of the same size goes through.
    with smtplib.SMTP(*relay.inbound, timeout=30, source_address=("127.0.0.7", 0)) as s:
        s.ehlo("big.example")
        s.sendmail("big@example.net", ["postmaster@relay.test"], b"Subject: big\r\n\r\n" + line * 250)
    healthy(relay)


# ---- authentication abuse -------------------------------------------------------------------------


def test_wrong_api_keys_are_throttled_before_bcrypt_and_a_member_is_not_starved(
    relay: RelayProcess, member: Member
) -> None:
    go = threading.Barrier(40)

    def attack(i: int) -> httpx.Response:
        wrong = {"Authorization": f"Bearer atmos_{i:043d}", "X-Atmos-DID": member.did}  # 40 different guesses
        go.wait()
        return httpx.get(f"{relay.http}/v1/messages/1", headers=wrong, timeout=60)

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(attack, range(40)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {401, 429} and codes.count(401) <= 5, codes  # per_ip_burst reached bcrypt
    throttled = [r for r in answers if r.status_code == 429]
    assert throttled and all(r.json()["code"] == "AUTH_THROTTLED" and int(r.headers["Retry-After"]) >= 1
                             for r in throttled)
    # The member, from another address, is answered (404: authenticated, no such message).
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.8"), timeout=30) as client:
        r = client.get(f"{relay.http}/v1/messages/1",
                       headers={"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did})
    assert r.status_code == 404, r.text
    poll(lambda: sum("auth failed: wrong API key" in line for line in relay.output) >= codes.count(401))
    assert all("peer=127.0.0.1" in line for line in relay.output if "auth failed: wrong API key" in line)
    healthy(relay)


def test_a_full_bcrypt_queue_fails_fast_with_503(relay: RelayProcess, member: Member) -> None:
    go = threading.Barrier(16)

    def guess(i: int) -> httpx.Response:  # sixteen addresses, one guess each: no per-address limit applies
        with httpx.Client(transport=httpx.HTTPTransport(local_address=f"127.0.1.{10 + i}"), timeout=60) as client:
            go.wait()
            return client.get(f"{relay.http}/v1/messages/1",
                              headers={"Authorization": f"Bearer atmos_{i:043d}x", "X-Atmos-DID": member.did})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(guess, range(16)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {401, 503} and codes.count(503) >= 8, codes  # 2 threads + 2 waiting; the rest at once
    busy = [r for r in answers if r.status_code == 503]
    assert all(r.json()["code"] == "AUTH_BUSY" and r.headers["Retry-After"] == "1" for r in busy)
    healthy(relay)


def test_failed_smtp_auth_is_throttled_with_454(relay: RelayProcess, member: Member,
                                                client_ctx: ssl.SSLContext) -> None:
    replies = []
    for _ in range(7):  # one attempt per session: the session's own error limit is not what stops this
        with smtplib.SMTP(*relay.submission, timeout=30, source_address=("127.0.0.10", 0)) as s:
            s.ehlo("guess.example")
            s.starttls(context=client_ctx)
            s.ehlo("guess.example")
            token = base64.b64encode(f"\0{member.did}\0atmos_wrong".encode()).decode()
            replies.append(s.docmd("AUTH", f"PLAIN {token}"))
    codes = [code for code, _ in replies]
    assert codes[:5] == [535] * 5 and codes[5:] == [454, 454]
    assert b"4.7.0 too many failed authentications" in replies[-1][1]
    with smtplib.SMTP(*relay.submission, timeout=30, source_address=("127.0.0.11", 0)) as s:
        s.ehlo("member.example")
        s.starttls(context=client_ctx)
        s.ehlo("member.example")
        assert s.login(member.did, member.key)[0] == 235  # another address: the member gets in
    healthy(relay)


# ---- reports: size limit, parsed off the event loop -------------------------------------------------


def many_parts(size: int) -> bytes:
    head = (b"From: fbl@isp.example\r\nTo: fbl@relay.test\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n")
    part = b"--b\r\n\r\nx\r\n"
    return head + part * ((size - len(head)) // len(part)) + b"--b--\r\n"


# relayproc's ATMOS_SECRET_KEY signs VERP addresses: a bounce to message 1 that passes the HMAC check.
VERP_RCPT = verp.encode(1, secret=b"secret-key-" + b"y" * 24, domain="relay.test")


@pytest.mark.parametrize("rcpt", ["fbl@relay.test", VERP_RCPT], ids=["fbl", "verp"])
def test_a_huge_report_to_the_fbl_address_is_refused_and_nothing_stalls(relay: RelayProcess, rcpt: str) -> None:
    """Issue 13: a 10 MiB multipart/report of tiny parts to fbl@ (ARF) or a VERP address (DSN) was parsed
    on the event loop and stalled SMTP, HTTP and delivery for ~7 s."""
    result: dict[str, object] = {}

    def send() -> None:
        with smtplib.SMTP(*relay.inbound, timeout=60, source_address=("127.0.0.12", 0)) as s:
            s.ehlo("isp.example")
            s.mail("" if rcpt == VERP_RCPT else "fbl-sender@isp.example")  # a DSN has the null sender
            s.rcpt(rcpt)
            result["reply"] = s.data(many_parts(10 * (1 << 20)))  # the 10 MiB, ~1M tiny parts

    sender = threading.Thread(target=send)
    sender.start()
    while sender.is_alive():  # while it streams and is judged, everything else is answered
        healthy(relay)
        served(relay, "inbound", source="127.0.0.13")
        time.sleep(0.05)
    sender.join()
    code, text = result["reply"]  # type: ignore[misc]
    assert code == 552 and b"5.3.4" in text
    # A report just under inbound.report_size, with more parts than a report has: taken, not parsed.
    with smtplib.SMTP(*relay.inbound, timeout=60, source_address=("127.0.0.12", 0)) as s:
        s.ehlo("isp.example")
        s.sendmail("" if rcpt == VERP_RCPT else "fbl-sender@isp.example", [rcpt], many_parts(190_000))
    healthy(relay)
    served(relay)
