"""The durability promise, proven against the real process: a 250/200 means on disk.

kill -9 at random moments over 20 cycles while several SMTP and HTTP clients
submit; after each kill every acknowledged message is in the spool byte-for-byte
and exactly once. Also: a full spool answers 452 and loses nothing; SIGTERM
closes listeners first and idle sessions get 421.
"""

from __future__ import annotations

import collections
import email
import random
import signal
import smtplib
import socket
import ssl
import threading
import time
from email import policy
from pathlib import Path

import httpx
import pytest

from relay.mail.outbound import split_message
from spool import SpoolLog
from tests.e2e.conftest import message
from tests.e2e.relayproc import RelayProcess, TLSFiles

DID = "did:plc:durableaaaaaaaaaaaaaaaaa"
DOMAIN = "durable.example.com"


def spool_by_message_id(relay: RelayProcess) -> dict[str, list[bytes]]:
    log = SpoolLog.open_readonly(relay.spool_dir())
    found: dict[str, list[bytes]] = collections.defaultdict(list)
    for queued in log.live():
        data = log.read_data(queued.queue_id)
        mid = email.message_from_bytes(data, policy=policy.compat32)["Message-ID"]
        found[str(mid)].append(data)
    return found


class Clients:
    """Submitters that record exactly what the relay acknowledged."""

    def __init__(self, relay: RelayProcess, key: str, ctx: ssl.SSLContext, tag: str) -> None:
        self.relay, self.key, self.ctx, self.tag = relay, key, ctx, tag
        self.acked: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ready = threading.Semaphore(0)  # released once per worker after its (bcrypt-priced) AUTH

    def smtp_worker(self, n: int) -> None:
        released = False
        try:
            with smtplib.SMTP(*self.relay.submission, timeout=5) as s:
                s.starttls(context=self.ctx)
                s.login(DID, self.key)
                self.ready.release()
                released = True
                i = 0
                while not self.stop.is_set():
                    mid = f"<{self.tag}-s{n}-{i}@test>"
                    data = message(f"a@{DOMAIN}", "x@example.org", subject="d",
                                   body=f"{mid}\r\n" + ("z" * 76 + "\r\n") * 20)
                    data = data.replace(b"<d@test>", mid.encode())
                    s.sendmail(f"a@{DOMAIN}", ["x@example.org"], data)  # raises unless 250
                    with self.lock:
                        self.acked[mid] = data
                    i += 1
        except (OSError, smtplib.SMTPException):
            return  # the relay was killed under us: only what was acknowledged counts
        finally:
            if not released:
                self.ready.release()

    def http_worker(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "X-Atmos-DID": DID}
        i = 0
        with httpx.Client(timeout=5) as client:
            try:
                client.get(f"{self.relay.http}/v1/messages/1", headers=headers)  # warm the key cache
            except httpx.HTTPError:
                return
            finally:
                self.ready.release()
            while not self.stop.is_set():
                subject = f"{self.tag}-h{n}-{i}"
                try:
                    r = client.post(f"{self.relay.http}/v1/send", headers=headers, json={
                        "from": f"a@{DOMAIN}", "to": "y@example.org", "subject": subject, "text": "x" * 1500})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with self.lock:
                        self.acked[f"http:{r.json()['accepted'][0]['messageId']}"] = subject.encode()
                i += 1

    def run_until_killed(self, seconds: float) -> None:
        threads = [threading.Thread(target=self.smtp_worker, args=(n,)) for n in range(3)]
        threads += [threading.Thread(target=self.http_worker, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for _ in threads:  # the kill timer starts once every client is submitting
            self.ready.acquire(timeout=20)
        time.sleep(seconds)
        self.relay.kill()
        self.stop.set()
        for t in threads:
            t.join(timeout=15)


def verify(relay: RelayProcess, acked: dict[str, bytes]) -> None:
    by_mid = spool_by_message_id(relay)
    log = SpoolLog.open_readonly(relay.spool_dir())
    for key, sent in acked.items():
        if key.startswith("http:"):
            queued = log.get(int(key[5:]))
            assert queued is not None, f"acknowledged HTTP message {key} lost"
            assert sent in log.read_data(queued.queue_id)
        else:
            copies = by_mid.get(key, [])
            assert len(copies) == 1, f"acknowledged {key}: {len(copies)} copies in the spool"
            # The relay prepends its Received: field (RFC 5321 §4.4); the rest is byte for byte what was sent.
            fields, body = split_message(copies[0])
            assert fields[0].startswith(b"Received: from "), key
            assert b"".join(fields[1:]) + body == sent, f"{key} differs from what was acknowledged"
    ids = [q.queue_id for q in log.live()]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
def test_kill9_never_loses_an_acknowledged_message(tmp_path: Path, tls_files: TLSFiles,
                                                    client_ctx: ssl.SSLContext) -> None:
    relay = RelayProcess(base=tmp_path, tls=tls_files)
    key = relay.enroll(DID, DOMAIN)["api_key"]
    rng = random.Random(20261125)
    acked: dict[str, bytes] = {}
    smtp_acked = 0
    for cycle in range(20):
        relay.start()
        clients = Clients(relay, key, client_ctx, f"c{cycle}")
        clients.run_until_killed(rng.uniform(0.2, 1.2))
        acked.update(clients.acked)
        smtp_acked += sum(1 for k in clients.acked if not k.startswith("http:"))
        verify(relay, acked)
    assert len(acked) > 100, f"only {len(acked)} messages acknowledged: the test did not exercise much"
    assert smtp_acked > 50, f"only {smtp_acked} SMTP messages acknowledged"
    relay.start()  # recovery after the last kill keeps everything too
    relay.stop()
    verify(relay, acked)


def test_full_spool_is_452_and_loses_nothing(tmp_path: Path, tls_files: TLSFiles,
                                            client_ctx: ssl.SSLContext) -> None:
    relay = RelayProcess(base=tmp_path, tls=tls_files, extra_toml="[spool]\nmax_bytes = 140000\nsegment_bytes = 65536\n")
    key = relay.enroll(DID, DOMAIN)["api_key"]
    relay.start()
    s = smtplib.SMTP(*relay.submission, timeout=10)
    s.starttls(context=client_ctx)
    s.login(DID, key)
    acked: dict[str, bytes] = {}
    refused = None
    for i in range(200):
        mid = f"<full-{i}@test>"
        data = message(f"a@{DOMAIN}", "x@example.org", subject="d", body=("q" * 76 + "\r\n") * 26)
        data = data.replace(b"<d@test>", mid.encode())
        s.mail(f"a@{DOMAIN}")
        s.rcpt("x@example.org")
        code, text = s.data(data)
        if code == 250:
            acked[mid] = data
        else:
            refused = (code, text)
            break
    assert refused is not None and refused[0] == 452 and b"4.3.1" in refused[1], refused
    r = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": DID},
                   json={"from": f"a@{DOMAIN}", "to": "y@example.org", "subject": "s", "text": "t " * 3000})
    assert r.status_code == 507 and r.json()["code"] == "INSUFFICIENT_STORAGE"
    s.quit()
    assert relay.stop() == 0
    relay.start()
    verify(relay, acked)
    relay.stop()


def test_sigterm_closes_listeners_idle_sessions_get_421(tmp_path: Path, tls_files: TLSFiles) -> None:
    relay = RelayProcess(base=tmp_path, tls=tls_files)
    relay.enroll(DID, DOMAIN)
    relay.start()
    idle = socket.create_connection(relay.submission, timeout=10)
    assert idle.recv(1024).startswith(b"220")
    idle.sendall(b"EHLO idle.test\r\n")
    time.sleep(0.2)
    idle.recv(4096)
    with idle:
        assert relay.stop(signal.SIGTERM) == 0
        rest = b""
        while chunk := idle.recv(4096):
            rest += chunk
    assert rest.startswith(b"421"), rest
    with pytest.raises(OSError):
        socket.create_connection(relay.submission, timeout=2)


def test_idempotency_key_replays_after_kill9(tmp_path: Path, tls_files: TLSFiles) -> None:
    """Issue 14: the key was recorded after the accept, so a crash (or a slow store) between the two
    made the client's retry send the message twice. Now the key travels in the spooled envelope."""
    relay = RelayProcess(base=tmp_path, tls=tls_files)
    key = relay.enroll(DID, DOMAIN)["api_key"]
    relay.start()
    headers = {"Authorization": f"Bearer {key}", "X-Atmos-DID": DID}
    body = {"from": f"a@{DOMAIN}", "to": ["y@example.org", "z@example.org"], "subject": "once", "text": "t"}
    firsts = []
    for n in range(3):
        r = httpx.post(f"{relay.http}/v1/send", headers={**headers, "Idempotency-Key": f"k-{n}"}, json=body,
                       timeout=10)
        assert r.status_code == 200, r.text
        firsts.append(r.json())
    relay.kill()  # at once: the status writer may not have written anything yet
    relay.start()
    for n in range(3):
        again = httpx.post(f"{relay.http}/v1/send", headers={**headers, "Idempotency-Key": f"k-{n}"}, json=body,
                           timeout=10)
        assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true", again.text
        assert again.json() == firsts[n]
        for acc in firsts[n]["accepted"]:  # and the status rows exist, as the spool says
            st = httpx.get(f"{relay.http}/v1/messages/{acc['messageId']}", headers=headers, timeout=10)
            assert st.status_code == 200 and st.json()["status"] in ("accepted", "deferred"), st.text
    log = SpoolLog.open_readonly(relay.spool_dir())
    assert len(list(log.live())) == 3  # one message per key, never a second copy
    relay.stop()


def test_sigterm_answers_every_http_request_it_spooled(tmp_path: Path, tls_files: TLSFiles) -> None:
    """Issue 14: in 20 SIGTERM cycles 6 /v1/send requests were spooled but the client saw the connection
    close without an answer (a retrying client then sends a duplicate). hypercorn's graceful shutdown is
    now awaited before the root scope is cancelled."""
    relay = RelayProcess(base=tmp_path, tls=tls_files)
    key = relay.enroll(DID, DOMAIN)["api_key"]
    headers = {"Authorization": f"Bearer {key}", "X-Atmos-DID": DID}
    cut: list[str] = []
    answered: list[str] = []
    lock = threading.Lock()
    for cycle in range(3):
        relay.start()
        stop = threading.Event()

        def client(n: int, cycle: int = cycle, stop: threading.Event = stop) -> None:
            with httpx.Client(timeout=20) as http:
                i = 0
                while not stop.is_set():
                    subject = f"term-{cycle}-{n}-{i}"
                    try:
                        r = http.post(f"{relay.http}/v1/send", headers=headers, json={
                            "from": f"a@{DOMAIN}", "to": "y@example.org", "subject": subject, "text": "t"})
                    except httpx.RemoteProtocolError:
                        with lock:
                            cut.append(subject)
                        return
                    except httpx.HTTPError:
                        return  # refused at connect: the listener is closed, nothing was spooled
                    if r.status_code == 200:
                        with lock:
                            answered.append(subject)
                    i += 1

        httpx.get(f"{relay.http}/v1/messages/1", headers=headers, timeout=30)  # the API key is cached (bcrypt)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.proc.wait(timeout=60) == 0
        stop.set()
        for t in threads:
            t.join(timeout=30)
        relay.stop()
    assert len(answered) > 12
    log = SpoolLog.open_readonly(relay.spool_dir())
    spooled = {email.message_from_bytes(log.read_data(m.queue_id))["Subject"] for m in log.live()}
    assert set(answered) <= spooled
    assert [s for s in cut if s in spooled] == []  # no spooled message without its answer


def test_full_disk_pauses_deliveries_and_tells_healthz(tmp_path: Path, tls_files: TLSFiles) -> None:
    """Issue 14 on the real process: the state dir on a small tmpfs (a real ENOSPC), deliveries
    deferring every second. When the disk fills, outcomes go into the reserve, /healthz says why it
    refuses, mail is refused; once space is back the relay takes mail again by itself."""
    from tests.spool.helpers import fill_disk, mounted_tmpfs

    with mounted_tmpfs(tmp_path / "mnt", size="16m") as mnt:
        toml = (f"[delivery]\nrelayhost = \"[127.0.0.1]:1\"\nretry_schedule = [{', '.join(['1'] * 300)}]\n"
                f"[store]\nurl = \"sqlite:///{tmp_path / 'relay.db'}\"\n"
                "[spool]\nsegment_bytes = 65536\nreserve_bytes = 1048576\n")
        relay = RelayProcess(base=mnt, tls=tls_files, extra_toml=toml)
        key = relay.enroll(DID, DOMAIN)["api_key"]
        relay.start()
        headers = {"Authorization": f"Bearer {key}", "X-Atmos-DID": DID}

        def send(subject: str) -> httpx.Response:
            return httpx.post(f"{relay.http}/v1/send", headers=headers, timeout=10, json={
                "from": f"a@{DOMAIN}", "to": "y@example.org", "subject": subject, "text": "t " * 500})

        for i in range(20):
            assert send(f"before-{i}").status_code == 200
        fill_disk(mnt / "filler")
        deadline = time.monotonic() + 30
        health = httpx.get(f"{relay.http}/healthz", timeout=5)
        while "disk full" not in health.text and time.monotonic() < deadline:
            time.sleep(0.2)  # the next deferral (every second) hits ENOSPC and spends the reserve
            health = httpx.get(f"{relay.http}/healthz", timeout=5)
        assert health.status_code == 503 and any("disk full" in r for r in health.json()["reasons"]), health.text
        assert send("while-full").status_code == 507
        (mnt / "filler").unlink()
        deadline = time.monotonic() + 30
        while httpx.get(f"{relay.http}/healthz", timeout=5).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert send("after").status_code == 200
        assert relay.stop() == 0
        log = SpoolLog.open_readonly(relay.spool_dir())
        assert len(list(log.live())) == 21  # everything acknowledged is still queued, nothing lost
