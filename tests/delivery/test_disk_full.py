"""Issue 14: a full disk must not turn into a resend storm (159 messages delivered 282 times in 90 s).

A real small tmpfs: once the disk is full the outcomes of deliveries are written into the spool's
reserve, no new delivery starts while the reserve is spent, and every message goes out exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from relay.delivery.retry import Outcome, OutcomeKind
from relay.delivery.scheduler import Scheduler, SchedulerConfig
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.mirror import StatusMirror
from relay.store.writer import StatusWriter
from spool import Envelope, Spool
from tests.delivery.test_scheduler import MSG, SECRET, ScriptedMX
from tests.spool.helpers import fill_disk, mounted_tmpfs

N = 20


@pytest.mark.trio
async def test_full_disk_pauses_deliveries_and_never_redelivers(tmp_path: Path) -> None:
    store = AsyncStore(open_store("sqlite:///:memory:"))
    # Long replies: each "sent" record is bigger than what is left of the segment's last page.
    mx = ScriptedMX({f"r{i}@d{i}.example": [Outcome(OutcomeKind.DELIVERED, "250 2.0.0 ok " + "x" * 1900, "2.0.0", 250)]
                     for i in range(N)})
    with mounted_tmpfs(tmp_path / "mnt", size="2m") as mnt:
        async with trio.open_nursery() as nursery:
            writer = StatusWriter(store)
            await nursery.start(writer.run)
            spool = Spool(mnt / "spool", reserve_bytes=256 << 10, mirror=StatusMirror(writer))
            await nursery.start(spool.run)
            for i in range(N):
                env = Envelope("a@mail.example.com", (f"r{i}@d{i}.example",), "did:plc:abcdefghijklmnopqrstuvwx",
                               {}, 1_700_000_000.0)
                await spool.accept(env, MSG)
            fill_disk(mnt / "filler")
            cfg = SchedulerConfig(operator_domain="relay.test", secret=SECRET, reporting_mta="relay.test",
                                  max_concurrency=4)
            scheduler = Scheduler(spool, writer, mx, cfg)
            await nursery.start(scheduler.run)
            with trio.fail_after(30):
                while not spool.pressure:  # noqa: ASYNC110 (polling a property, no event to wait on)
                    await trio.sleep(0.01)
            await trio.sleep(2.5)  # several pressure polls: nothing new is dispatched meanwhile
            sent_while_full = len(mx.calls)
            assert 0 < sent_while_full < N
            assert max(mx.count.values()) == 1  # the outcomes were recorded: no second delivery
            await trio.sleep(2)
            assert len(mx.calls) == sent_while_full
            (mnt / "filler").unlink()
            with trio.fail_after(30):
                while spool.stats().live_messages:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert sorted(mx.count.values()) == [1] * N  # each delivered exactly once
            nursery.cancel_scope.cancel()
