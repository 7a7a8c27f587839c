"""Multi-process SMTP load generator on stdlib smtplib, the same code against the relay and Postfix.

Modes:
  new connection per message: connect, EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT, DATA (2 KB), QUIT
  reuse: one connection per worker (handshake and AUTH once), many messages with RSET between

Each worker is a process (the GIL would otherwise cap the generator, and TLS handshakes cost client CPU
too). Workers wait on one event so process start-up is not timed, then send until their deadline. Latency
is per message, from MAIL FROM to the 250 after the final dot.

Delivery runs (``stamp=True``): each message starts with ``X-Bench-Seq: <n>`` (a number unique in the run) and
the worker reports, per accepted message, n and the wall-clock times of MAIL FROM and of the 250 after the
dot, so the sink's arrival time of message n gives its end-to-end latency. ``rcpts`` spreads the messages
over several recipients (e.g. one per destination domain), worker i's k-th message going to rcpts[(i+k) % len].
"""

from __future__ import annotations

import base64
import email.utils
import itertools
import multiprocessing as mp
import os
import queue
import signal
import smtplib
import ssl
import time
from array import array
from dataclasses import dataclass
from typing import Any

from .common import MESSAGE_BYTES, RunResult


@dataclass(frozen=True)
class SmtpJob:
    host: str
    port: int
    user: str
    password: str
    mail_from: str
    rcpt: str
    starttls: bool = True
    reuse: bool = False
    duration: float = 5.0
    max_messages: int = 1_000_000  # per worker: a bound on the loop besides the deadline
    size: int = MESSAGE_BYTES
    rcpts: tuple[str, ...] = ()  # when set, used in turn instead of ``rcpt``
    stamp: bool = False  # X-Bench-Seq header + per-message wall-clock marks (delivery runs)


SEQ_PER_WORKER = 10_000_000  # worker i numbers its messages i * SEQ_PER_WORKER + k


def stamp_header(seq: int) -> bytes:
    return b"X-Bench-Seq: %012d\r\n" % seq


def build_message(mail_from: str, rcpt: str, size: int, worker: int) -> bytes:
    """A plain RFC 5322 message of exactly ``size`` bytes (CRLF line ends, no line starting with '.')."""
    head = (
        f"From: Bench <{mail_from}>\r\nTo: <{rcpt}>\r\nSubject: bench {worker}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain=mail_from.rpartition('@')[2])}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, 0123456789 bench filler text.\r\n"
    body = b""
    while len(head) + len(body) + len(line) <= size:
        body += line
    pad = size - len(head) - len(body)
    if pad >= 2:
        body += b"x" * (pad - 2) + b"\r\n"
    return head + body


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench's own self-signed cert
    return ctx


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class _Failure(Exception):
    pass


def _expect(reply: tuple[int, bytes], codes: tuple[int, ...], what: str) -> None:
    if reply[0] not in codes:
        raise _Failure(f"{what}: {reply[0]} {reply[1].decode('latin-1', 'replace')[:120]}")


def _open(job: SmtpJob, ctx: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP(job.host, job.port, local_hostname="bench-client.localhost", timeout=30)
    try:
        _expect(client.ehlo(), (250,), "EHLO")
        if job.starttls:
            _expect(client.starttls(context=ctx), (220,), "STARTTLS")
            _expect(client.ehlo(), (250,), "EHLO after STARTTLS")
        if job.user:
            token = base64.b64encode(f"\0{job.user}\0{job.password}".encode()).decode()
            _expect(client.docmd("AUTH", "PLAIN " + token), (235,), "AUTH PLAIN")
    except BaseException:
        client.close()
        raise
    return client


def _send_one(client: smtplib.SMTP, job: SmtpJob, msg: bytes, rcpt: str = "") -> float:
    t0 = time.perf_counter()
    _expect(client.mail(job.mail_from), (250,), "MAIL FROM")
    _expect(client.rcpt(rcpt or job.rcpt), (250, 251), "RCPT TO")
    _expect(client.data(msg), (250,), "DATA")
    return time.perf_counter() - t0


def _worker(job: SmtpJob, index: int, go: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and reaps us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    stamp_len = len(stamp_header(0)) if job.stamp else 0
    msg = build_message(job.mail_from, job.rcpt, job.size - stamp_len, index)
    ctx = _client_ctx()
    lat = array("d")
    seqs, sent_at, accepted_at = array("q"), array("d"), array("d")
    k = 0
    accepted = failed = 0
    errors: list[str] = []
    go.wait(60)
    start = time.monotonic()
    cpu0 = _cpu()
    deadline = start + job.duration
    client: smtplib.SMTP | None = None

    def fail(exc: BaseException) -> None:
        nonlocal failed, client
        failed += 1
        if len(errors) < 5:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
        if client is not None:
            client.close()
            client = None
        time.sleep(0.02)  # a failing server must not turn the loop into a busy spin

    while time.monotonic() < deadline and accepted + failed < job.max_messages:
        rcpt = job.rcpts[(index + k) % len(job.rcpts)] if job.rcpts else job.rcpt
        seq = index * SEQ_PER_WORKER + k
        k += 1
        try:
            if client is None:
                client = _open(job, ctx)
            if job.stamp:
                t_sent = time.time()
                lat.append(_send_one(client, job, stamp_header(seq) + msg, rcpt))
                seqs.append(seq)
                sent_at.append(t_sent)
                accepted_at.append(time.time())
            else:
                lat.append(_send_one(client, job, msg, rcpt))
            accepted += 1
            if job.reuse:
                _expect(client.rset(), (250,), "RSET")
            else:
                client.quit()
                client = None
        except (smtplib.SMTPException, OSError, _Failure) as exc:
            fail(exc)
    end = time.monotonic()
    if client is not None:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
    results.put(
        {
            "index": index,
            "accepted": accepted,
            "failed": failed,
            "start": start,
            "end": end,
            "lat": lat.tobytes(),
            "marks": (seqs.tobytes(), sent_at.tobytes(), accepted_at.tobytes()),
            "cpu": _cpu() - cpu0,
            "errors": errors,
        }
    )


def collect(procs: list[Any], results: Any, timeout: float) -> RunResult:
    """Gather one result dict per worker process (bounded wait), then reap the processes."""
    out = RunResult()
    starts, ends = [], []
    deadline = time.monotonic() + timeout
    got = 0
    while got < len(procs) and time.monotonic() < deadline:
        try:
            item = results.get(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and results.empty():
                break
            continue
        got += 1
        out.accepted += item["accepted"]
        out.failed += item["failed"]
        starts.append(item["start"])
        ends.append(item["end"])
        lat = array("d")
        lat.frombytes(item["lat"])
        out.latencies.extend(lat)
        if "marks" in item:  # stamped SMTP runs only (httpgen's workers send none)
            raw_seqs, raw_sent, raw_accepted = item["marks"]
            seqs, sent_at, accepted_at = array("q"), array("d"), array("d")
            seqs.frombytes(raw_seqs)
            sent_at.frombytes(raw_sent)
            accepted_at.frombytes(raw_accepted)
            for seq, t_sent, t_acc in zip(seqs, sent_at, accepted_at, strict=True):
                out.marks[seq] = (t_sent, t_acc)
        out.errors.extend(item["errors"])
        out.client_cpu = (out.client_cpu or 0.0) + item["cpu"]
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(5)
    if got < len(procs):
        out.errors.append(f"{len(procs) - got} of {len(procs)} workers reported nothing (timed out)")
    if starts:
        out.wall = max(ends) - min(starts)
    return out


def run(job: SmtpJob, concurrency: int) -> RunResult:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(job, i, go, results), daemon=True) for i in range(concurrency)]
    for p in procs:
        p.start()
    time.sleep(0.3)  # let the workers reach go.wait()
    go.set()
    return collect(procs, results, job.duration + 90)


def probe(job: SmtpJob) -> str:
    """Send one message; '' when it was accepted, else the reason (checks the setup before timing)."""
    msg = build_message(job.mail_from, job.rcpt, job.size, 0)
    try:
        client = _open(job, _client_ctx())
        try:
            _send_one(client, job, msg)
        finally:
            client.close()
    except (smtplib.SMTPException, OSError, _Failure) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


STEP_NAMES = ("connect+220", "EHLO", "STARTTLS", "EHLO (TLS)", "AUTH", "MAIL", "RCPT", "DATA", "QUIT")


def steps(job: SmtpJob, sessions: int = 20) -> tuple[list[float], str]:
    """Median seconds per protocol step over ``sessions`` sequential sessions (concurrency 1).

    A step far above the others (e.g. ~40 ms) is usually Nagle's algorithm meeting a delayed ACK.
    """
    msg = build_message(job.mail_from, job.rcpt, job.size, 0)
    ctx = _client_ctx()
    token = base64.b64encode(f"\0{job.user}\0{job.password}".encode()).decode()
    rows: list[list[float]] = []
    for _ in range(sessions):
        marks = [time.perf_counter()]
        try:
            client = smtplib.SMTP(job.host, job.port, local_hostname="bench-client.localhost", timeout=30)
            try:
                marks.append(time.perf_counter())
                _expect(client.ehlo(), (250,), "EHLO")
                marks.append(time.perf_counter())
                _expect(client.starttls(context=ctx), (220,), "STARTTLS")
                marks.append(time.perf_counter())
                _expect(client.ehlo(), (250,), "EHLO after STARTTLS")
                marks.append(time.perf_counter())
                _expect(client.docmd("AUTH", "PLAIN " + token), (235,), "AUTH PLAIN")
                marks.append(time.perf_counter())
                _expect(client.mail(job.mail_from), (250,), "MAIL FROM")
                marks.append(time.perf_counter())
                _expect(client.rcpt(job.rcpt), (250, 251), "RCPT TO")
                marks.append(time.perf_counter())
                _expect(client.data(msg), (250,), "DATA")
                marks.append(time.perf_counter())
                client.quit()
                marks.append(time.perf_counter())
            finally:
                client.close()
        except (smtplib.SMTPException, OSError, _Failure) as exc:
            return [], f"{type(exc).__name__}: {exc}"
        rows.append([b - a for a, b in itertools.pairwise(marks)])
    return [sorted(col)[len(col) // 2] for col in zip(*rows, strict=True)], ""
