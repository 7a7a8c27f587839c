"""The two-node row: two ``atmos serve --workers 1`` processes ("machines") on one PostgreSQL, the
STARTTLS+AUTH reused-connection load split evenly over both (issue 17).

Each node has its own state directory (the shared keys copied from the first, as the README says for a
second machine), its own sink, the same secrets and the store on a private PostgreSQL server
(tests/peers/postgres.py, loopback, fsync off like the test peer: the row measures the relay, not
the disk under the database). The figure is the sum of both generators' accepted messages over the
longer of their two walls.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.peers.postgres import PostgresServer

from . import smtpgen
from .common import MAIL_FROM, RCPT_TO, RunResult, log
from .relay import BENCH_DID, RelayPeer
from .sink import SmtpSink


@dataclass
class NodesRun:
    per_node: list[RunResult]

    @property
    def accepted(self) -> int:
        return sum(r.accepted for r in self.per_node)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.per_node)

    @property
    def rate(self) -> float:
        wall = max((r.wall for r in self.per_node), default=0.0)
        return self.accepted / wall if wall > 0 else 0.0


def run(root: Path, work: Path, cert: Path, key: Path, *, conc: int, duration: float, runs: int) -> list[str]:
    """The report lines of the row (or why it could not run)."""
    server = PostgresServer()
    peers: list[RelayPeer] = []
    sinks: list[SmtpSink] = []
    try:
        server.start()
        url = server.url(server.create_database())
        for i, name in enumerate(("bench-a", "bench-b")):
            sink = SmtpSink(work / f"nodes-sink-{name}", dump=False).start()
            sinks.append(sink)
            peer = RelayPeer(root, work / f"nodes-{name}", cert, key, relayhost=sink.relayhost, workers=1,
                             store_url=url, node_name=name, env=peers[0].env if peers else None)
            if i == 1:
                state = peers[0].base / "state"
                for shared in ("dkim", "labeler", "oauth"):
                    shutil.copytree(state / shared, peer.base / "state" / shared)
            peer.start()
            if i == 0:
                peer.enroll()
            else:
                peer.api_key = peers[0].api_key
            peers.append(peer)
        results = []
        for n in range(runs):
            for p in peers:
                p.wait_drained(60)
            got: list[RunResult] = [RunResult(skipped="not run")] * len(peers)

            def load(i: int, peer: RelayPeer, got: list[RunResult] = got) -> None:
                host, port = peer.submission
                job = smtpgen.SmtpJob(host, port, BENCH_DID, peer.api_key, MAIL_FROM, RCPT_TO, reuse=True,
                                      duration=duration)
                got[i] = smtpgen.run(job, max(1, conc // len(peers)))

            threads = [threading.Thread(target=load, args=(i, p)) for i, p in enumerate(peers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            result = NodesRun(got)
            results.append(result)
            log(f"run {n + 1}/{runs} nodes  relay x2 {result.accepted:>6} ok {result.failed:>4} failed = "
                f"{result.rate:8.1f} msg/s ({' + '.join(f'{r.rate:.1f}' for r in got)})")
        results.sort(key=lambda r: r.rate)
        mid = results[len(results) // 2]
        return [f"two nodes (two `atmos serve --workers 1`) on one PostgreSQL, STARTTLS+AUTH reused connections, "
                f"concurrency {conc // 2} + {conc // 2}: {mid.rate:.1f} msg/s "
                f"({' + '.join(f'{r.rate:.1f}' for r in mid.per_node)}), {mid.failed} failed"]
    except (RuntimeError, OSError) as exc:
        return [f"two nodes on PostgreSQL: not measured ({type(exc).__name__}: {exc})"]
    finally:
        for peer in peers:
            peer.stop()
        for sink in sinks:
            sink.stop()
        server.stop()
