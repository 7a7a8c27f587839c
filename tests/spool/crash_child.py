"""Crash-test child: accept messages forever, printing each acknowledged one; gets SIGKILLed.

Output lines (each written only after the spool acknowledged it):
    READY <next id>
    A <queue id> <n rcpts> <sha256 of data>
    T <queue id>            about to mark all its recipients "sent"
    S <queue id>            all its recipients are durably "sent"
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import trio

from spool import Envelope, Spool, State, Transition


async def worker(spool: Spool, rng: random.Random, out: list[str]) -> None:
    while True:
        n = rng.randint(1, 3)
        data = rng.randbytes(rng.randrange(50, 8_000))
        env = Envelope(
            mail_from="s@example.org",
            rcpts=tuple(f"r{i}@example.net" for i in range(n)),
            did="did:plc:crash",
            attrs={"source": "smtp"},
            arrival=1_700_000_000.0,
        )
        acc = await spool.accept(env, data)
        emit(f"A {acc.queue_id} {n} {hashlib.sha256(data).hexdigest()}")
        if rng.random() < 0.5:
            emit(f"T {acc.queue_id}")  # intent: from here on the message may be gone after a crash
            await spool.transition([Transition(acc.queue_id, r, State.SENT) for r in acc.rcpt_ids])
            emit(f"S {acc.queue_id}")


def emit(line: str) -> None:
    # One write per complete line: a kill can only cut off the last, unterminated one.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(directory: Path, seed: int) -> None:
    spool = Spool(directory, segment_bytes=256 << 10, max_batch=64)
    async with trio.open_nursery() as nursery:
        report = await nursery.start(spool.run)
        emit(f"READY {report.next_id}")
        for w in range(16):
            nursery.start_soon(worker, spool, random.Random(seed * 1000 + w), [])


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
