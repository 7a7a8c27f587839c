"""The ``delivery`` scenario: submission -> queue -> delivery -> sink, end to end, relay beside Postfix.

Each run gets fresh peers so nothing of an earlier scenario is queued or cached: a new ``smtp-sink`` that
dumps every message to a file (``sink.SmtpSink``), then a new relay (its own state dir, relayhost = that
sink) or a new private Postfix instance (own config and queue dirs, ``relayhost = [127.0.0.1]:<sink>``,
default concurrency settings). One unstamped warm-up message proves the path first. Then the STARTTLS+AUTH
generator with connection reuse submits N stamped messages (``X-Bench-Seq``) as fast as it can, to one
destination domain or spread over d0.example ... d49.example, and the bench waits (bounded; it gives up
early when nothing arrives for ``STALL`` seconds) until the sink has every accepted message.

  msg/s    delivered messages / (last arrival at the sink - first 250 after the final dot)
           (when some never arrive: delivered / (time the wait gave up - first accept))
  latency  per message, MAIL FROM sent by the generator -> the sink closed its dump file (wall clock)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import smtpgen
from .common import MAIL_FROM, RunResult, log, median_run, percentile, system_busy_seconds, tree_cpu_seconds
from .postfix import SASL_PASSWORD, SASL_USER, PostfixPeer
from .relay import BENCH_DID, RelayPeer, RelayStartError
from .sink import SmtpSink

STALL = 30.0  # seconds without a new arrival before the wait gives up (the relay's first retry is at 60 s)
WARMUP_TIMEOUT = 30.0


def recipients(domains: int) -> tuple[str, ...]:
    return tuple(f"rcpt{i}@d{i}.example" for i in range(domains))


@dataclass
class DeliveryRun:
    """One side's run: the table's RunResult plus what the detail lines print."""

    result: RunResult
    submitted: int = 0  # accepted by the server (250 after the dot)
    submit_failed: int = 0
    submit_rate: float = 0.0  # accept rate of the submission phase alone
    delivered: int = 0  # stamped messages found at the sink
    extra: int = 0  # stamped messages at the sink the generator saw fail, and duplicates
    waited: float = 0.0  # seconds from the end of the submission to the last arrival (or giving up)
    gave_up: str = ""
    counters: str = ""  # the server's own delivery counters at the end


@dataclass
class DeliveryRow:
    name: str  # "delivery-1", "delivery-50"
    label: str
    domains: int
    ours: list[DeliveryRun] = field(default_factory=list)
    postfix: list[DeliveryRun] = field(default_factory=list)


class Side(Protocol):
    label: str
    sink_base: Path  # the run's smtp-sink works here (beside the peer's own dir)

    def start(self, sink: SmtpSink) -> None: ...
    def job(self, rcpts: tuple[str, ...], per_worker: int, duration: float) -> smtpgen.SmtpJob: ...
    def server_pid(self) -> int | None: ...
    def counters(self) -> str: ...
    def stop(self) -> None: ...


class RelaySide:
    label = "relay"

    def __init__(self, root: Path, base: Path, cert: Path, key: Path) -> None:
        self.root, self.base, self.cert, self.key = root, base, cert, key
        self.sink_base = base.parent / f"{base.name}-sink"
        self.peer: RelayPeer | None = None

    def start(self, sink: SmtpSink) -> None:
        self.peer = RelayPeer(self.root, self.base, self.cert, self.key, relayhost=sink.relayhost)
        try:
            self.peer.start()
            self.peer.enroll()
        except (RelayStartError, OSError) as exc:
            raise RuntimeError(str(exc).splitlines()[0]) from None

    def job(self, rcpts: tuple[str, ...], per_worker: int, duration: float) -> smtpgen.SmtpJob:
        assert self.peer is not None
        host, port = self.peer.submission
        return smtpgen.SmtpJob(
            host, port, BENCH_DID, self.peer.api_key, MAIL_FROM, rcpts[0],
            reuse=True, duration=duration, max_messages=per_worker, rcpts=rcpts, stamp=True,
        )  # fmt: skip

    def server_pid(self) -> int | None:
        return self.peer.pid if self.peer is not None and self.peer.alive() else None

    def counters(self) -> str:
        if self.peer is None or not self.peer.alive():
            return "relay not running"
        try:
            stats = self.peer.queue_stats()
        except (OSError, ValueError) as exc:
            return f"GET /admin/api/queue failed: {exc}"
        keys = ("delivered", "deferred", "bounced", "in_flight", "live_messages")
        return "/admin/api/queue stats: " + " ".join(f"{k}={stats.get(k, '?')}" for k in keys)

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
            self.peer = None


class PostfixSide:
    label = "Postfix"

    def __init__(self, base: Path, cert: Path, key: Path) -> None:
        self.base, self.cert, self.key = base, cert, key
        self.sink_base = base.parent / f"{base.name}-sink"
        self.peer: PostfixPeer | None = None

    def start(self, sink: SmtpSink) -> None:
        self.peer = PostfixPeer(self.base, self.cert, self.key, idle_procs=10, sink_port=sink.port)
        self.peer.start()

    def job(self, rcpts: tuple[str, ...], per_worker: int, duration: float) -> smtpgen.SmtpJob:
        assert self.peer is not None
        return smtpgen.SmtpJob(
            "127.0.0.1", self.peer.submission_port, SASL_USER, SASL_PASSWORD, MAIL_FROM, rcpts[0],
            reuse=True, duration=duration, max_messages=per_worker, rcpts=rcpts, stamp=True,
        )  # fmt: skip

    def server_pid(self) -> int | None:
        return self.peer.master_pid() if self.peer is not None else None

    def counters(self) -> str:
        if self.peer is None:
            return "Postfix not running"
        c = self.peer.delivery_counts()
        return (
            f"maillog: status=sent {c['sent']} status=deferred {c['deferred']} status=bounced {c['bounced']}"
            f"; still queued {self.peer.queued()}"
        )

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
            self.peer = None


def _wait_arrivals(sink: SmtpSink, target: int, timeout: float) -> tuple[int, str]:
    """Poll the sink's file count (bounded) until ``target`` messages arrived; (arrived, why it gave up)."""
    start = time.monotonic()
    deadline = start + timeout
    last_count, last_change = sink.count(), start
    while last_count < target:
        now = time.monotonic()
        if now >= deadline:
            return last_count, f"timeout: {timeout:.0f} s"
        if now - last_change >= STALL:
            return last_count, f"nothing arrived for {STALL:.0f} s"
        if not sink.alive():
            return last_count, "smtp-sink exited"
        time.sleep(0.05)
        n = sink.count()
        if n != last_count:
            last_count, last_change = n, time.monotonic()
    return last_count, ""


def run_once(side: Side, domains: int, messages: int, conc: int, timeout: float) -> DeliveryRun:
    """One run of one side: fresh sink and peer, warm-up, stamped load, wait, collect; always tears down."""
    sink = SmtpSink(side.sink_base, dump=True)
    try:
        try:
            sink.start()
        except (RuntimeError, OSError) as exc:
            return DeliveryRun(RunResult(skipped=f"smtp-sink did not start: {exc}"))
        try:
            side.start(sink)
        except (RuntimeError, OSError, KeyError) as exc:
            return DeliveryRun(RunResult(skipped=f"{side.label} did not start: {exc}"))
        rcpts = recipients(domains)
        per_worker = max(1, round(messages / conc))
        job = side.job(rcpts, per_worker, duration=timeout)
        why = smtpgen.probe(job)
        if why:
            return DeliveryRun(RunResult(skipped=f"warm-up submission failed: {why}"))
        arrived, why = _wait_arrivals(sink, 1, WARMUP_TIMEOUT)
        if why:
            return DeliveryRun(RunResult(skipped=f"warm-up message did not reach the sink ({why})"))
        baseline = arrived

        pid = side.server_pid()
        t0, busy0 = time.monotonic(), system_busy_seconds()
        cpu0 = tree_cpu_seconds(pid) if pid else 0.0
        gen = smtpgen.run(job, conc)
        t_sub = time.monotonic()
        arrived, gave_up = _wait_arrivals(sink, baseline + len(gen.marks), timeout)
        t_end_wall = time.time()
        waited = time.monotonic() - t_sub
        cpu = tree_cpu_seconds(pid) - cpu0 if pid else None
        window, busy = time.monotonic() - t0, system_busy_seconds() - busy0
        time.sleep(0.3)  # the last dump file is closed a moment after it is counted
        got = sink.arrivals()
        counters = side.counters()
    finally:
        side.stop()
        sink.stop()

    at = {seq: t for seq, t in got.at.items() if seq in gen.marks}
    missing = len(gen.marks) - len(at)
    first_accept = min((acc for _sent, acc in gen.marks.values()), default=0.0)
    end = max(at.values(), default=first_accept) if not missing else t_end_wall
    res = RunResult(
        accepted=len(at),
        failed=gen.failed + missing,
        wall=max(0.0, end - first_accept),
        latencies=[t - gen.marks[seq][0] for seq, t in at.items()],
        errors=list(gen.errors),
        cpu=cpu,
        client_cpu=gen.client_cpu,
        window=window,
        system_busy=busy,
    )
    if missing:
        res.errors.insert(0, f"{missing} of {len(gen.marks)} accepted messages not at the sink ({gave_up})")
    return DeliveryRun(
        res,
        submitted=len(gen.marks),
        submit_failed=gen.failed,
        submit_rate=gen.rate,
        delivered=len(at),
        extra=len(got.at) - len(at) + got.copies,
        waited=waited,
        gave_up=gave_up,
        counters=counters,
    )


def run_rows(
    rows: list[DeliveryRow],
    rounds: int,
    sides: Callable[[DeliveryRow, int], list[tuple[Side | None, str, list[DeliveryRun]]]],
    messages: int,
    conc: int,
    timeout: float,
    quiesce: Callable[[], None],
) -> None:
    """All rounds of all rows; ``sides(row, round)`` gives (side or None, why skipped, output list) pairs."""
    for round_no in range(rounds):
        for row in rows:
            order = sides(row, round_no)
            if round_no % 2:
                order.reverse()  # alternate who goes first, so drift between runs hits both sides
            for side, why, out in order:
                if side is None:
                    out.append(DeliveryRun(RunResult(skipped=why)))
                    continue
                quiesce()
                run = run_once(side, row.domains, messages, conc, timeout)
                out.append(run)
                res = run.result
                if res.skipped:
                    log(f"run {round_no + 1}/{rounds} {row.name} {side.label}: skipped: {res.skipped}")
                    continue
                log(
                    f"run {round_no + 1}/{rounds} {row.name:<11} {side.label:<8} {run.submitted} submitted "
                    f"({run.submit_rate:.0f} msg/s), {run.delivered} at the sink in {res.wall:.1f} s = "
                    f"{res.rate:.1f} msg/s end to end" + (f"  ({res.errors[0]})" if res.errors else "")
                )


def median_delivery(runs: list[DeliveryRun]) -> DeliveryRun | None:
    if not runs:
        return None
    m = median_run([r.result for r in runs])
    return next((r for r in runs if r.result is m), None)


def detail_lines(rows: list[DeliveryRow]) -> list[str]:
    """Per row and side (the median run): submission, delivery, latency spread, the server's counters."""
    out: list[str] = []
    for row in rows:
        name = f"{row.domains} domain{'s' if row.domains > 1 else ''}"
        for side, runs in (("relay  ", row.ours), ("Postfix", row.postfix)):
            run = median_delivery(runs)
            if run is None:
                continue
            res = run.result
            if res.skipped:
                out.append(f"{name:<10} {side}: n/a - {res.skipped}")
                continue
            lat = sorted(res.latencies)
            spread = (
                "e2e ms p50/p90/p99/max " + "/".join(f"{percentile(lat, q) * 1000:.0f}" for q in (50, 90, 99, 100))
                if lat
                else "no latencies"
            )
            line = (
                f"{name:<10} {side}: {run.submitted} submitted at {run.submit_rate:.0f} msg/s"
                + (f" ({run.submit_failed} failed)" if run.submit_failed else "")
                + f", {run.delivered}/{run.submitted} at the sink {run.waited:.1f} s after the submission ended"
                + (f" [gave up: {run.gave_up}]" if run.gave_up else "")
                + (f", {run.extra} extra/duplicate" if run.extra else "")
                + f"; {spread}; {run.counters}"
            )
            out.append(line)
    return out
