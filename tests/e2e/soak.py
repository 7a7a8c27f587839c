"""Durability soak (issue 14): ``kill -9`` at random moments under mixed load, then SIGTERM restarts.

    scripts/soak [--cycles 100] [--sigterm 20] [--seed N] [--keep DIR]

Real peers throughout: the real ``atmos serve`` process (tests/e2e/relayproc.py), Knot for DNS, a
Postfix smtp-sink as the recipient MTA on 127.0.0.1 and a second one on 127.0.0.2 (same port) that
answers 450 to every RCPT (the "deferring" destination). Four clients submit while the relay runs:
two over SMTP submission (STARTTLS + AUTH), two over ``POST /v1/send``; every message carries a
unique id in its Subject, about one in eight goes to the deferring destination.

Phase 1: ``cycles`` times: start the relay, let the clients submit for a random 0.3-1.5 s, kill -9.
Then start it once more, drain, and check every acknowledged message against the sink and
``GET /v1/messages/{id}``:
  acknowledged        messages the relay answered 250/200 for
  lost                acknowledged, never delivered and not waiting in the queue (must be 0)
  duplicates          ids delivered more than once; each must have been in flight at a kill: the
                      relay's own log ("delivery <id> ... -> sent", written once the outcome is
                      durable) may show it sent in one lifetime only; a second lifetime sending an id
                      already recorded as sent is a resurrection (not in flight at the kill)
  status wrong        unknown to /v1/messages, or a status that disagrees with the sink: delivered
                      but not "sent", or not delivered and not "deferred" (must be 0)
Phase 2: ``sigterm`` times: start, submit, SIGTERM while the clients run (exit code must be 0);
then drain: 0 duplicates, and no request whose message was spooled may have been cut off without
its answer.
Progress goes to stderr, the figures to stdout. The 10-cycle version runs as tests/e2e/test_soak.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.relayproc import RelayProcess, make_tls
from tests.peers.knot import KnotServer
from tests.peers.smtpsink import SmtpSink, require_smtp_sink

DID = "did:plc:soakaaaaaaaaaaaaaaaaaaaa"
DOMAIN = "soak.example"
GOOD, DEFER = "sink.test", "defer.test"
DEFER_HOST = "127.0.0.2"
_SUBJECT = re.compile(rb"^Subject: (soak-[A-Za-z0-9-]+)\r?$", re.MULTILINE)
_SENT_LOG = re.compile(r"delivery (\d+) to=\S+ via=\S+ tls=\S+ -> sent")


def progress(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


@dataclass
class Acked:
    subject: str
    ids: tuple[int, ...]
    deferring: bool
    phase: str


@dataclass
class Clients:
    """Four submitters (2 SMTP, 2 HTTP) recording exactly what the relay acknowledged."""

    relay: RelayProcess
    key: str
    ctx: ssl.SSLContext
    tag: str
    rng: random.Random
    phase: str
    acked: list[Acked] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)  # subjects whose request ended without any answer
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def rcpt(self, subject: str) -> tuple[str, bool]:
        deferring = self.rng.random() < 0.125
        return f"{subject}@{DEFER if deferring else GOOD}", deferring

    def smtp_worker(self, n: int) -> None:
        released = False
        try:
            with smtplib.SMTP(*self.relay.submission, timeout=10) as s:
                s.starttls(context=self.ctx)
                s.login(DID, self.key)
                self.ready.release()
                released = True
                i = 0
                while not self.stop.is_set():
                    subject = f"soak-{self.tag}-s{n}-{i}"
                    to, deferring = self.rcpt(subject)
                    data = (f"From: a@{DOMAIN}\r\nTo: {to}\r\nSubject: {subject}\r\n"
                            f"Message-ID: <{subject}@soak.test>\r\n\r\n" + ("z" * 76 + "\r\n") * 10).encode()
                    s.mail(f"a@{DOMAIN}")
                    s.rcpt(to)
                    try:
                        code, text = s.data(data)
                    except smtplib.SMTPServerDisconnected:
                        with self.lock:
                            self.cut.append(subject)
                        return
                    if code == 250:
                        m = re.search(rb"queued as ([0-9,]+)", text)
                        ids = tuple(int(x) for x in m.group(1).split(b",")) if m else ()
                        with self.lock:
                            self.acked.append(Acked(subject, ids, deferring, self.phase))
                    i += 1
        except (OSError, smtplib.SMTPException):
            return  # the relay went away under us: only what was acknowledged counts
        finally:
            if not released:
                self.ready.release()

    def http_worker(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "X-Atmos-DID": DID}
        with httpx.Client(timeout=10) as client:
            try:
                client.get(f"{self.relay.http}/v1/messages/1", headers=headers)  # warm the key cache
            except httpx.HTTPError:
                return
            finally:
                self.ready.release()
            i = 0
            while not self.stop.is_set():
                subject = f"soak-{self.tag}-h{n}-{i}"
                to, deferring = self.rcpt(subject)
                try:
                    r = client.post(f"{self.relay.http}/v1/send", headers=headers, json={
                        "from": f"a@{DOMAIN}", "to": to, "subject": subject, "text": "x" * 800})
                except httpx.RemoteProtocolError:  # the connection closed without an answer
                    with self.lock:
                        self.cut.append(subject)
                    return
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    ids = tuple(a["messageId"] for a in r.json()["accepted"])
                    with self.lock:
                        self.acked.append(Acked(subject, ids, deferring, self.phase))
                i += 1

    def run(self, seconds: float, end: Any) -> float:
        """Submit for ``seconds``, then ``end()`` the relay while the clients still run; returns when."""
        threads = [threading.Thread(target=self.smtp_worker, args=(n,)) for n in range(2)]
        threads += [threading.Thread(target=self.http_worker, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for _ in threads:  # the timer starts once every client is submitting
            self.ready.acquire(timeout=30)
        time.sleep(seconds)
        at = time.time()
        end()
        self.stop.set()
        for t in threads:
            t.join(timeout=30)
        return at


@dataclass
class Figures:
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # subject -> copies
    unexplained_duplicates: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    wrong_status: list[str] = field(default_factory=list)
    cut_but_spooled: list[str] = field(default_factory=list)
    bad_exit: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"acknowledged": self.acknowledged, "lost": len(self.lost), "duplicates": len(self.duplicates),
                "extra_copies": sum(n - 1 for n in self.duplicates.values()),
                "most_copies": max(self.duplicates.values(), default=1),
                "duplicates_not_in_flight_at_a_kill": len(self.unexplained_duplicates),
                "unknown_to_api": len(self.unknown), "status_disagrees_with_sink": len(self.wrong_status),
                "cut_without_answer_but_spooled": len(self.cut_but_spooled), "bad_exit_codes": self.bad_exit}


class Soak:
    def __init__(self, base: Path, seed: int) -> None:
        self.base = base
        self.rng = random.Random(seed)
        self.tls = make_tls(base / "tls")
        self.ctx = ssl.create_default_context(cafile=str(self.tls.ca_pem))
        mx = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"]
        zones = {GOOD: mx, DOMAIN: mx, DEFER: ["@ 300 MX 10 mx", f"mx 300 A {DEFER_HOST}"]}
        self.dns = KnotServer(base / "knot", zones).start()
        self.sink = SmtpSink(base / "sink").start()
        self.deferring = self._start_deferring_sink(self.sink.port)
        toml = (f"[delivery]\nport = {self.sink.port}\nnameservers = [\"{self.dns.nameservers[0]}\"]\n"
                "shutdown_grace = 5.0\n")  # loopback peers: [testing] from RelayProcess
        # INFO: the relay logs each outcome once it is durable, which tells in-flight duplicates apart.
        self.relay = RelayProcess(base=base / "relay", tls=self.tls, extra_toml=toml, env={"ATMOS_LOG_LEVEL": "INFO"})
        self.relay.base.mkdir(parents=True, exist_ok=True)
        self.key = self.relay.enroll(DID, DOMAIN)["api_key"]
        self.acked: list[Acked] = []
        self.cut: list[str] = []
        self.kills: list[float] = []
        self.bad_exit: list[int] = []
        self.sent_lifetimes: collections.Counter[int] = collections.Counter()  # id -> lifetimes that recorded it sent

    def lifetime_ended(self) -> None:
        """Read what the relay that just ended durably recorded as sent (its log)."""
        ids = {int(m.group(1)) for line in self.relay.output if (m := _SENT_LOG.search(line))}
        self.sent_lifetimes.update(ids)

    def _start_deferring_sink(self, port: int) -> subprocess.Popen[bytes]:
        user = ["-u", "root"] if os.geteuid() == 0 else []
        argv = [require_smtp_sink(), *user, "-h", "defer.test", "-r", "rcpt", f"{DEFER_HOST}:{port}", "100"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((DEFER_HOST, port), timeout=0.5):
                    return proc
            except OSError:
                time.sleep(0.02)
        proc.kill()
        raise RuntimeError(f"the deferring smtp-sink did not start on {DEFER_HOST}:{port}")

    def close(self) -> None:
        if self.relay.proc is not None and self.relay.proc.poll() is None:
            self.relay.kill()
        self.deferring.kill()
        self.deferring.wait(timeout=10)
        self.sink.stop()
        self.dns.stop()

    def clients(self, tag: str, phase: str) -> Clients:
        return Clients(self.relay, self.key, self.ctx, tag, self.rng, phase)

    def kill_cycles(self, n: int) -> None:
        for cycle in range(n):
            self.relay.start()
            c = self.clients(f"k{cycle}", "kill")
            self.kills.append(c.run(self.rng.uniform(0.3, 1.5), self.relay.kill))
            self.lifetime_ended()
            self.acked += c.acked
            if cycle % 10 == 9 or cycle == n - 1:
                progress(f"kill -9 cycle {cycle + 1}/{n}: {len(self.acked)} acknowledged so far")

    def sigterm_cycles(self, n: int) -> None:
        for cycle in range(n):
            self.relay.start()
            c = self.clients(f"t{cycle}", "sigterm")

            def term() -> None:
                assert self.relay.proc is not None
                self.relay.proc.send_signal(signal.SIGTERM)

            c.run(self.rng.uniform(0.5, 1.5), term)
            assert self.relay.proc is not None
            rc = self.relay.proc.wait(timeout=60)  # (a second SIGTERM would not be graceful)
            self.relay.stop()
            self.lifetime_ended()
            if rc != 0:
                self.bad_exit.append(rc)
            self.acked += c.acked
            self.cut += c.cut
            progress(f"SIGTERM cycle {cycle + 1}/{n}: exit {rc}, {len(c.acked)} acknowledged, {len(c.cut)} cut")

    # -- checking --------------------------------------------------------------------------------

    def delivered(self) -> dict[str, list[float]]:
        """Subject -> the times its copies reached the good sink."""
        out: dict[str, list[float]] = collections.defaultdict(list)
        for path in self.sink.dump_dir.iterdir():
            m = _SUBJECT.search(path.read_bytes())
            if m:
                out[m.group(1).decode()].append(path.stat().st_mtime)
        return out

    def drain(self, timeout: float = 180.0) -> dict[str, list[float]]:
        self.relay.start()
        want = {a.subject for a in self.acked if not a.deferring}
        deadline = time.monotonic() + timeout
        seen: dict[str, list[float]] = {}
        while time.monotonic() < deadline:
            seen = self.delivered()
            if want <= seen.keys():
                break
            time.sleep(0.5)
        time.sleep(3)  # let late duplicates land, and the status writer catch up
        return self.delivered()

    def statuses(self, ids: list[int]) -> dict[int, str | None]:
        headers = {"Authorization": f"Bearer {self.key}", "X-Atmos-DID": DID}
        out: dict[int, str | None] = {}
        with httpx.Client(timeout=30) as client:
            for mid in ids:
                r = client.get(f"{self.relay.http}/v1/messages/{mid}", headers=headers)
                out[mid] = r.json()["status"] if r.status_code == 200 else None
        return out

    def check(self, phase: str, seen: dict[str, list[float]]) -> Figures:
        f = Figures(bad_exit=list(self.bad_exit))
        acked = [a for a in self.acked if a.phase == phase]
        f.acknowledged = len(acked)
        ids = [i for a in acked for i in a.ids]
        status = self.statuses(ids)
        # A status may lag its delivery by the status writer's batch delay: look again once.
        pending = [i for i in ids if status[i] not in ("sent", "deferred")]
        if pending:
            time.sleep(2)
            status.update(self.statuses(pending))
        for a in acked:
            copies = seen.get(a.subject, [])
            if len(copies) > 1:
                f.duplicates[a.subject] = len(copies)
            if not a.ids:
                f.unknown.append(a.subject)
                continue
            for mid in a.ids:
                st = status[mid]
                if st is None:
                    f.unknown.append(a.subject)
                elif copies and st != "sent":
                    f.wrong_status.append(f"{a.subject}: delivered, status {st}")
                elif not copies and a.deferring and st != "deferred":
                    f.wrong_status.append(f"{a.subject}: deferring destination, status {st}")
                elif not copies and not a.deferring:
                    f.lost.append(f"{a.subject} (status {st})")
        if phase == "sigterm":
            f.cut_but_spooled = [s for s in self.cut if s in seen]
        return f

    def explain(self, f: Figures, phase: str) -> None:
        """After the relay stopped: which duplicates were already recorded as sent before going out again."""
        ids = {a.subject: a.ids for a in self.acked if a.phase == phase}
        f.unexplained_duplicates = [s for s in f.duplicates if any(self.sent_lifetimes[i] > 1 for i in ids[s])]


def run(cycles: int, sigterm: int, *, seed: int = 20261202, base: Path | None = None) -> dict[str, Figures]:
    owned = base is None
    base = Path(tempfile.mkdtemp(prefix="atmos-soak-")) if base is None else base
    soak = Soak(base, seed)
    results: dict[str, Figures] = {}
    try:
        started = time.monotonic()
        soak.kill_cycles(cycles)
        progress("draining after the kills")
        seen = soak.drain()
        results["kill"] = soak.check("kill", seen)
        soak.relay.stop()
        soak.lifetime_ended()
        soak.sigterm_cycles(sigterm)
        progress("draining after the SIGTERM cycles")
        seen = soak.drain()
        results["sigterm"] = soak.check("sigterm", seen)
        soak.relay.stop()
        soak.lifetime_ended()
        for phase, figures in results.items():
            soak.explain(figures, phase)
        progress(f"done in {time.monotonic() - started:.0f} s")
    finally:
        soak.close()
        if owned:
            shutil.rmtree(base, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="kill -9 cycles (default 100)")
    parser.add_argument("--sigterm", type=int, default=20, help="SIGTERM restart cycles (default 20)")
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    results = run(args.cycles, args.sigterm, seed=args.seed, base=args.keep)
    kill, term = results["kill"], results["sigterm"]
    out = {"kill9_cycles": args.cycles, "sigterm_cycles": args.sigterm,
           "kill9": kill.as_dict(), "sigterm": term.as_dict()}
    print(json.dumps(out, indent=2))
    for name, f in results.items():
        for label, items in (("lost", f.lost), ("unknown", f.unknown), ("wrong status", f.wrong_status),
                             ("unexplained duplicate", f.unexplained_duplicates),
                             ("cut but spooled", f.cut_but_spooled)):
            for item in items[:10]:
                print(f"{name}: {label}: {item}", file=sys.stderr)
    ok = (not kill.lost and not kill.unknown and not kill.wrong_status and not kill.unexplained_duplicates
          and not term.lost and not term.unknown and not term.wrong_status and not term.duplicates
          and not term.cut_but_spooled and not term.bad_exit)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
