"""``scripts/fuzz [--quick] [--smtp N] [--http N] [--seconds S] [--seed N] [--concurrency N] [--keep]``

A hostile-input battery against a real ``atmos serve --dev`` (every listener on loopback port 0):
``--smtp`` sessions of random and malformed input, alternating between the submission and the
inbound port (``smtpcases``), ``--http`` malformed requests and websocket upgrades (``httpcases``),
and a few slowloris connections, all at once with ``--concurrency`` clients, bounded by ``--seconds``.
Meanwhile ``/healthz`` is probed every 100 ms on a fresh connection, from a process of its own
(``probe``), so the battery's own busy event loop does not count as the relay's latency.

Beside it a well-behaved member (``canary``, another process, from 127.0.0.2) sends one ordinary
message a second, by SMTP submission and ``POST /v1/send`` in turn, and afterwards waits until each
is delivered. The per-address budgets are lifted (``relay``): the battery measures robustness.

Prints: cases run, relay process exits (must be 0; the relay is restarted to go on), tracebacks in
its log and on the wire (must be 0), budget replies seen, RSS before and after, ``/healthz`` latency
p50/p99 (goal p99 <= 50 ms), and the member's messages tried/accepted/delivered. Exit status 0 only
when there was no exit, no traceback, every member message was accepted and delivered, and the final
SIGTERM stop returned 0.
Full size: 20,000 SMTP + 5,000 HTTP; ``--quick``: a few hundred of each (CI, tests/e2e/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from . import httpcases, smtpcases
from .relay import Relay, tracebacks
from .wire import Conn, client_tls

CASE_TIMEOUT = 60.0  # one session never holds a worker longer than this


@dataclass
class Tally:
    smtp: Counter[str] = field(default_factory=Counter)
    http: Counter[str] = field(default_factory=Counter)
    smtp_ports: Counter[str] = field(default_factory=Counter)
    client_errors: Counter[str] = field(default_factory=Counter)
    health_ms: list[float] = field(default_factory=list)
    health_bad: Counter[str] = field(default_factory=Counter)
    slowloris_cut: int = 0
    slowloris_held: int = 0
    wire_tracebacks: Counter[str] = field(default_factory=Counter)  # case -> sessions that received one
    wire_traceback_sample: bytes = b""
    throttled: Counter[str] = field(default_factory=Counter)  # budget reply -> sessions that got it

    def saw(self, case: str, conn: Conn) -> None:
        """What reached this client besides the case's outcome: tracebacks, budget replies."""
        if conn.traceback:
            self.wire_tracebacks[case] += 1
            self.wire_traceback_sample = self.wire_traceback_sample or conn.traceback
        self.throttled.update(conn.throttled)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


TLS = client_tls()  # once: building a context loads the CA bundle (tens of ms of the battery's CPU)


async def run_case(relay: Relay, tally: Tally, job: tuple[str, int], seed: int) -> None:
    kind, i = job
    rng = random.Random(f"{seed}:{kind}:{i}")
    target = relay.target
    try:
        with trio.move_on_after(CASE_TIMEOUT) as scope:
            if kind == "smtp":
                case = smtpcases.CASES[i % len(smtpcases.CASES)]
                submission = (i // len(smtpcases.CASES)) % 2 == 0
                conn = await Conn.open(target.submission if submission else target.inbound)
                tally.smtp_ports["submission" if submission else "inbound"] += 1
                name = case.__name__.removeprefix("case_")
                try:
                    tally.smtp[f"{name}:{await case(conn, target, rng, TLS, submission)}"] += 1
                finally:
                    tally.saw(name, conn)
                    await conn.aclose()
            else:
                hcase = httpcases.CASES[i % len(httpcases.CASES)]
                name = hcase.__name__.removeprefix("case_")
                conn = await Conn.open(target.http)
                try:
                    tally.http[f"{name}:{await hcase(conn, target, rng)}"] += 1
                finally:
                    tally.saw(name, conn)
                    await conn.aclose()
        if scope.cancelled_caught:
            tally.client_errors[f"{kind}: case timed out"] += 1
    except OSError as exc:  # refused connection: the relay may be restarting
        tally.client_errors[f"{kind}: {type(exc).__name__}"] += 1
    except Exception as exc:  # a bug in the battery itself: counted and shown, the run goes on
        tally.client_errors[f"{kind} battery bug: {type(exc).__name__}: {exc}"[:160]] += 1


async def watchdog(relay: Relay, done: trio.Event) -> None:
    while not done.is_set():
        await trio.to_thread.run_sync(relay.check)  # counts an exit and restarts the relay
        await trio.sleep(0.5)


async def slowloris(relay: Relay, tally: Tally, seconds: float) -> None:
    conn = await Conn.open(relay.target.http)
    try:
        if await httpcases.slowloris(conn, seconds):
            tally.slowloris_cut += 1
        else:
            tally.slowloris_held += 1
    finally:
        tally.saw("slowloris", conn)
        await conn.aclose()


async def battery(relay: Relay, tally: Tally, jobs: list[tuple[str, int]], args: argparse.Namespace) -> int:
    done = trio.Event()
    ran = 0
    async with trio.open_nursery() as background:
        background.start_soon(watchdog, relay, done)
        for _ in range(args.slowloris):
            background.start_soon(slowloris, relay, tally, 30.0)
        send, receive = trio.open_memory_channel[tuple[str, int]](0)

        async def worker() -> None:
            nonlocal ran
            async for job in receive:
                await run_case(relay, tally, job, args.seed)
                ran += 1
                if ran % 1000 == 0:
                    print(f"[fuzz] {ran} cases", file=sys.stderr, flush=True)

        with trio.move_on_after(args.seconds):
            async with trio.open_nursery() as workers:
                for _ in range(args.concurrency):
                    workers.start_soon(worker)
                async with send:
                    for job in jobs:
                        await send.send(job)
        done.set()
        background.cancel_scope.deadline = trio.current_time() + 35  # slowloris holders end on their own
    return ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[1] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a few hundred cases (CI)")
    parser.add_argument("--smtp", type=int)
    parser.add_argument("--http", type=int)
    parser.add_argument("--seconds", type=float, help="overall bound on the run")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--slowloris", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the relay's state dir and log")
    parser.add_argument("--only", default="", help="run only case kinds whose name contains this (e.g. overlong)")
    args = parser.parse_args(argv)
    args.smtp = args.smtp if args.smtp is not None else (330 if args.quick else 20_000)
    args.http = args.http if args.http is not None else (180 if args.quick else 5_000)
    args.seconds = args.seconds if args.seconds is not None else (300.0 if args.quick else 3600.0)
    args.slowloris = args.slowloris if args.slowloris is not None else (3 if args.quick else 20)
    jobs = [("smtp", i) for i in range(args.smtp) if args.only in smtpcases.CASES[i % len(smtpcases.CASES)].__name__]
    jobs += [("http", i) for i in range(args.http) if args.only in httpcases.CASES[i % len(httpcases.CASES)].__name__]
    random.Random(args.seed).shuffle(jobs)

    base = Path(tempfile.mkdtemp(prefix="atmos-fuzz-"))
    relay = Relay(base)
    tally = Tally()
    started = time.monotonic()
    relay.start()
    first_pid = relay.proc.pid if relay.proc else 0
    rss_before = relay.rss_kib()
    probe = subprocess.Popen(
        [sys.executable, "-m", "fuzzlib.probe", *map(str, relay.target.http)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    t = relay.target
    canary = subprocess.Popen(
        [sys.executable, "-m", "fuzzlib.canary", str(t.submission[1]), str(t.http[1]), t.did, t.api_key, t.domain],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    ran = trio.run(battery, relay, tally, jobs, args)
    rss_after = relay.rss_kib() if relay.alive() else 0  # before the drain: what the battery left
    probed = json.loads(probe.communicate("", timeout=60)[0])  # closing stdin ends the probe
    tally.health_ms, tally.health_bad = probed["ms"], Counter(probed["bad"])
    print("[fuzz] battery done; waiting for the well-behaved client's mail to be delivered", file=sys.stderr)
    member = json.loads(canary.communicate("", timeout=300)[0])  # it drains (bounded) and reports
    relay.check()
    stop_rc = relay.stop()
    elapsed = time.monotonic() - started
    found = tracebacks(relay.log_text())

    smtp_run, http_run = sum(tally.smtp.values()), sum(tally.http.values())
    http_5xx = {k: v for k, v in tally.http.items() if k.rsplit(":", 1)[1].startswith("5")}
    print(
        f"fuzz: seed {args.seed}, {elapsed:.0f} s, relay `atmos serve --dev` pid {first_pid} on loopback, "
        f"concurrency {args.concurrency}"
    )
    print(
        f"cases run: {ran} of {len(jobs)} (smtp {smtp_run}: submission {tally.smtp_ports['submission']}, "
        f"inbound {tally.smtp_ports['inbound']}; http {http_run}); slowloris {args.slowloris}: "
        f"{tally.slowloris_cut} cut off by the relay, {tally.slowloris_held} still open after 30 s"
    )
    print("smtp outcomes: " + ", ".join(f"{k} {v}" for k, v in tally.smtp.most_common(12)))
    print("http outcomes: " + ", ".join(f"{k} {v}" for k, v in tally.http.most_common(12)))
    print(f"http 5xx answers: {sum(http_5xx.values())} {dict(http_5xx) if http_5xx else ''}".rstrip())
    if tally.client_errors:
        print(
            "client-side errors (refused/timed out): " + ", ".join(f"{k} {v}" for k, v in tally.client_errors.items())
        )
    print(f"process exits: {len(relay.exits)}" + (f" (exit codes {relay.exits})" if relay.exits else ""))
    print(f"tracebacks in the log: {len(found)}")
    for summary, count in Counter(found).most_common(10):
        print(f"  {count} x {summary}")
    wire = sum(tally.wire_tracebacks.values())
    print(f"tracebacks on the wire: {wire}" + (f" {dict(tally.wire_tracebacks)}" if wire else ""))
    if wire:
        print(f"  first: {tally.wire_traceback_sample!r}")
    throttled = sum(tally.throttled.values())
    print(f"budget replies (per-address budgets lifted): {throttled} of {ran} cases"
          + (f" {dict(tally.throttled)}" if throttled else ""))
    print(f"RSS before: {rss_before / 1024:.1f} MiB, after: {rss_after / 1024:.1f} MiB")
    print(
        f"/healthz during the run: {len(tally.health_ms)} probes, p50 {percentile(tally.health_ms, 0.5):.1f} ms, "
        f"p99 {percentile(tally.health_ms, 0.99):.1f} ms (goal <= 50), max {max(tally.health_ms, default=0):.1f} ms"
        + (f", not 200: {dict(tally.health_bad)}" if tally.health_bad else "")
    )
    accepted = member["accepted_smtp"] + member["accepted_http"]
    print(
        f"well-behaved client (127.0.0.2, one message a second, SMTP submission and /v1/send in turn): "
        f"{member['tried']} tried, {accepted} accepted ({member['accepted_smtp']} SMTP, {member['accepted_http']} "
        f"HTTP), {member['sent']} delivered, {member['failed']} failed; accept p50 "
        f"{percentile(member['ms'], 0.5):.0f} ms, p99 {percentile(member['ms'], 0.99):.0f} ms, "
        f"max {max(member['ms'], default=0):.0f} ms" + (f", statuses {member['statuses']}" if
                                                         member["sent"] != accepted else "")
    )
    for failure in member["failures"]:
        print(f"  {failure}")
    print(f"final stop (SIGTERM): rc {stop_rc}")
    member_ok = member["tried"] > 0 and member["failed"] == 0 and member["sent"] == member["tried"]
    ok = not relay.exits and not found and not wire and member_ok and stop_rc == 0
    if args.keep or not ok:
        print(f"relay state and log kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "partial"]
