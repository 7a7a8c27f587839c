"""The store mirrors the spool: rows, statuses and idempotency records survive a lost writer queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.mirror import IDEMPOTENCY_KEY, REJECTED, REQUEST_HASH, STATUS_NOTE, StatusMirror
from relay.store.writer import StatusWriter
from spool import Envelope, Spool, State, Transition

DID = "did:plc:abcdefghijklmnopqrstuvwx"


def env(**attrs: str) -> Envelope:
    return Envelope("a@mail.example.com", ("x@example.org", "y@example.org"), DID,
                    {"source": "http", "subject": "hi", **attrs}, 1_700_000_000.0)


@pytest.mark.trio
async def test_a_crash_before_the_writer_flushed_is_replayed_at_start(tmp_path: Path, store_url: str) -> None:
    store = AsyncStore(open_store(store_url))
    # First life: the writer never runs (the process dies before it flushes anything).
    lost = StatusWriter(store)
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(lost), store_mark=await store.spool_mark())
        await nursery.start(spool.run)
        keyed = await spool.accept(env(**{IDEMPOTENCY_KEY: "k1", REQUEST_HASH: "h1", REJECTED: "[]"}), b"m")
        [x, y] = keyed.rcpt_ids
        await spool.transition([Transition(keyed.queue_id, x, State.SENT, attempts=1, reply="250 ok")])
        await spool.transition([Transition(keyed.queue_id, y, State.DEFERRED, attempts=1, next_attempt_at=9e9,
                                           reply="451 later")])
        nursery.cancel_scope.cancel()
    assert await store.get_message(x) is None
    assert await store.spool_mark() is None
    # Second life: recovery replays it all to the store.
    writer = StatusWriter(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer), store_mark=await store.spool_mark())
        await nursery.start(spool.run)
        await writer.flush()
        sent, deferred = await store.get_message(x), await store.get_message(y)
        assert sent is not None and (sent.status, sent.attempts, sent.last_reply) == ("sent", 1, "250 ok")
        assert deferred is not None and deferred.status == "deferred"
        idem = await store.get_idempotent(DID, "k1")
        assert idem is not None and idem.request_hash == "h1"
        assert json.loads(idem.response_json) == {
            "accepted": [{"recipient": "x@example.org", "messageId": x}, {"recipient": "y@example.org", "messageId": y}],
            "rejected": []}
        mark = await store.spool_mark()
        assert mark is not None and mark[1] > 0
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_delivery_outcomes_are_counted_once_with_the_status(tmp_path: Path, store_url: str) -> None:
    """Issue 14: bounce counters lived in memory for 2 s after the outcome. Now they are written with
    the status, in the same transaction as the store mark: a replay after a crash counts them once."""
    store = AsyncStore(open_store(store_url))
    lost = StatusWriter(store)
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(lost, count_outcomes=True, store_mark=(0, 0)))
        await nursery.start(spool.run)
        acc = await spool.accept(env(), b"m")
        [x, y] = acc.rcpt_ids
        await spool.transition([Transition(acc.queue_id, x, State.SENT, attempts=1, info=f"{STATUS_NOTE}2.0.0")])
        await spool.transition([Transition(acc.queue_id, y, State.BOUNCED, attempts=1, reply="552 full",
                                           info=f"{STATUS_NOTE}5.2.2")])
        dsn = await spool.accept(Envelope("", ("a@mail.example.com",), DID, {"dsn": "1"}, 1.0), b"dsn")
        await spool.transition([Transition(dsn.queue_id, dsn.queue_id, State.SENT, info=f"{STATUS_NOTE}2.0.0")])
        nursery.cancel_scope.cancel()
    for _ in range(2):  # two more lives: the replay counts once, the second start has nothing to replay
        writer = StatusWriter(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            mark = await store.spool_mark() or (0, 0)  # as if the store had a mark before the crash
            spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer, count_outcomes=True, store_mark=mark),
                          store_mark=mark)
            await nursery.start(spool.run)
            await writer.flush()
            nursery.cancel_scope.cancel()
    counts = {(r.kind, r.klass, r.domain): r.count for r in await store.reputation_counts_since(0)}
    assert counts == {("sent", "", "mail.example.com"): 1, ("bounce", "mailbox-full", "mail.example.com"): 1}
