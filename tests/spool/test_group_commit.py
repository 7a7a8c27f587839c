"""The async Spool: group commit, durability before reply, lifecycle."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from spool import Accepted, RecoveryReport, Spool, SpoolUnavailable, State, Transition
from tests.spool.helpers import envelope


@pytest.mark.trio
async def test_run_reports_recovery_before_accepting(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolUnavailable, match="not started"):
        spool.stats()
    async with trio.open_nursery() as nursery:
        report = await nursery.start(spool.run)
        assert isinstance(report, RecoveryReport)
        assert report.messages_live == 0
        acc = await spool.accept(envelope(2), b"hello")
        assert spool.read_data(acc.queue_id) == b"hello"
        msg = spool.get(acc.queue_id)
        assert msg is not None
        assert [m.queue_id for m in spool.live()] == [acc.queue_id]
        await spool.transition([Transition(acc.queue_id, r, State.SENT) for r in acc.rcpt_ids])
        assert spool.get(acc.queue_id) is None
        # Stale changes (the message is terminal now) are dropped, not errors.
        await spool.transition([Transition(acc.queue_id, acc.queue_id, State.DEFERRED)])
        nursery.cancel_scope.cancel()
    with pytest.raises(SpoolUnavailable, match="stopped"):
        await spool.accept(envelope(1), b"late")


@pytest.mark.trio
async def test_concurrent_accepts_share_fdatasyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = os.fdatasync

    def slow_counting_fdatasync(fd: int) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.005)  # a disk flush takes time; that is what lets batches form
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_counting_fdatasync)
    spool = Spool(tmp_path, max_batch=512)
    n = 300
    results: list[Accepted] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)

        async def one(i: int) -> None:
            await trio.sleep(i % 7 * 0.001)  # arrivals spread over a few ms, not one instant
            results.append(await spool.accept(envelope(1 + i % 3, tag=str(i)), b"%d" % i * 100))

        async with trio.open_nursery() as senders:
            for i in range(n):
                senders.start_soon(one, i)
        nursery.cancel_scope.cancel()
    assert len(results) == n
    ids = [r for a in results for r in a.rcpt_ids]
    assert len(set(ids)) == len(ids)
    stats = spool.stats()
    assert stats.appends == n
    assert stats.commits == calls
    assert calls <= n // 10, f"{calls} fdatasyncs for {n} accepts"
    assert stats.mean_batch >= 10


@pytest.mark.trio
async def test_no_reply_before_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entered = threading.Event()
    release = threading.Event()
    real = os.fdatasync

    def blocking_fdatasync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real(fd)

    spool = Spool(tmp_path)
    done: list[Accepted] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        monkeypatch.setattr(os, "fdatasync", blocking_fdatasync)

        replied = trio.Event()

        async def accept() -> None:
            done.append(await spool.accept(envelope(1), b"wait for it"))
            replied.set()

        nursery.start_soon(accept)
        try:
            assert await trio.to_thread.run_sync(entered.wait, 5)
            # Every task is parked (the flush is held in its thread): a premature reply would be here by now.
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            assert spool.stats().live_messages == 0  # not even visible before it is durable
        finally:
            release.set()
        with trio.fail_after(5):
            await replied.wait()
        assert spool.get(done[0].queue_id) is not None
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_appends_queue_behind_an_fdatasync_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entered = threading.Event()
    release = threading.Event()
    batches: list[int] = []
    real = os.fdatasync
    spool = Spool(tmp_path)

    def gated_fdatasync(fd: int) -> None:
        batches.append(spool.stats().appends)
        entered.set()
        release.wait(10)
        real(fd)

    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        monkeypatch.setattr(os, "fdatasync", gated_fdatasync)
        done: list[Accepted] = []
        all_done = trio.Event()

        async def accept(i: int) -> None:
            done.append(await spool.accept(envelope(1), b"%d" % i))
            if len(done) == 51:
                all_done.set()

        nursery.start_soon(accept, 0)
        try:
            assert await trio.to_thread.run_sync(entered.wait, 5)
            for i in range(1, 51):  # these arrive while the first flush is in flight
                nursery.start_soon(accept, i)
            await trio.testing.wait_all_tasks_blocked()  # all 50 are queued behind the held flush
        finally:
            release.set()
        with trio.fail_after(5):
            await all_done.wait()
        # One flush for the first message, one for the 50 that waited behind it.
        assert spool.stats().commits == 2
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_restart_with_the_async_face(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path)
        await nursery.start(spool.run)
        a = await spool.accept(envelope(2), b"a")
        b = await spool.accept(envelope(1), b"b")
        await spool.transition([Transition(a.queue_id, a.rcpt_ids[0], State.SENT)])
        await spool.transition([Transition(b.queue_id, b.queue_id, State.DELETED)])
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path)
        report = await nursery.start(spool.run)
        assert report.messages_live == 1
        msg = spool.get(a.queue_id)
        assert msg is not None
        assert msg.rcpt_state(a.rcpt_ids[0]) == State.SENT
        assert msg.rcpt_state(a.rcpt_ids[1]) == State.ACCEPTED
        assert spool.get(b.queue_id) is None
        c = await spool.accept(envelope(1), b"c")
        assert c.queue_id > b.queue_id
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_big_messages_round_trip(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # CRC'd in a worker thread
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path, segment_bytes=4 << 20)
        await nursery.start(spool.run)
        accs = [await spool.accept(envelope(1), data) for _ in range(3)]
        assert all(spool.read_data(a.queue_id) == data for a in accs)
        assert spool.stats().segments == 3
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_just_committed_messages_are_read_from_memory_while_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spool.aio

    monkeypatch.setattr(spool.aio, "RECENT_BYTES", 10)  # room for two 5-byte messages
    s = Spool(tmp_path / "spool")
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        a, b = await s.commit([(envelope(1), b"first"), (envelope(1), b"secnd")])
        assert (s.recent_data(a.queue_id), s.recent_data(b.queue_id)) == (b"first", b"secnd")
        c = await s.accept(envelope(1), b"third")
        assert s.recent_data(a.queue_id) is None  # the oldest gave way
        assert s.read_data(a.queue_id) == b"first"  # and is read from disk
        assert s.recent_data(c.queue_id) == b"third"
        await s.transition([Transition(b.queue_id, r, State.SENT) for r in b.rcpt_ids])
        assert s.recent_data(b.queue_id) is None  # finished: not held for anyone any more
        big = await s.accept(envelope(1), b"x" * (spool.aio._RECENT_MESSAGE_BYTES + 1))
        assert s.recent_data(big.queue_id) is None
        nursery.cancel_scope.cancel()
