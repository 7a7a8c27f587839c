"""``scripts/bench [--quick] [--only NAME[,NAME]]``: the relay's figures beside Postfix's, same run.

Scenarios (``--only`` names):
  plain   smtp-source -s 20 -m N -l 2048, one connection per message, no TLS/AUTH. Postfix: its durable
          queue. Relay: its inbound listener to postmaster@operator (if it has one; the submission port
          refuses mail without STARTTLS+AUTH, by design).
  tls     Python generator, one new connection per message: EHLO, STARTTLS, EHLO, AUTH PLAIN, MAIL, RCPT,
          DATA 2 KB, QUIT. Same generator against both.
  reuse   same, one connection per worker, RSET between messages.
  http    POST /v1/send (relay only, Postfix has no HTTP API), keep-alive connections.
  steps   one STARTTLS+AUTH session at a time, median time of each protocol step (finds stalls such as
          Nagle's algorithm meeting a delayed ACK, ~40 ms)
  delivery  end to end, submission -> queue -> smtp-sink: N messages (600 --quick, 2,000 full) by the
          STARTTLS+AUTH reuse generator to 1 destination domain, then spread over 50 (d0..d49.example);
          fresh relay / fresh Postfix instance and a fresh dumping smtp-sink per run (see delivery.py).
  idle    RSS with 1,000 idle connections to the SMTP port (greeting read, then held).

msg/s = accepted messages / wall time of the load phase; latency = MAIL FROM -> 250 after the final dot
(HTTP: request -> 200), measured in the generator. CPU ms/msg = the server's process-tree CPU time from the
start of the load until its queue is empty again, per accepted message (accept + sign + deliver); the
reused-connection row is also printed on its own line beside the 2 ms target and Postfix's figure.
delivery rows: msg/s = messages at the sink / (last arrival - first accept), latency = MAIL FROM -> arrival
at the sink. --quick: each scenario once; full: median of 3. Both relays always deliver to a loopback
smtp-sink of the bench (relayhost; never DNS/MX).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.ports import free_port

from . import delivery, httpgen, idle, smtpgen, smtpsource
from .common import (
    MAIL_FROM,
    RCPT_TO,
    RunResult,
    log,
    make_cert,
    median_run,
    rss_kib,
    system_busy_seconds,
    tree_cpu_seconds,
    tree_memory_kib,
)
from .postfix import SASL_PASSWORD, SASL_USER, PostfixPeer, ensure_installed
from .relay import BENCH_DID, RelayPeer, RelayStartError
from .sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("steps", "plain", "tls", "reuse", "http", "delivery", "idle")
DELIVERY_DOMAINS = (1, 50)
CONC = 20
IDLE_CONNECTIONS = 1000


@dataclass
class Row:
    name: str
    label: str
    conc: int
    ours: list[RunResult] = field(default_factory=list)
    postfix: list[RunResult] = field(default_factory=list)


@dataclass
class Plan:
    runs: int
    duration: float  # seconds of load per generator run
    source_messages: int  # smtp-source -m
    delivery_messages: int  # per delivery run (rounded to a multiple of the concurrency)
    delivery_timeout: float  # bound on the wait for the sink to receive them all


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = (
            Plan(runs=1, duration=5.0, source_messages=4000, delivery_messages=600, delivery_timeout=90.0)
            if args.quick
            else Plan(runs=3, duration=10.0, source_messages=8000, delivery_messages=2000, delivery_timeout=150.0)
        )
        self.conc = args.conc
        self.delivery_n = max(1, round(self.plan.delivery_messages / self.conc)) * self.conc
        self.only = set(args.only.split(",")) if args.only else set(SCENARIOS)
        unknown = self.only - set(SCENARIOS)
        if unknown:
            raise SystemExit(f"bench: unknown scenario {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
        self.work = Path(tempfile.mkdtemp(prefix="atmos-bench-", dir=args.workdir))
        os.chmod(self.work, 0o755)  # Postfix daemons (user postfix) must reach their dirs below it
        self.postfix: PostfixPeer | None = None
        self.relay: RelayPeer | None = None
        self.relay_sink: SmtpSink | None = None  # the main relay's destination (relayhost), no dump
        self.cert_key: tuple[Path, Path] | None = None
        self.postfix_error = ""
        self.postfix_version = "(not running)"
        self.relay_error = ""
        self.ours_skip: dict[str, str] = {}
        self.postfix_skip: dict[str, str] = {}
        self.rows: list[Row] = []
        self.delivery_rows: list[delivery.DeliveryRow] = []
        self.idle_lines: list[str] = []
        self.step_lines: list[str] = []
        self.background: float | None = None

    # --- peers -----------------------------------------------------------------------------------

    def sample_background(self) -> None:
        """How busy the machine is before the bench loads it (other jobs make every figure noisy)."""
        busy0, t0 = system_busy_seconds(), time.monotonic()
        time.sleep(2.0)
        self.background = (system_busy_seconds() - busy0) / (time.monotonic() - t0)

    def start_peers(self) -> None:
        cert, key = self.cert_key = make_cert(self.work)
        try:
            ensure_installed()
            self.postfix = PostfixPeer(self.work / "postfix", cert, key, idle_procs=IDLE_CONNECTIONS + 50)
            self.postfix.start()
            self.postfix_version = self.postfix.version
        except (RuntimeError, OSError, subprocess.SubprocessError, KeyError) as exc:
            self.postfix_error = f"{type(exc).__name__}: {exc}"
            log(f"Postfix could not start: {self.postfix_error}")
            if self.postfix is not None:
                self.postfix.stop()
            self.postfix = None
        if self.args.no_relay:
            self.relay_error = "skipped (--no-relay)"
            return
        # The relay always gets a relayhost: a production-mode relay without one would look up MX records
        # with the system resolver. Its own smtp-sink (no dump), or a closed loopback port if none starts.
        try:
            self.relay_sink = SmtpSink(self.work / "relay-sink", dump=False).start()
            relayhost = self.relay_sink.relayhost
        except (RuntimeError, OSError) as exc:
            log(f"smtp-sink for the relay did not start ({exc}); its mail will wait in its queue")
            self.relay_sink = None
            relayhost = f"[127.0.0.1]:{free_port()}"
        self.relay = RelayPeer(ROOT, self.work / "relay", cert, key, relayhost=relayhost)
        try:
            self.relay.start()
            self.relay.enroll()
        except (RelayStartError, OSError, subprocess.SubprocessError) as exc:
            self.relay_error = str(exc)
            log("relay could not start; measuring Postfix alone (the error is printed at the end)")
            self.relay.stop()
            self.relay = None

    def stop_peers(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        if self.relay_sink is not None:
            self.relay_sink.stop()
            self.relay_sink = None
        if self.postfix is not None:
            self.postfix.stop()
            self.postfix = None

    # --- jobs --------------------------------------------------------------------------------------

    def smtp_job(self, ours: bool, reuse: bool) -> smtpgen.SmtpJob:
        if ours:
            assert self.relay is not None
            host, port = self.relay.submission
            return smtpgen.SmtpJob(
                host,
                port,
                BENCH_DID,
                self.relay.api_key,
                MAIL_FROM,
                RCPT_TO,
                reuse=reuse,
                duration=self.plan.duration,
            )
        assert self.postfix is not None
        return smtpgen.SmtpJob(
            "127.0.0.1",
            self.postfix.submission_port,
            SASL_USER,
            SASL_PASSWORD,
            MAIL_FROM,
            RCPT_TO,
            reuse=reuse,
            duration=self.plan.duration,
        )

    def http_job(self) -> httpgen.HttpJob:
        assert self.relay is not None
        return httpgen.HttpJob(
            self.relay.http, self.relay.api_key, BENCH_DID, MAIL_FROM, RCPT_TO, duration=self.plan.duration
        )

    def relay_inbound_rcpt(self) -> str:
        return "postmaster@relay.bench.localhost"

    # --- probes: one message each way before anything is timed -----------------------------------

    def probe(self) -> None:
        if self.relay is None:
            for name in SCENARIOS:
                self.ours_skip[name] = "relay not running"
        else:
            why = smtpgen.probe(self.smtp_job(True, False))
            for name in ("tls", "reuse"):
                if why:
                    self.ours_skip[name] = f"probe failed: {why}"
            why = httpgen.probe(self.http_job())
            if why:
                self.ours_skip["http"] = f"probe failed: {why}"
            inbound = self.relay.inbound
            if inbound is None:
                self.ours_skip["plain"] = (
                    "no plain-SMTP accept path (submission needs STARTTLS+AUTH; no inbound listener in ATMOS_READY)"
                )
            else:
                why = smtpgen.probe(
                    smtpgen.SmtpJob(
                        inbound[0], inbound[1], "", "", MAIL_FROM, self.relay_inbound_rcpt(), starttls=False
                    )
                )
                if why:
                    self.ours_skip["plain"] = f"inbound probe to {self.relay_inbound_rcpt()} failed: {why}"
        self.postfix_skip["http"] = "Postfix has no HTTP submission API"
        if self.postfix is None:
            for name in ("plain", "tls", "reuse"):
                self.postfix_skip[name] = "Postfix not running"
        else:
            why = smtpgen.probe(self.smtp_job(False, False))
            if why:
                self.postfix_skip["tls"] = self.postfix_skip["reuse"] = f"probe failed: {why}"
                log(f"Postfix STARTTLS+AUTH probe failed: {why}\n{self.postfix.maillog(15)}")
        for side, skips in (("relay", self.ours_skip), ("Postfix", self.postfix_skip)):
            for name, why in sorted(skips.items()):
                if name in self.only and name != "idle":
                    log(f"{side}: {name} skipped: {why}")

    # --- one run of each side ----------------------------------------------------------------------

    def quiesce(self) -> None:
        """Before any timed run: let both deliver what the previous run queued (it would steal CPU)."""
        if self.postfix is not None:
            left = self.postfix.wait_drained(60)
            if left:
                log(f"Postfix queue still holds {left} messages after 60 s; measuring anyway")
        if self.relay is not None and self.relay.alive() and self.relay_sink is not None:
            t0 = time.monotonic()
            rest = self.relay.wait_drained(60)
            if rest:
                log(f"relay spool still holds {rest} messages after 60 s; measuring anyway")
            elif time.monotonic() - t0 > 1:
                log(f"waited {time.monotonic() - t0:.1f} s for the relay to deliver the previous run's mail")

    @staticmethod
    def measured(
        server_pid: int | None, load: Callable[[], RunResult], drain: Callable[[], object] | None = None
    ) -> RunResult:
        """Run ``load`` and account CPU over the same window: the server's tree, the generator, the rest.

        ``drain`` (waits until the server's queue is empty): also the server's CPU from the start of the
        load until then, i.e. accept + sign + deliver of this run's messages (``cpu_per_message``)."""
        t0, busy0 = time.monotonic(), system_busy_seconds()
        cpu0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
        res = load()
        if server_pid:
            res.cpu = tree_cpu_seconds(server_pid) - cpu0  # reaped children count via cutime/cstime
        res.window = time.monotonic() - t0
        res.system_busy = system_busy_seconds() - busy0
        # Not drained (still queued, or no answer): the figure would be a guess, so it is not given.
        if server_pid and drain is not None and not res.skipped and drain() == 0:
            res.cpu_drained = tree_cpu_seconds(server_pid) - cpu0
        return res

    def run_ours(self, name: str) -> RunResult:
        if name in self.ours_skip:
            return RunResult(skipped=self.ours_skip[name])
        assert self.relay is not None
        if not self.relay.alive():
            return RunResult(skipped="relay process exited")
        relay = self.relay
        self.quiesce()
        if name == "plain":
            inbound = relay.inbound
            assert inbound is not None
            return self.measured(
                relay.pid,
                lambda: smtpsource.run(
                    inbound[0],
                    inbound[1],
                    concurrency=self.conc,
                    messages=self.plan.source_messages,
                    mail_from=MAIL_FROM,
                    rcpt=self.relay_inbound_rcpt(),
                ),
                drain=self.relay_drain(relay),
            )
        if name == "http":
            return self.measured(
                relay.pid, lambda: httpgen.run(self.http_job(), self.conc), drain=self.relay_drain(relay)
            )
        return self.measured(
            relay.pid,
            lambda: smtpgen.run(self.smtp_job(True, reuse=name == "reuse"), self.conc),
            drain=self.relay_drain(relay),
        )

    def relay_drain(self, relay: RelayPeer) -> Callable[[], int | None] | None:
        """Waits for the relay's spool to empty (only when it has a sink to deliver to)."""
        if self.relay_sink is None:
            return None
        return lambda: relay.wait_drained(60)

    def run_postfix(self, name: str) -> RunResult:
        if name in self.postfix_skip:
            return RunResult(skipped=self.postfix_skip[name])
        postfix = self.postfix
        assert postfix is not None
        self.quiesce()
        if name == "plain":
            return self.measured(
                postfix.master_pid(),
                lambda: smtpsource.run(
                    "127.0.0.1",
                    postfix.plain_port,
                    concurrency=self.conc,
                    messages=self.plan.source_messages,
                    mail_from=MAIL_FROM,
                    rcpt=RCPT_TO,
                ),
                drain=lambda: postfix.wait_drained(60),
            )
        return self.measured(
            postfix.master_pid(),
            lambda: smtpgen.run(self.smtp_job(False, reuse=name == "reuse"), self.conc),
            drain=lambda: postfix.wait_drained(60),
        )

    def load_scenarios(self) -> None:
        labels = {
            "plain": "plain SMTP, new conn/msg (smtp-source)",
            "tls": "STARTTLS+AUTH, new conn/msg",
            "reuse": "STARTTLS+AUTH, reused conn (RSET)",
            "http": "HTTP POST /v1/send, keep-alive",
        }
        self.rows = [Row(n, labels[n], self.conc) for n in ("plain", "tls", "reuse", "http") if n in self.only]
        for round_no in range(self.plan.runs):
            for row in self.rows:
                sides: list[tuple[str, Callable[[str], RunResult], list[RunResult]]] = [
                    ("relay", self.run_ours, row.ours),
                    ("Postfix", self.run_postfix, row.postfix),
                ]
                if round_no % 2:
                    sides.reverse()  # alternate who goes first, so drift between runs hits both sides
                for side, fn, out in sides:
                    res = fn(row.name)
                    out.append(res)
                    if not res.skipped:
                        log(
                            f"run {round_no + 1}/{self.plan.runs} {row.name:<6} {side:<8} "
                            f"{res.accepted:>6} ok {res.failed:>4} failed in {res.wall:5.1f}s = "
                            f"{res.rate:8.1f} msg/s" + (f"  ({res.errors[0]})" if res.errors else "")
                        )

    # --- end to end: submission -> queue -> sink -------------------------------------------------------

    def delivery_scenario(self) -> None:
        assert self.cert_key is not None
        cert, key = self.cert_key
        n = self.delivery_n
        self.delivery_rows = [
            delivery.DeliveryRow(f"delivery-{d}", f"delivery e2e, {d} dest domain{'s' if d > 1 else ''}, {n} msgs", d)
            for d in DELIVERY_DOMAINS
        ]

        def sides(
            row: delivery.DeliveryRow, round_no: int
        ) -> list[tuple[delivery.Side | None, str, list[delivery.DeliveryRun]]]:
            base = self.work / "delivery" / f"{row.name}-r{round_no + 1}"
            ours: delivery.Side | None = None
            theirs: delivery.Side | None = None
            why_ours = self.ours_skip.get("reuse", "")
            if self.relay is None:
                why_ours = self.relay_error.splitlines()[0] if self.relay_error else "relay not running"
            elif not why_ours:
                ours = delivery.RelaySide(ROOT, base / "relay", cert, key)
            why_pfx = self.postfix_skip.get("reuse", "")
            if self.postfix is None:
                why_pfx = "Postfix not running"
            elif not why_pfx:
                theirs = delivery.PostfixSide(base / "postfix", cert, key)
            return [(ours, why_ours, row.ours), (theirs, why_pfx, row.postfix)]

        delivery.run_rows(
            self.delivery_rows,
            self.plan.runs,
            sides,
            n,
            self.conc,
            self.plan.delivery_timeout,
            self.quiesce,
        )

    # --- one session, step by step ---------------------------------------------------------------------

    def session_steps(self) -> None:
        sides = []
        if self.relay is not None and "tls" not in self.ours_skip:
            sides.append(("relay", self.smtp_job(True, False)))
        if self.postfix is not None and "tls" not in self.postfix_skip:
            sides.append(("Postfix", self.smtp_job(False, False)))
        names = [*smtpgen.STEP_NAMES, "total"]
        table = [["", *names]]
        for label, job in sides:
            medians, err = smtpgen.steps(job, 20)
            if err:
                table.append([label, f"failed: {err}"])
                continue
            table.append([label, *(f"{v * 1000:.1f}" for v in medians), f"{sum(medians) * 1000:.1f}"])
        if len(table) == 1:
            return
        widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(table[0]))]
        for r in table:
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=False)]
            self.step_lines.append("  ".join(cells))

    # --- idle connections ------------------------------------------------------------------------------

    def idle_memory(self) -> None:
        n = IDLE_CONNECTIONS
        if self.relay is not None and self.relay.alive():
            host, port = self.relay.submission
            pid = self.relay.pid
            before = tree_memory_kib(pid)[1]
            with idle.hold(host, port, n) as (greeted, err):
                time.sleep(0.5)
                procs, rss, _pss = tree_memory_kib(pid)
                own = rss_kib(pid)
            per = (rss - before) / max(1, greeted)
            line = (
                f"relay   : {greeted}/{n} idle connections greeted; VmRSS {own / 1024:.1f} MiB (pid {pid})"
                f"; process tree {rss / 1024:.1f} MiB over {procs} process(es); before {before / 1024:.1f}"
                f" MiB, +{per:.1f} KiB per connection"
            )
            self.idle_lines.append(line + (f"  [{err}]" if err else ""))
        else:
            why = self.relay_error.splitlines()[0] if self.relay_error else "relay not running"
            self.idle_lines.append(f"relay   : not measured ({why})")
        if self.postfix is not None:
            master = self.postfix.master_pid()
            if master is None:
                self.idle_lines.append("Postfix : not measured (no master pid)")
                return
            _, before_rss, before_pss = tree_memory_kib(master)
            with idle.hold("127.0.0.1", self.postfix.idle_port, n, timeout=120) as (greeted, err):
                time.sleep(0.5)
                procs, rss, pss = tree_memory_kib(master)
            line = (
                f"Postfix : {greeted}/{n} idle connections greeted; {procs} processes (one smtpd per "
                f"connection): summed PSS {pss / 1024:.1f} MiB (+{(pss - before_pss) / 1024:.1f} MiB for "
                f"the connections), summed VmRSS {rss / 1024:.1f} MiB (+{(rss - before_rss) / 1024:.1f} MiB;"
                " counts shared pages once per process)"
            )
            self.idle_lines.append(line + (f"  [{err}]" if err else ""))

    # --- report ----------------------------------------------------------------------------------------

    def header(self) -> list[str]:
        try:
            rev = (
                subprocess.run(
                    ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.strip()
                or "?"
            )
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "relay", "spool", "web"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            if dirty:
                rev += f"+uncommitted ({len(dirty.splitlines())} paths under relay/ spool/ web/)"
        except (OSError, subprocess.SubprocessError):
            rev = "?"
        cpu = "?"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mode = "quick (1 run per scenario)" if self.args.quick else f"full (median of {self.plan.runs} runs)"
        cores = os.cpu_count() or 1
        background = "?"
        if self.background is not None:
            background = f"{self.background:.2f} of {cores} cores busy before the bench started"
            if self.background > 0.25 * cores:
                background += " -- WARNING: other jobs are loading this machine, the figures are noisy"
        return [
            f"Atmosphere Relay bench  {datetime.datetime.now().isoformat(timespec='seconds')}  mode: {mode}",
            f"host: {os.cpu_count()} vCPU {cpu}; Python {platform.python_version()}; relay git {rev}; "
            f"Postfix {self.postfix_version}",
            f"load: {self.plan.duration:.0f} s per generator run, "
            f"smtp-source -m {self.plan.source_messages}; 2 KB messages; concurrency {self.conc}; "
            "loopback only; same ECDSA P-256 cert for both",
            f"background: {background}",
        ]

    def report(self) -> str:
        def rate(runs: list[RunResult]) -> str:
            if not runs:
                return "-"
            m = median_run(runs)
            return "n/a" if m.skipped else f"{m.rate:,.0f}"

        def lat(runs: list[RunResult]) -> str:
            if not runs:
                return "-"
            m = median_run(runs)
            if m.skipped or not m.latencies:
                return "-"
            return f"{m.pct(50) * 1000:.1f} / {m.pct(99) * 1000:.1f}"

        def ratio(row: Row) -> str:
            if not row.ours or not row.postfix:
                return "-"
            a, b = median_run(row.ours), median_run(row.postfix)
            if a.skipped or b.skipped or b.rate <= 0:
                return "-"
            return f"{a.rate / b.rate:.2f}x"

        def cpu(runs: list[RunResult], kind: str) -> str:
            if not runs or median_run(runs).skipped:
                return "-"
            m = median_run(runs)
            share = {"server": m.cpu_share, "gen": m.client_share, "other": m.other_share}[kind]
            return "-" if share is None else f"{share * 100:.0f}%"

        def per_msg(runs: list[RunResult]) -> float | None:
            if not runs or median_run(runs).skipped:
                return None
            return median_run(runs).cpu_per_message

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.2f}"

        def fails(runs: list[RunResult]) -> str:
            good = [r for r in runs if not r.skipped]
            return str(sum(r.failed for r in good)) if good else "-"

        head = [
            "scenario",
            "conc",
            "ours msg/s",
            "Postfix msg/s",
            "ratio",
            "ours p50/p99 ms",
            "Postfix p50/p99 ms",
            "server CPU ours/Pfx",
            "CPU ms/msg ours/Pfx",
            "gen CPU ours/Pfx",
            "other CPU ours/Pfx",
            "failed ours/Pfx",
        ]
        table = [head]
        rows = self.rows + [
            Row(d.name, d.label, self.conc, [r.result for r in d.ours], [r.result for r in d.postfix])
            for d in self.delivery_rows
        ]
        for row in rows:
            table.append(
                [
                    row.label,
                    str(row.conc),
                    rate(row.ours),
                    rate(row.postfix),
                    ratio(row),
                    lat(row.ours),
                    lat(row.postfix),
                    f"{cpu(row.ours, 'server')} / {cpu(row.postfix, 'server')}",
                    f"{ms(per_msg(row.ours))} / {ms(per_msg(row.postfix))}",
                    f"{cpu(row.ours, 'gen')} / {cpu(row.postfix, 'gen')}",
                    f"{cpu(row.ours, 'other')} / {cpu(row.postfix, 'other')}",
                    f"{fails(row.ours)}/{fails(row.postfix)}",
                ]
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        out = [*self.header(), ""]
        for i, r in enumerate(table if rows else []):
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
            out.append("  ".join(cells))
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        notes = []
        for row in rows:
            for side, runs in (("ours", row.ours), ("Postfix", row.postfix)):
                skipped = {r.skipped for r in runs if r.skipped}
                errs = [e for r in runs if not r.skipped for e in r.errors]
                for why in skipped:
                    if not (side == "Postfix" and row.name == "http"):
                        notes.append(f"{row.name} / {side}: n/a - {why}")
                if errs:
                    notes.append(f"{row.name} / {side}: {len(errs)} error(s), first: {errs[0]}")
        if "plain" in self.only:
            notes.append(
                "plain: smtp-source reports no per-message latency (accept latency is measured by the "
                "Python generator rows)."
            )
        if rows:
            notes.append(
                "CPU columns: % of one core over the load phase (server = its whole process tree; "
                f"this machine has {os.cpu_count()} cores = {100 * (os.cpu_count() or 1)}%); 'other' is "
                "the rest of the machine (other jobs, smtp-sink, the bench itself): when high, figures are noisy."
            )
        if self.rows:
            notes.append(
                "CPU ms/msg: the server's CPU (whole process tree) from the start of the load until its queue was "
                "empty again, per accepted message: accept + sign + deliver ('-' when the queue did not drain)."
            )
            notes.append(
                "Both deliver what they accept to an smtp-sink of their own while they accept (delivery shares "
                "the CPU); before each run both queues are drained."
            )
        if self.delivery_rows:
            notes.append(
                "delivery rows: msg/s = messages at the sink / (last arrival - first accept); p50/p99 = MAIL FROM "
                "-> arrival at the sink (dump file mtime); CPU over submission + delivery; failed = submission "
                "failures + accepted messages that never reached the sink. Each run: fresh relay / fresh Postfix "
                "(default concurrency; the relay: max_concurrency 100, per_destination 5) and a fresh sink."
            )
        reuse = next((r for r in self.rows if r.name == "reuse"), None)
        if reuse is not None:
            ours_ms, theirs_ms = per_msg(reuse.ours), per_msg(reuse.postfix)
            if ours_ms is not None:
                line = (
                    f"CPU per message, reused connection (STARTTLS+AUTH, accept + 3 DKIM signatures + deliver): "
                    f"ours {ours_ms * 1000:.2f} ms (target <= 2 ms)"
                )
                if theirs_ms:
                    line += (
                        f"; Postfix {theirs_ms * 1000:.2f} ms (no DKIM); ours / Postfix = {ours_ms / theirs_ms:.2f}x"
                    )
                out += ["", line]
        detail = delivery.detail_lines(self.delivery_rows)
        if detail:
            out += ["", "delivery, end to end (median run; counters include the 1 warm-up message):"]
            out += ["  " + line for line in detail]
        if self.step_lines:
            out += [
                "",
                "one STARTTLS+AUTH session, step by step (ms; median of 20 sequential sessions, concurrency 1):",
            ]
            out += ["  " + line for line in self.step_lines]
        if self.idle_lines:
            out += ["", f"idle: {IDLE_CONNECTIONS} concurrent idle connections to the SMTP port"]
            out += ["  " + line for line in self.idle_lines]
        if notes:
            out += ["", "notes:"] + ["  " + n for n in notes]
        if self.postfix_error:
            out += ["", f"Postfix could not be started: {self.postfix_error}"]
        if self.args.no_relay:
            out += ["", "relay: not started (--no-relay)"]
        elif self.relay_error:
            out += [
                "",
                "RELAY COULD NOT BE BENCHMARKED:",
                *("  " + ln for ln in self.relay_error.splitlines()),
            ]
        return "\n".join(out)

    # --- main ------------------------------------------------------------------------------------------

    def run(self) -> int:
        t0 = time.monotonic()
        try:
            self.sample_background()
            self.start_peers()
            self.probe()
            if "steps" in self.only:
                self.session_steps()
            self.load_scenarios()
            if "delivery" in self.only:
                self.delivery_scenario()
            if "idle" in self.only:
                self.idle_memory()
        finally:
            self.stop_peers()
            if self.args.keep:
                log(f"kept work dir {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        print(self.report())
        print(f"\n(total bench time {time.monotonic() - t0:.0f} s)")
        return 1 if self.relay_error and not self.args.no_relay else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="each scenario once, ~1 minute")
    names = ", ".join((*SCENARIOS, "dkim", "events"))
    parser.add_argument("--only", metavar="NAME", help=f"comma-separated subset of: {names}")
    parser.add_argument("--no-relay", action="store_true", help="measure Postfix alone (checks the bench itself)")
    parser.add_argument("--conc", type=int, default=CONC, help=f"concurrent clients (default {CONC})")
    parser.add_argument("--keep", action="store_true", help="keep the temp work dir (configs, logs, queues)")
    parser.add_argument("--workdir", default=None, help="parent of the temp work dir (default: system temp)")
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    only = set(args.only.split(",")) if args.only else None
    # In-process micro-benchmarks, no peers needed: DKIM signing beside the raw crypto floor, and
    # delivery rate with and without a slow event-stream subscriber.
    from benchlib import dkimbench, eventbench

    for name, bench in (("dkim", dkimbench), ("events", eventbench)):
        if only is None or name in only:
            bench.main(["--quick"] if args.quick else [])
            if only is not None:
                only.discard(name)
    if only is not None:
        if not only:
            return 0
        args.only = ",".join(sorted(only))
    try:
        return Bench(args).run()
    except KeyboardInterrupt:
        print("bench: interrupted; peers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
