"""kill -9 at random moments loses no acknowledged message and never reuses an id (DESIGN §4)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spool import SpoolLog

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("crash_child.py")
CYCLES = 24


def _parse(out: bytes) -> tuple[dict[int, tuple[int, str]], set[int], set[int]]:
    acked: dict[int, tuple[int, str]] = {}
    sent: set[int] = set()
    sending: set[int] = set()
    # The last line may be cut off by the kill: only newline-terminated lines count.
    for line in out.decode().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        kind, *rest = line.split()
        if kind == "A":
            acked[int(rest[0])] = (int(rest[1]), rest[2])
        elif kind == "T":
            sending.add(int(rest[0]))
        elif kind == "S":
            sent.add(int(rest[0]))
    return acked, sent, sending


def wait_for_acks(child: subprocess.Popen[bytes], out_path: Path, acks: int) -> None:
    """Until the child is ready and has acknowledged ``acks`` messages (a deadline only for a hang)."""
    deadline = time.monotonic() + 120
    while True:
        out = out_path.read_bytes()
        if b"READY" in out and out.count(b"\nA ") >= acks:
            return
        assert child.poll() is None, "child died"
        assert time.monotonic() < deadline, f"child never got ready or acknowledged {acks} messages"
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_loop_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(0xA7)
    directory = tmp_path / "spool"
    acked: dict[int, tuple[int, str]] = {}  # every message ever acknowledged
    sent: set[int] = set()
    sending: set[int] = set()  # a "sent" transition was started, maybe not acknowledged
    used: set[int] = set()  # every recipient id ever seen, acknowledged or recovered
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    total_acks = 0
    for cycle in range(CYCLES):
        out_path = tmp_path / f"out-{cycle}.txt"
        with open(out_path, "wb") as out:
            child = subprocess.Popen(
                [sys.executable, str(CHILD), str(directory), str(cycle)], stdout=out, env=env, cwd=ROOT
            )
            try:
                if cycle % 6 == 5:
                    time.sleep(rng.uniform(0.0, 0.3))  # sometimes: during start-up or recovery
                else:
                    # Killed after a random number of acknowledgements, not a random time: on a loaded
                    # machine a child gets little CPU, and a time would let it acknowledge almost
                    # nothing. The short random wait after it puts the kill anywhere in a write.
                    wait_for_acks(child, out_path, rng.randint(15, 60))
                    time.sleep(rng.uniform(0.0, 0.02))
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait()
        new_acked, new_sent, new_sending = _parse(out_path.read_bytes())
        total_acks += len(new_acked)
        for qid, (n, _) in new_acked.items():
            ids = set(range(qid, qid + n))
            assert not ids & used, f"cycle {cycle}: ids {sorted(ids & used)} reused"
        acked.update(new_acked)
        sent |= new_sent
        sending |= new_sending

        with SpoolLog.open(directory, segment_bytes=256 << 10) as log:
            report = log.report
            assert report.quarantined == (), f"cycle {cycle}: a crash damaged the middle of the log"
            for qid, (n, digest) in acked.items():
                msg = log.get(qid)
                if qid in sent:
                    assert msg is None, f"cycle {cycle}: {qid} was acknowledged as sent"
                    continue
                if msg is None:
                    # Only a message whose "sent" was in flight at the kill may be gone.
                    assert qid in sending, f"cycle {cycle}: acknowledged message {qid} lost"
                    continue
                assert len(msg.rcpt_ids) == n
                assert hashlib.sha256(log.read_data(qid)).hexdigest() == digest, f"{qid} corrupted"
            live_ids = [r for m in log.live() for r in m.rcpt_ids]
            assert len(live_ids) == len(set(live_ids))
            used |= set(live_ids)
            used |= {r for q, (n, _) in acked.items() for r in range(q, q + n)}
            assert log.next_id > max(used, default=0)
    assert total_acks > 500, "the children barely ran; the test proves little"
