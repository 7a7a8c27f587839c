"""Spool: the async face of SpoolLog, with group commit. The only module here that imports trio.

Callers put a draft and a wake-up slot on a bounded memory channel. One committer task takes
whatever has queued (up to ``max_batch``), allocates ids, writes it with one write() and ONE
fdatasync in a worker thread, and only then wakes every caller with its result or error. While a
batch is in the thread, new appends queue up for the next one, so under load each fdatasync is
shared by many sessions; that is what lets a relay say "250" only after the bytes are durable
without paying one disk flush per message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from spool.errors import SpoolError, SpoolFull, SpoolUnavailable
from spool.log import DEFAULT_SEGMENT_BYTES, Draft, SpoolLog, SpoolStats
from spool.message import Accepted, Envelope, QueuedMessage
from spool.record import MessageDraft
from spool.recovery import RecoveryReport
from spool.transition import Transition

log = logging.getLogger("spool")

# zlib.crc32 drops the GIL on big buffers; above this a message is CRC'd in a worker thread so a
# 25 MiB submission does not stall every other session on the event loop.
_THREAD_CRC_BYTES = 1 << 20
# Keep one batch's join+write bounded even when big messages arrive together.
_BATCH_BYTES = 16 << 20


class _Waiter:
    __slots__ = ("done", "draft", "error", "result")

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.done = trio.Event()
        self.result: Accepted | None = None
        self.error: SpoolError | None = None

    def finish(self, result: Accepted | None) -> None:
        self.result = result
        self.done.set()

    def fail(self, error: SpoolError) -> None:
        self.error = error
        self.done.set()


class Spool:
    """The spool as the relay sees it; one instance, owned by the root nursery.

    ``run`` must be started (``await nursery.start(spool.run)``) before anything else is used.
    The read side (``get``, ``live``, ``read_data``, ``stats``) is synchronous and only ever
    shows durable state.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_bytes: int | None = None,
        max_batch: int = 512,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._max_batch = max_batch
        self._log: SpoolLog | None = None
        self._stopped = False
        # Bounded: when the disk falls behind, accepting sessions wait here (backpressure)
        # instead of piling up unbounded memory.
        self._send, self._recv = trio.open_memory_channel[_Waiter](max_batch * 2)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[RecoveryReport] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover (in a thread, before anything is accepted), report, then commit forever."""
        if self._log is not None or self._stopped:
            raise RuntimeError("Spool.run() may be called once")
        opened = functools.partial(
            SpoolLog.open, self.directory, segment_bytes=self._segment_bytes, max_bytes=self._max_bytes
        )
        spool_log = await trio.to_thread.run_sync(opened)
        self._log = spool_log
        try:
            task_status.started(spool_log.report)
            await self._commit_forever(spool_log)
        finally:
            self._stop()
            spool_log.close()

    def _stop(self) -> None:
        self._stopped = True
        # No checkpoint in this loop, so no new sender can slip in between the drain and close;
        # receive_nowait also takes the values of senders blocked on a full channel.
        while True:
            try:
                w = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            w.fail(SpoolUnavailable("spool stopped"))
        self._recv.close()

    @property
    def report(self) -> RecoveryReport:
        return self._ready().report

    # -- writes ----------------------------------------------------------------------------------

    async def accept(self, envelope: Envelope, data: bytes) -> Accepted:
        """Queue a message; returns only once its bytes are fdatasync'ed (then it is acknowledged).

        Raises SpoolFull (max_bytes, ENOSPC, EDQUOT) or SpoolUnavailable; then nothing was stored.
        """
        spool_log = self._writable()
        if len(data) >= _THREAD_CRC_BYTES:
            draft: MessageDraft = await trio.to_thread.run_sync(spool_log.draft_message, envelope, data)
        else:
            draft = spool_log.draft_message(envelope, data)
        result = await self._submit(draft)
        assert result is not None
        return result

    async def transition(self, changes: Sequence[Transition]) -> None:
        """Durably record recipients' state changes (same group commit as accept).

        Changes to messages or recipients that are already terminal are dropped: terminal is final.
        """
        draft = self._writable().draft_transitions(changes)
        if draft is not None:
            await self._submit(draft)

    async def _submit(self, draft: Draft) -> Accepted | None:
        w = _Waiter(draft)
        try:
            await self._send.send(w)
        except trio.BrokenResourceError:
            raise SpoolUnavailable("spool stopped") from None
        await w.done.wait()
        if w.error is not None:
            raise w.error
        return w.result

    # -- the committer ---------------------------------------------------------------------------

    async def _commit_forever(self, spool_log: SpoolLog) -> None:
        recv = self._recv
        while True:
            first = await recv.receive()
            # Let every session that is runnable right now enqueue too, so a burst lands in one
            # batch (shielded: the item already taken must never be dropped by a cancellation).
            await trio.lowlevel.cancel_shielded_checkpoint()
            batch = [first]
            nbytes = first.draft.size
            while len(batch) < self._max_batch and nbytes < _BATCH_BYTES:
                try:
                    w = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(w)
                nbytes += w.draft.size
            # A batch once taken is seen through: its callers get an answer even on shutdown.
            with trio.CancelScope(shield=True):
                await self._commit(spool_log, batch)

    async def _commit(self, spool_log: SpoolLog, batch: list[_Waiter]) -> None:
        admitted: list[_Waiter] = []
        growth = 0
        for w in batch:
            d = w.draft
            if isinstance(d, MessageDraft) and not spool_log.has_room(growth + d.size):
                w.fail(SpoolFull("spool is at its size limit"))
                continue
            admitted.append(w)
            growth += d.size
        if not admitted:
            return
        try:
            sealed = spool_log.seal([w.draft for w in admitted])
            try:
                written = await trio.to_thread.run_sync(spool_log.write, sealed)
            except SpoolError as exc:
                log.warning("spool: batch of %d failed: %s", len(admitted), exc)
                for w in admitted:
                    w.fail(_copy(exc))
                return
            results = spool_log.apply(sealed, written)
        except BaseException:
            for w in admitted:
                if not w.done.is_set():
                    w.fail(SpoolUnavailable("spool internal error"))
            raise
        for w, result in zip(admitted, results, strict=True):
            w.finish(result)
        victims = spool_log.reap()
        if victims:
            await trio.to_thread.run_sync(spool_log.unlink, victims)

    # -- read side (in-memory; cheap; shows only durable state) ----------------------------------

    def get(self, queue_id: int) -> QueuedMessage | None:
        return self._ready().get(queue_id)

    def live(self) -> Iterator[QueuedMessage]:
        return self._ready().live()

    def read_data(self, queue_id: int) -> bytes:
        return self._ready().read_data(queue_id)

    def stats(self) -> SpoolStats:
        return self._ready().stats()

    def _ready(self) -> SpoolLog:
        if self._log is None:
            raise SpoolUnavailable("spool not started")
        return self._log

    def _writable(self) -> SpoolLog:
        if self._stopped:
            raise SpoolUnavailable("spool stopped")
        return self._ready()


def _copy(exc: SpoolError) -> SpoolError:
    """A fresh exception per waiter: one instance raised in many tasks would share a traceback."""
    err = type(exc)(*exc.args)
    err.__cause__ = exc.__cause__
    return err
