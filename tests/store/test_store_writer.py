"""StatusWriter: many ops, few transactions; flush; backlog; outages."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
import trio
import trio.lowlevel

from relay.store import StoreUnavailable
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.rows import NewAttempt, StatusUpdate, WriteOp
from relay.store.writer import StatusWriter

from .conftest import new_message


class CountingStore(AsyncStore):
    """Counts apply_batch transactions; can fail the first few as if the disk were locked."""

    def __init__(self, store: Store, fail_first: int = 0) -> None:
        super().__init__(store)
        self.batches: list[int] = []
        self.fail_first = fail_first
        self.committed = trio.Event()

    async def apply_batch(self, ops: Sequence[WriteOp]) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise StoreUnavailable("store unavailable: database is locked")
        await super().apply_batch(ops)
        self.batches.append(len(ops))
        self.committed.set()


@pytest.mark.trio
async def test_many_ops_become_few_transactions(sync_store: Store) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_batch=500, max_delay=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(1000):
            writer.submit_nowait(new_message(i))
        assert writer.backlog == 1000
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert store.batches == [500, 500]
    assert (writer.stats.batches, writer.stats.ops, writer.backlog) == (2, 1000, 0)
    assert (await store.counts_by_status())["accepted"] == 1000


@pytest.mark.trio
async def test_one_message_rows_are_submitted_together(sync_store: Store) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_delay=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit_nowait([new_message(1), new_message(2), new_message(3)])
        writer.submit_nowait([])  # a message with every recipient rejected: nothing to write
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert store.batches == [3]


@pytest.mark.trio
async def test_ops_arriving_over_time_share_a_batch_until_flush(sync_store: Store) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_delay=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit_nowait(new_message(1))
        for _ in range(5):
            await trio.lowlevel.checkpoint()  # the writer runs, sees nothing more, keeps waiting
        writer.submit_nowait(StatusUpdate(1, "sent", at=2.0, attempts=1, last_reply="250 ok"))
        writer.submit_nowait(NewAttempt(1, at=2.0, mx_host="mx", reply="250 ok", tls=True, outcome="sent"))
        assert store.batches == []
        await writer.flush()  # a waiter commits the batch at once
        nursery.cancel_scope.cancel()
    assert store.batches == [3]
    message = await store.get_message(1)
    assert message is not None and message.status == "sent"
    assert len(await store.attempts_for(1)) == 1


@pytest.mark.trio
async def test_max_delay_commits_without_a_flush(sync_store: Store) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_delay=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit_nowait(new_message(1))
        with trio.fail_after(5):
            await store.committed.wait()
        nursery.cancel_scope.cancel()
    assert store.batches == [1]


@pytest.mark.trio
async def test_submit_returns_once_committed(sync_store: Store) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_delay=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit(new_message(7))
        assert await store.get_message(7) is not None
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_backlog_past_the_limit_is_reported_not_refused(sync_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, backlog_limit=3, max_delay=60)
    with caplog.at_level(logging.WARNING, logger="relay.store.writer"):
        for i in range(5):  # the writer is not running: as if the store were stuck
            writer.submit_nowait(new_message(i))
    assert writer.overloaded and writer.backlog == 5 and writer.stats.peak_backlog == 5
    assert caplog.text.count("backlog") == 1  # rate-limited warning
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert not writer.overloaded
    assert [m.id for m in await store.list_messages()] == [4, 3, 2, 1, 0]


@pytest.mark.trio
async def test_aclose_commits_what_is_queued_then_run_returns(sync_store: Store) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_delay=60)
    for i in range(10):
        writer.submit_nowait(new_message(i))
    await writer.aclose()
    with trio.fail_after(5):
        await writer.run()
    assert store.batches == [10]
    with pytest.raises(trio.ClosedResourceError):
        writer.submit_nowait(new_message(11))


@pytest.mark.trio
async def test_unavailable_store_is_retried_until_the_batch_commits(sync_store: Store, autojump_clock: trio.abc.Clock) -> None:
    store = CountingStore(sync_store, fail_first=3)
    writer = StatusWriter(store, max_delay=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit_nowait(new_message(1))
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert writer.stats.retries == 3
    assert store.batches == [1]
    assert await store.get_message(1) is not None


@pytest.mark.trio
async def test_an_invalid_op_does_not_sink_its_batch(sync_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_delay=60)
    with caplog.at_level(logging.ERROR, logger="relay.store.writer"):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit_nowait([new_message(1), new_message(2, status="lost"), new_message(3)])
            await writer.flush()
            nursery.cancel_scope.cancel()
    assert writer.stats.quarantined == 1
    assert [m.id for m in await store.list_messages()] == [3, 1]
    assert "quarantined a write op" in caplog.text


class BuggyStore(CountingStore):
    """A store whose write raises something that is not a StoreError (a bug) for one message id."""

    async def apply_batch(self, ops: Sequence[WriteOp]) -> None:
        if any(getattr(op, "id", None) == 2 for op in ops):
            raise TypeError("a bug in the store")
        await super().apply_batch(ops)


@pytest.mark.trio
async def test_an_op_the_store_cannot_take_is_quarantined_and_the_writer_goes_on(
    sync_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = BuggyStore(sync_store)
    writer = StatusWriter(store, max_delay=60)
    with caplog.at_level(logging.ERROR, logger="relay.store.writer"):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit_nowait([new_message(1), new_message(2), new_message(3)])
            await writer.flush()
            writer.submit_nowait(new_message(4))  # the writer is still running
            await writer.flush()
            nursery.cancel_scope.cancel()
    assert writer.stats.quarantined == 1
    assert [m.id for m in await store.list_messages()] == [4, 3, 1]
    assert "TypeError: a bug in the store" in caplog.text


@pytest.mark.trio
async def test_8bit_subject_is_stored_for_display(sync_store: Store) -> None:
    """A Latin-1 ``Subject: café`` reaches the store as a lone surrogate (surrogateescape): the row
    holds U+FFFD instead, and the writer does not stop (issue 13: it ended the root nursery)."""
    store = CountingStore(sync_store)
    writer = StatusWriter(store, max_delay=60)
    subject = b"caf\xe9 \xc3\xa9t\xc3\xa9".decode("utf-8", "surrogateescape")
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit_nowait([new_message(1, subject=subject), new_message(2, subject="json \ud800")])
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert writer.stats.quarantined == 0
    rows = {m.id: m for m in await store.list_messages()}
    assert rows[1].subject == "caf\ufffd été" and rows[2].subject == "json \ufffd"
