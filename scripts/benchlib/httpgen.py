"""HTTP load for ``POST /v1/send``: worker processes, each one keep-alive connection (stdlib http.client).

http.client reads each response by its Content-Length, so a server that keeps the socket open after
``Connection: close`` does not hang the client.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import signal
import socket
import time
from array import array
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .common import MESSAGE_BYTES, RunResult
from .smtpgen import _cpu, collect


@dataclass(frozen=True)
class HttpJob:
    url: str  # http://127.0.0.1:PORT
    api_key: str
    did: str
    mail_from: str
    rcpt: str
    duration: float = 5.0
    max_messages: int = 1_000_000


def body_for(job: HttpJob, worker: int) -> bytes:
    doc = {"from": job.mail_from, "to": job.rcpt, "subject": f"bench {worker}", "text": ""}
    base = len(json.dumps(doc).encode())
    line = "The quick brown fox jumps over the lazy dog, 0123456789 bench filler text.\n"
    text = (line * (MESSAGE_BYTES // len(line) + 1))[: max(0, MESSAGE_BYTES - base - 20)]
    doc["text"] = text
    return json.dumps(doc).encode()


def _connect(host: str, port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.connect()
    # headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms each
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _worker(job: HttpJob, index: int, go: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and reaps us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parts = urlsplit(job.url)
    body = body_for(job, index)
    headers = {
        "Authorization": f"Bearer {job.api_key}",
        "X-Atmos-DID": job.did,
        "Content-Type": "application/json",
    }
    lat = array("d")
    accepted = failed = 0
    errors: list[str] = []
    conn: http.client.HTTPConnection | None = None
    go.wait(60)
    start = time.monotonic()
    cpu0 = _cpu()
    deadline = start + job.duration
    while time.monotonic() < deadline and accepted + failed < job.max_messages:
        try:
            if conn is None:
                conn = _connect(parts.hostname or "127.0.0.1", parts.port or 80)
            t0 = time.perf_counter()
            conn.request("POST", "/v1/send", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.perf_counter() - t0
            if resp.status == 200:
                accepted += 1
                lat.append(elapsed)
            else:
                failed += 1
                if len(errors) < 5:
                    errors.append(f"HTTP {resp.status}: {data[:150]!r}")
                time.sleep(0.02)
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            failed += 1
            if len(errors) < 5:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            if conn is not None:
                conn.close()
                conn = None
            time.sleep(0.02)
    end = time.monotonic()
    if conn is not None:
        conn.close()
    results.put(
        {
            "index": index,
            "accepted": accepted,
            "failed": failed,
            "start": start,
            "end": end,
            "lat": lat.tobytes(),
            "cpu": _cpu() - cpu0,
            "errors": errors,
        }
    )


def run(job: HttpJob, concurrency: int) -> RunResult:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(job, i, go, results), daemon=True) for i in range(concurrency)]
    for p in procs:
        p.start()
    time.sleep(0.3)
    go.set()
    return collect(procs, results, job.duration + 90)


def probe(job: HttpJob) -> str:
    """One POST /v1/send; '' when it returned 200, else the reason."""
    parts = urlsplit(job.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/send",
            body=body_for(job, 0),
            headers={
                "Authorization": f"Bearer {job.api_key}",
                "X-Atmos-DID": job.did,
                "Content-Type": "application/json",
            },
        )
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return "" if resp.status == 200 else f"HTTP {resp.status}: {data[:200]!r}"
