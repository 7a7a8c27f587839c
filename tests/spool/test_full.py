"""Disk full and I/O errors: refuse the append, lose nothing acknowledged, keep the log valid."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from spool import Accepted, Spool, SpoolFull, SpoolLog, SpoolUnavailable, State, Transition
from tests.spool.helpers import envelope, fill_disk, mounted_tmpfs, segments, size


def _check_valid(directory: Path, expected: dict[int, bytes]) -> None:
    with SpoolLog.open(directory) as log:
        assert log.report.truncated_bytes == 0
        assert log.report.quarantined == ()
        assert {m.queue_id: log.read_data(m.queue_id) for m in log.live()} == expected


def test_max_bytes_refuses_messages_but_not_transitions(tmp_path: Path) -> None:
    kept: dict[int, bytes] = {}
    with SpoolLog.open(tmp_path, max_bytes=10_000, segment_bytes=4096) as log:
        with pytest.raises(SpoolFull):
            for i in range(100):
                data = b"%03d" % i * 700
                kept[log.append(envelope(1), data).queue_id] = data
        assert 3 <= len(kept) < 100
        assert log.stats().bytes <= 10_000
        # Transitions are how space is freed, so they are never refused for max_bytes.
        log.transition([Transition(q, q, State.SENT, info="x" * 1000) for q in kept])
        assert log.stats().live_messages == 0
        # Segments compacted: room again.
        again = log.append(envelope(1), b"fits again" * 100)
    _check_valid(tmp_path, {again.queue_id: b"fits again" * 100})


def test_enospc_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SpoolLog.open(tmp_path) as log:
        first = log.append(envelope(2), b"acknowledged")
        seg = segments(tmp_path)[-1]
        good = size(seg)
        real = os.pwrite

        def half_then_full(fd: int, data: bytes, offset: int) -> int:
            if len(data) > 10:  # the first call writes half, the retry hits the wall
                return real(fd, memoryview(data)[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "No space left on device")

        def full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        calls: list[int] = []

        def counted(fd: int, data: bytes, offset: int) -> int:
            calls.append(len(data))
            return half_then_full(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", counted)
        with pytest.raises(SpoolFull, match="No space"):
            log.append(envelope(1), b"x" * 5000)
        assert len(calls) >= 2  # it did write part of the batch before failing
        assert size(seg) == good  # ...and cut it back off
        monkeypatch.setattr(os, "pwrite", full)
        with pytest.raises(SpoolFull):
            log.transition([Transition(first.queue_id, first.queue_id, State.SENT)])
        monkeypatch.setattr(os, "pwrite", real)
        later = log.append(envelope(1), b"space again")
        assert later.queue_id > first.queue_id + 2  # the failed batch's ids are never reused
    _check_valid(tmp_path, {first.queue_id: b"acknowledged", later.queue_id: b"space again"})


def test_other_io_errors_are_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SpoolLog.open(tmp_path) as log:
        first = log.append(envelope(1), b"safe")

        def eio(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", eio)
        with pytest.raises(SpoolUnavailable, match="Input/output"):
            log.append(envelope(1), b"lost in flight")
        monkeypatch.undo()
        # After a failed fdatasync the segment is not trusted with new appends.
        later = log.append(envelope(1), b"fresh segment")
        assert len(segments(tmp_path)) == 2
        with SpoolLog.open_readonly(tmp_path) as ro:
            assert {m.queue_id for m in ro.live()} == {first.queue_id, later.queue_id}
    _check_valid(tmp_path, {first.queue_id: b"safe", later.queue_id: b"fresh segment"})


@pytest.mark.trio
async def test_async_batch_fails_together_then_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    real = os.pwrite
    outcomes: list[Accepted | BaseException] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        ok = await spool.accept(envelope(1), b"before")

        def full(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

        monkeypatch.setattr(os, "pwrite", full)

        async def one(i: int) -> None:
            try:
                outcomes.append(await spool.accept(envelope(1), b"%d" % i))
            except SpoolFull as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as senders:
            for i in range(20):
                senders.start_soon(one, i)
        assert len(outcomes) == 20
        assert all(isinstance(o, SpoolFull) for o in outcomes)
        assert spool.stats().live_messages == 1
        monkeypatch.setattr(os, "pwrite", real)
        after = await spool.accept(envelope(1), b"after")
        nursery.cancel_scope.cancel()
    _check_valid(tmp_path, {ok.queue_id: b"before", after.queue_id: b"after"})


@pytest.mark.trio
async def test_async_max_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=8000)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        results: list[Accepted | BaseException] = []

        async def one(i: int) -> None:
            try:
                results.append(await spool.accept(envelope(1), b"z" * 1000))
            except SpoolFull as exc:
                results.append(exc)

        async with trio.open_nursery() as senders:
            for i in range(20):
                senders.start_soon(one, i)
        accepted = [r for r in results if isinstance(r, Accepted)]
        assert 5 <= len(accepted) <= 8
        assert len(results) - len(accepted) == 20 - len(accepted)
        assert spool.stats().bytes <= 8000
        nursery.cancel_scope.cancel()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), so ENOSPC comes from the kernel, not from a monkeypatch."""
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        yield mnt


def test_real_disk_full(small_fs: Path) -> None:
    directory = small_fs / "spool"
    kept: dict[int, bytes] = {}
    # A few pages another program holds: freed once the disk is full, so the "sent" transitions have
    # room to be written whatever page slack the failed append happened to leave.
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"b" * (16 << 10))
    with SpoolLog.open(directory, segment_bytes=128 << 10) as log:
        with pytest.raises(SpoolFull, match="No space"):
            for i in range(1000):
                data = bytes([i % 256]) * 30_000
                kept[log.append(envelope(1), data).queue_id] = data
        assert len(kept) > 10
        ballast.unlink()
        # Space is reclaimed by delivering: the terminal segments are compacted away.
        log.transition([Transition(q, q, State.SENT) for q in list(kept)[:-3]])
        for q in list(kept)[:-3]:
            del kept[q]
        data = b"after the disk had room again"
        kept[log.append(envelope(1), data).queue_id] = data
    _check_valid(directory, kept)


def test_disk_full_outcomes_are_written_into_the_reserve(small_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: on ENOSPC the "sent" after a delivery could not be written, so it was delivered again.
    The reserve is given up for transitions; until it is back, messages are refused (pressure)."""
    monkeypatch.setattr("spool.log._RESERVE_RETRY", 0.0)
    directory = small_fs / "spool"
    with SpoolLog.open(directory, segment_bytes=128 << 10, reserve_bytes=128 << 10) as log:
        assert not log.pressure
        assert (directory / "RESERVE").stat().st_blocks * 512 >= 128 << 10
        queued = [log.append(envelope(1), b"m%d" % i * 100) for i in range(30)]
        fill_disk(small_fs / "filler")
        with pytest.raises(SpoolFull):
            log.append(envelope(1), b"x" * 20_000)
        # Every outcome is still recorded (the replies make the batch far bigger than any free page).
        log.transition([Transition(a.queue_id, a.queue_id, State.DEFERRED, attempts=1, next_attempt_at=1.0,
                                   reply="451 later " * 180) for a in queued])
        assert all(m.rcpt_state(m.queue_id) is State.DEFERRED for m in log.live())
        assert log.pressure  # the reserve is spent (nothing was freed: the messages are still live)
        with pytest.raises(SpoolFull):
            log.append(envelope(1), b"tiny")  # messages may not eat what the outcomes need
        (small_fs / "filler").unlink()
        log.housekeep()
        assert not log.pressure
        log.transition([Transition(a.queue_id, a.queue_id, State.SENT) for a in queued])
        later = log.append(envelope(1), b"room again")
    with SpoolLog.open(directory, segment_bytes=128 << 10, reserve_bytes=128 << 10) as log:
        assert [m.queue_id for m in log.live()] == [later.queue_id]  # nothing delivered comes back


def test_an_idle_active_segment_is_rolled_and_compacted(tmp_path: Path) -> None:
    """Issue 14: max_bytes filled by one active segment whose messages all went out stayed full for
    good (the active segment was never reaped and only rolled on overflow, which the cap prevented)."""
    seg = 64 << 10  # max_bytes below segment_bytes (the config refuses it; the spool copes anyway)
    with SpoolLog.open(tmp_path, segment_bytes=seg, max_bytes=seg // 2) as log:
        ids = []
        with pytest.raises(SpoolFull):
            for _ in range(1000):
                ids.append(log.append(envelope(1), b"q" * 3000).queue_id)
        log.transition([Transition(q, q, State.SENT) for q in ids])
        assert log.stats().live_messages == 0
        assert log.stats().segments == 1
        assert log.stats().bytes < 1000  # the active segment was replaced and deleted
        log.append(envelope(1), b"q" * 3000)
    with SpoolLog.open(tmp_path, segment_bytes=seg, max_bytes=seg // 2) as log:
        assert log.stats().live_messages == 1
        log.append(envelope(1), b"q" * 3000)
