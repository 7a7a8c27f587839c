"""Plain SMTP load with Postfix's own ``smtp-source`` (C, no TLS, no AUTH, one connection per message)."""

from __future__ import annotations

import resource
import subprocess
import time

from .common import MESSAGE_BYTES, RunResult, tool


def run(
    host: str,
    port: int,
    *,
    concurrency: int,
    messages: int,
    mail_from: str,
    rcpt: str,
    timeout: float = 120.0,
) -> RunResult:
    """``smtp-source -s CONC -m N -l 2048``; it stops at the first refused message (exit 1)."""
    cmd = [
        tool("smtp-source"),
        "-c",
        "-s",
        str(concurrency),
        "-m",
        str(messages),
        "-l",
        str(MESSAGE_BYTES),
        "-f",
        mail_from,
        "-t",
        rcpt,
        "-M",
        "bench-client.localhost",
        f"{host}:{port}",
    ]
    t0 = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return RunResult(
            accepted=_last_count(out),
            failed=1,
            wall=time.monotonic() - t0,
            errors=[f"smtp-source did not finish within {timeout:.0f}s"],
        )
    wall = time.monotonic() - t0
    accepted = _last_count(res.stdout)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    result = RunResult(accepted=accepted, wall=wall, client_cpu=cpu)
    if res.returncode != 0:
        result.failed = max(1, messages - accepted)
        result.errors.append(res.stderr.strip()[:300] or f"smtp-source exit {res.returncode}")
    return result


def _last_count(out: str) -> int:
    """``-c`` prints a running counter (``1\\r2\\r...N\\r\\n``); the last number is the accepted count."""
    numbers = [tok for tok in out.replace("\n", "\r").split("\r") if tok.strip().isdigit()]
    return int(numbers[-1]) if numbers else 0
