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
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import trio

from spool.errors import SpoolError, SpoolFull, SpoolUnavailable
from spool.log import DEFAULT_SEGMENT_BYTES, Draft, SpoolLog, SpoolStats
from spool.message import Accepted, Change, Envelope, Position, QueuedMessage
from spool.record import MessageDraft
from spool.recovery import RecoveryReport
from spool.transition import Transition

log = logging.getLogger("spool")

# zlib.crc32 drops the GIL on big buffers; above this a message is CRC'd in a worker thread so a
# 25 MiB submission does not stall every other session on the event loop.
_THREAD_CRC_BYTES = 1 << 20
# Keep one batch's join+write bounded even when big messages arrive together.
_BATCH_BYTES = 16 << 20
# A caller whose drafts are queued waits for the committer's answer even when it is cancelled
# (the drafts may already be durable: a session must then get its 250, not a 451), but not forever.
_ANSWER_WAIT = 120.0
_PRESSURE_TICK = 1.0  # seconds between attempts to take the disk reserve back
# Messages just committed are kept in memory up to this many bytes (the oldest go first) for their first
# delivery attempt, which follows at once: reading them back would cost a worker-thread hop per message.
RECENT_BYTES = 8 << 20
_RECENT_MESSAGE_BYTES = 256 << 10  # bigger ones are read from disk, as before


class Mirror(Protocol):
    """Something that keeps a copy of the spool's state elsewhere (the relay's status store).

    ``mirror`` is called on the event loop right after each commit, in log order, with the changes it
    made (possibly none) and the log position just past it; it must not block. ``caught_up`` waits
    until everything mirrored so far is durable over there and returns the position it reached.
    The spool never deletes a segment past that position, and at start it hands the mirror again
    everything recorded after the position the mirror had reached (``store_mark``).
    """

    def mirror(self, position: Position, changes: Sequence[Change]) -> None: ...

    async def caught_up(self) -> Position | None: ...


class _Waiter:
    """One caller's drafts: always committed (or failed) together, in one batch."""

    __slots__ = ("done", "drafts", "error", "results")

    def __init__(self, drafts: list[Draft]) -> None:
        self.drafts = drafts
        self.done = trio.Event()
        self.results: list[Accepted | None] = []
        self.error: SpoolError | None = None

    @property
    def size(self) -> int:
        return sum(d.size for d in self.drafts)

    @property
    def messages(self) -> bool:
        return any(isinstance(d, MessageDraft) for d in self.drafts)

    def finish(self, results: list[Accepted | None]) -> None:
        self.results = results
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
        reserve_bytes: int = 0,
        mirror: Mirror | None = None,
        store_mark: Position | None = None,
        first_id: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._max_batch = max_batch
        self._recent: OrderedDict[int, bytes] = OrderedDict()  # queue id -> data, see RECENT_BYTES
        self._recent_bytes = 0
        self._reserve_bytes = reserve_bytes
        self._mirror = mirror
        self._store_mark = store_mark
        self._first_id = first_id  # the node's queue-id range (relay.cluster.identity)
        self._mirrored = trio.Event()  # set after each commit told the mirror something
        self._relief = trio.Event()  # set while the spool is not living off its disk reserve
        self._relief.set()
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
            SpoolLog.open, self.directory, segment_bytes=self._segment_bytes, max_bytes=self._max_bytes,
            store_mark=self._store_mark, mirrored=self._mirror is not None, reserve_bytes=self._reserve_bytes,
            first_id=self._first_id,
        )
        spool_log = await trio.to_thread.run_sync(opened)
        self._log = spool_log
        try:
            if self._mirror is not None:
                # What the mirror had not durably seen when the process stopped (a crash loses the
                # status writer's queue): hand it over again before anything new happens.
                self._mirror.mirror(spool_log.end(), spool_log.replay)
                spool_log.replay = []
                self._mirrored.set()
            async with trio.open_nursery() as nursery:
                if self._mirror is not None:
                    nursery.start_soon(self._follow_mirror, self._mirror, spool_log)
                if self._reserve_bytes > 0:
                    nursery.start_soon(self._watch_pressure, spool_log)
                task_status.started(spool_log.report)
                await self._commit_forever(spool_log)
        finally:
            self._stop()
            spool_log.close()

    async def _follow_mirror(self, mirror: Mirror, spool_log: SpoolLog) -> None:
        """Move the store mark as the mirror catches up, so compaction may delete older segments."""
        while True:
            await self._mirrored.wait()
            self._mirrored = trio.Event()
            mark = await mirror.caught_up()
            if mark is not None:
                spool_log.caught_up(mark)
                self._kick()

    async def _watch_pressure(self, spool_log: SpoolLog) -> None:
        """While the disk reserve is spent, keep trying to take it back (nothing else commits then)."""
        while True:
            await trio.sleep(_PRESSURE_TICK)
            if spool_log.pressure:
                self._kick()

    def _kick(self) -> None:
        """Ask the committer for housekeeping only (reap, roll, reserve): it owns the files."""
        try:
            self._send.send_nowait(_Waiter([]))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # busy: housekeeping follows the commits already queued anyway

    async def relieved(self) -> None:
        """Return once the spool is not living off its disk reserve (at once if it is not)."""
        while self.pressure:
            await self._relief.wait()

    def _note_pressure(self, spool_log: SpoolLog) -> None:
        if not spool_log.pressure:
            self._relief.set()
        elif self._relief.is_set():
            self._relief = trio.Event()

    @property
    def pressure(self) -> bool:
        """The disk is full and transitions live off the reserve: do not start deliveries."""
        return self._log is not None and self._log.pressure

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
        (result,) = await self.commit([(envelope, data)])
        return result

    async def transition(self, changes: Sequence[Transition]) -> None:
        """Durably record recipients' state changes (same group commit as accept).

        Changes to messages or recipients that are already terminal are dropped: terminal is final.
        """
        await self.commit([], changes)

    async def commit(
        self, messages: Sequence[tuple[Envelope, bytes]], changes: Sequence[Transition] = ()
    ) -> list[Accepted]:
        """Messages and transitions made durable together, in one batch: all of them or none.

        (A DSN with the ``bounced`` it reports; every copy of an inbound message.) Returns one
        Accepted per message. Raises SpoolFull or SpoolUnavailable; then nothing was stored.
        """
        spool_log = self._writable()
        drafts: list[Draft] = []
        for envelope, data in messages:
            if len(data) >= _THREAD_CRC_BYTES:
                drafts.append(await trio.to_thread.run_sync(spool_log.draft_message, envelope, data))
            else:
                drafts.append(spool_log.draft_message(envelope, data))
        tdraft = spool_log.draft_transitions(changes) if changes else None
        if tdraft is not None:
            drafts.append(tdraft)
        if not drafts:
            return []
        results = await self._submit(drafts)
        accepted = [r for r in results if r is not None]
        for (_, data), acc in zip(messages, accepted, strict=True):
            self._remember(acc.queue_id, data)
        return accepted

    def recent_data(self, queue_id: int) -> bytes | None:
        """The bytes of a live message committed moments ago by this process, if still held in memory
        (``RECENT_BYTES``), else None: ``read_data`` (a disk read, for a worker thread) is the way."""
        data = self._recent.get(queue_id)
        if data is not None and self.get(queue_id) is None:  # finished or deleted since: let it go
            del self._recent[queue_id]
            self._recent_bytes -= len(data)
            return None
        return data

    def _remember(self, queue_id: int, data: bytes) -> None:
        if len(data) > _RECENT_MESSAGE_BYTES:
            return
        self._recent[queue_id] = data
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old)

    async def _submit(self, drafts: list[Draft]) -> list[Accepted | None]:
        w = _Waiter(drafts)
        try:
            await self._send.send(w)
        except trio.BrokenResourceError:
            raise SpoolUnavailable("spool stopped") from None
        try:
            await w.done.wait()
        except trio.Cancelled:
            # Queued: the committer answers every waiter it took (it is shielded). A caller cancelled
            # now (session timeout, shutdown) may already be durable and must learn so, to say 250
            # and keep its rate grant: wait for the answer, shielded but bounded, and return it. The
            # caller's scope stays cancelled, so its next checkpoint raises again.
            with trio.CancelScope(shield=True) as scope:
                scope.relative_deadline = _ANSWER_WAIT
                await w.done.wait()
            if not w.done.is_set() or w.error is not None:
                raise
        if w.error is not None:
            raise w.error
        return w.results

    # -- the committer ---------------------------------------------------------------------------

    async def _commit_forever(self, spool_log: SpoolLog) -> None:
        recv = self._recv
        while True:
            first = await recv.receive()
            # Let every session that is runnable right now enqueue too, so a burst lands in one
            # batch (shielded: the item already taken must never be dropped by a cancellation).
            await trio.lowlevel.cancel_shielded_checkpoint()
            batch = [first]
            nbytes = first.size
            while len(batch) < self._max_batch and nbytes < _BATCH_BYTES:
                try:
                    w = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(w)
                nbytes += w.size
            # A batch once taken is seen through: its callers get an answer even on shutdown.
            with trio.CancelScope(shield=True):
                await self._commit(spool_log, batch)

    async def _commit(self, spool_log: SpoolLog, batch: list[_Waiter]) -> None:
        admitted: list[_Waiter] = []
        growth = 0
        for w in batch:
            if not w.drafts:
                w.finish([])  # a housekeeping kick
                continue
            size = sum(d.size for d in w.drafts if isinstance(d, MessageDraft))
            # Messages committed with an outcome (a DSN with its "bounced") are part of that outcome:
            # max_bytes does not hold them back (that could wedge a full spool), only a full disk does.
            outcome = len(w.drafts) > 1 and not all(isinstance(d, MessageDraft) for d in w.drafts)
            refused = spool_log.pressure if outcome else not spool_log.has_room(growth + size)
            if size and refused:
                w.fail(SpoolFull("spool is at its size limit"))
                continue
            admitted.append(w)
            growth += size
        if admitted:
            await self._write_batch(spool_log, admitted)
        await self._housekeep(spool_log)

    async def _write_batch(self, spool_log: SpoolLog, admitted: list[_Waiter]) -> None:
        try:
            sealed = spool_log.seal([d for w in admitted for d in w.drafts])
            try:
                written = await trio.to_thread.run_sync(spool_log.write, sealed)
            except SpoolFull as exc:
                if not any(w.messages for w in admitted) or all(w.messages for w in admitted):
                    raise
                # Disk full: the messages cannot be taken, but the outcomes beside them must be
                # written (into the reserve if need be): retry with the transitions alone.
                for w in admitted:
                    if w.messages:
                        w.fail(_copy(exc))
                admitted = [w for w in admitted if not w.messages]
                sealed = spool_log.seal([d for w in admitted for d in w.drafts])
                written = await trio.to_thread.run_sync(spool_log.write, sealed)
            results = spool_log.apply(sealed, written)
        except SpoolError as exc:
            log.warning("spool: batch of %d failed: %s", len(admitted), exc)
            for w in admitted:
                if not w.done.is_set():
                    w.fail(_copy(exc))
            return
        except BaseException:
            for w in admitted:
                if not w.done.is_set():
                    w.fail(SpoolUnavailable("spool internal error"))
            raise
        if self._mirror is not None:
            self._mirror.mirror((written.segment, written.offset + sealed.nbytes), spool_log.take_changes())
            self._mirrored.set()
        pos = 0
        for w in admitted:
            w.finish(results[pos : pos + len(w.drafts)])
            pos += len(w.drafts)

    async def _housekeep(self, spool_log: SpoolLog) -> None:
        if spool_log.idle_roll_due():
            await trio.to_thread.run_sync(spool_log.roll_idle)
        victims = spool_log.reap()
        if victims or spool_log.pressure:
            await trio.to_thread.run_sync(_unlink_and_reserve, spool_log, victims)
        self._note_pressure(spool_log)

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


def _unlink_and_reserve(spool_log: SpoolLog, victims: list[int]) -> None:
    spool_log.unlink(victims)
    spool_log.keep_reserve()


def _copy(exc: SpoolError) -> SpoolError:
    """A fresh exception per waiter: one instance raised in many tasks would share a traceback."""
    err = type(exc)(*exc.args)
    err.__cause__ = exc.__cause__
    return err
