"""SpoolLog: the synchronous core: segments on disk, the index in memory, no trio.

One writer per directory (an flock on ``LOCK`` enforces it); any number of read-only readers
(``open_readonly``) may scan beside it. A write goes through four steps so that the async
committer can run the blocking ones in a thread and the cheap ones on the event loop:

    draft   (caller)      encode the envelope, CRC the message bytes; no shared state
    seal    (event loop)  allocate ids in log order, finish headers
    write   (thread)      roll the segment if needed, one write, one fdatasync
    apply   (event loop)  update the index; only now is anything visible or acknowledged

``append``/``transition`` chain the four for synchronous callers (tests, tools).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spool import segment
from spool.errors import SpoolFull, SpoolUnavailable, classify
from spool.index import Index
from spool.message import Accepted, Added, Change, Changed, Envelope, Position, QueuedMessage
from spool.record import HEADER_SIZE, MessageDraft, RecordKey, draft_message, encode_transition, seal_message
from spool.recovery import RecoveryReport, Scan, scan
from spool.transition import Transition

log = logging.getLogger("spool")

DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_RESERVE_BYTES = 8 << 20
LOCK_FILE = "LOCK"
# Preallocated disk space given up when the disk is full, so the transitions that record finished
# deliveries can still be written (otherwise a delivered message is delivered again: issue 14).
RESERVE_FILE = "RESERVE"
_RESERVE_RETRY = 1.0  # seconds between attempts to take the reserve back once it was spent


@dataclass(slots=True)
class TransitionDraft:
    changes: tuple[Transition, ...]
    records: bytes  # framed TRANSITION records, back to back

    @property
    def size(self) -> int:
        return len(self.records)


Draft = MessageDraft | TransitionDraft


@dataclass(slots=True)
class Sealed:
    """A batch ready to write: its bytes, and where each draft lands in them."""

    drafts: list[Draft]
    chunks: list[bytes] = field(default_factory=list)
    first_ids: list[int] = field(default_factory=list)  # per draft; -1 for transitions
    offsets: list[int] = field(default_factory=list)  # per draft, from the batch start
    nbytes: int = 0
    counter: int = 0  # the id counter before this batch: the name of a segment opened for it


@dataclass(frozen=True, slots=True)
class Written:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolStats:
    live_messages: int
    live_recipients: int
    bytes: int  # total size of all segment files
    segments: int
    commits: int  # group commits (one fdatasync each)
    appends: int  # drafts committed (a message, or one transition call)
    mean_batch: float  # appends per commit


class SpoolLog:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int,
        max_bytes: int | None,
        readonly: bool,
        store_mark: Position | None = None,
        mirrored: bool = False,
        reserve_bytes: int = 0,
        first_id: int = 1,
    ) -> None:
        """Use ``SpoolLog.open`` or ``SpoolLog.open_readonly``."""
        if segment_bytes <= HEADER_SIZE:
            raise ValueError("segment_bytes is too small")
        self.directory = Path(directory)
        self.readonly = readonly
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        # How far a mirror (the status store) has durably caught up with the log; segments past it
        # are never deleted, because they hold what the mirror has not seen yet. None: no mirror.
        self.store_mark = store_mark
        self._mirrored = mirrored
        self.changes: list[Change] = []  # since the last take_changes(), in log order (when mirrored)
        self.replay: list[Change] = []  # what recovery found past store_mark (when mirrored)
        self._reserve_bytes = reserve_bytes
        self._reserve_held = False
        self._reserve_tried = -float("inf")
        self._index = Index()
        self._sizes: dict[int, int] = {}
        self._bytes = 0
        self._readers: dict[int, int] = {}
        self._lock_fd = -1
        self._reserve_fd = -1
        self._cur_seq = 0
        self._cur_fd = -1
        self._rolled = False
        self._poisoned = False  # never append to the current segment again (failed fdatasync or undo)
        self._closed = False
        self._key: RecordKey | None = None  # the MAC key of new records; loaded (or created) at open
        # Ids are handed out from here up: several nodes sharing one store each number from their own
        # range (relay.cluster.identity), so a queue id names one message across the cluster.
        self._first_id = first_id
        self.next_id = first_id
        self.commits = 0
        self.appends = 0
        self.report: RecoveryReport

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_bytes: int | None = None,
        store_mark: Position | None = None,
        mirrored: bool = False,
        reserve_bytes: int = 0,
        first_id: int = 1,
    ) -> SpoolLog:
        """Lock the directory, recover (truncate, quarantine, compact) and get ready to append.

        ``mirrored``: collect every change (``take_changes``), and in ``replay`` what recovery found
        past ``store_mark`` (everything when the mark is None or lies beyond the log).
        """
        self = cls(directory, segment_bytes=segment_bytes, max_bytes=max_bytes, readonly=False,
                   store_mark=store_mark, mirrored=mirrored, reserve_bytes=reserve_bytes, first_id=first_id)
        try:
            self._open_writable()
        except OSError as exc:
            self.close()
            raise classify(exc, f"recovering the spool in {self.directory}") from exc
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def open_readonly(cls, directory: Path) -> SpoolLog:
        """Scan without locking or changing anything; safe beside a running server."""
        self = cls(directory, segment_bytes=DEFAULT_SEGMENT_BYTES, max_bytes=None, readonly=True)
        started = time.monotonic()
        key = RecordKey.load(self.directory, create=False) if self.directory.is_dir() else None
        found = scan(self.directory, self._index, readonly=True, key=key)
        self._adopt(found.sizes, found.next_id)
        self.report = self._report(found, 0, started)
        return self

    def _open_writable(self) -> None:
        started = time.monotonic()
        segment.make_dirs(self.directory)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SpoolUnavailable(f"{self.directory} is in use by another process") from None
        replay_after: Position | None = None
        if self._mirrored:
            replay_after = self._mark_within_log()
            self.store_mark = replay_after
        self._key = RecordKey.load(self.directory, create=True)
        found = scan(self.directory, self._index, readonly=False, replay_after=replay_after, key=self._key)
        self.replay = found.replay
        self._adopt(found.sizes, found.next_id)
        if self._sizes:
            self._cur_seq = max(self._sizes)
            self._cur_fd = os.open(self.directory / segment.name(self._cur_seq), os.O_RDWR | os.O_CLOEXEC)
        else:
            self._cur_seq = self.next_id
            self._cur_fd = segment.create(self.directory, self._cur_seq)
            self._sizes[self._cur_seq] = 0
            self._index.add_segment(self._cur_seq)
        self._rolled = True  # reap every segment replay left unreferenced
        victims = self.reap()
        self.unlink(victims)
        self.keep_reserve()
        self.report = self._report(found, len(victims), started)
        log.info("spool recovered: %s", self.report)

    def _mark_within_log(self) -> Position:
        """The store's mark, or (0, 0) (replay everything) when it is unknown or past the log's end
        (the spool was replaced or restored from an older copy: the store may have missed anything)."""
        mark = self.store_mark
        if mark is None:
            return (0, 0)
        seqs = segment.listing(self.directory)
        if not seqs:
            return (0, 0)
        last = seqs[-1]
        if mark > (last, os.stat(self.directory / segment.name(last)).st_size):
            log.warning("spool: the store has seen up to %s, past the log's end; replaying all of it", mark)
            return (0, 0)
        return mark

    def _adopt(self, sizes: dict[int, int], next_id: int) -> None:
        self._sizes = dict(sizes)
        self._bytes = sum(sizes.values())
        self.next_id = max(next_id, self._first_id)
        self._index.freed.clear()

    def _report(self, found: Scan, compacted: int, started: float) -> RecoveryReport:
        return RecoveryReport(
            segments=len(self._sizes),
            records=found.records,
            messages_live=len(self._index.messages),
            recipients_live=self._index.live_rcpts,
            truncated_bytes=found.truncated_bytes,
            torn_tail=found.torn_tail,
            quarantined=tuple(found.quarantined),
            orphan_transitions=self._index.orphans,
            compacted_segments=compacted,
            next_id=self.next_id,
            seconds=time.monotonic() - started,
            readonly=self.readonly,
        )

    def close(self) -> None:
        self._closed = True
        for fd in [*self._readers.values(), self._cur_fd, self._lock_fd, self._reserve_fd]:
            if fd >= 0:
                os.close(fd)
        self._readers.clear()
        self._cur_fd = self._lock_fd = self._reserve_fd = -1

    def __enter__(self) -> SpoolLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- read side -------------------------------------------------------------------------------

    def get(self, queue_id: int) -> QueuedMessage | None:
        return self._index.messages.get(queue_id)

    def live(self) -> Iterator[QueuedMessage]:
        """Every live message, oldest first (a snapshot)."""
        return self._index.live()

    def read_data(self, queue_id: int) -> bytes:
        """The raw message bytes of a live message (KeyError if it is not live)."""
        msg = self._index.messages.get(queue_id)
        if msg is None:
            raise KeyError(queue_id)
        if self._closed:
            raise SpoolUnavailable("spool is closed")
        try:
            fd = self._readers.get(msg.segment)
            if fd is None:
                fd = os.open(self.directory / segment.name(msg.segment), os.O_RDONLY | os.O_CLOEXEC)
                self._readers[msg.segment] = fd
            data = os.pread(fd, msg.length, msg.offset)
        except OSError as exc:
            raise SpoolUnavailable(f"reading message {queue_id}: {exc.strerror or exc}") from exc
        if len(data) != msg.length:
            raise SpoolUnavailable(f"reading message {queue_id}: segment {msg.segment} is short")
        return data

    def stats(self) -> SpoolStats:
        return SpoolStats(
            live_messages=len(self._index.messages),
            live_recipients=self._index.live_rcpts,
            bytes=self._bytes,
            segments=len(self._sizes),
            commits=self.commits,
            appends=self.appends,
            mean_batch=self.appends / self.commits if self.commits else 0.0,
        )

    # -- synchronous writes ----------------------------------------------------------------------

    def append(self, envelope: Envelope, data: bytes) -> Accepted:
        """Durably append one message (fdatasync'ed before this returns)."""
        draft = self.draft_message(envelope, data)
        if not self.has_room(draft.size):
            raise SpoolFull("spool is at its size limit")
        (result,) = self.commit([draft])
        assert result is not None
        return result

    def transition(self, changes: Iterable[Transition]) -> None:
        """Durably record state changes (fdatasync'ed before this returns)."""
        draft = self.draft_transitions(changes)
        if draft is not None:
            self.commit([draft])

    def commit(self, drafts: list[Draft]) -> list[Accepted | None]:
        sealed = self.seal(drafts)
        written = self.write(sealed)
        results = self.apply(sealed, written)
        self.housekeep()
        return results

    def housekeep(self) -> None:
        """Roll an idle active segment, delete what is no longer needed, take the reserve back."""
        if self.idle_roll_due():
            self.roll_idle()
        self.unlink(self.reap())
        self.keep_reserve()

    def end(self) -> Position:
        """The position just past the last record (where the next batch goes, barring a roll)."""
        return (self._cur_seq, self._sizes.get(self._cur_seq, 0))

    def take_changes(self) -> list[Change]:
        changes, self.changes = self.changes, []
        return changes

    def caught_up(self, mark: Position) -> None:
        """The mirror has durably seen everything up to ``mark``: older segments may now be reaped."""
        if self.store_mark is None or mark > self.store_mark:
            self.store_mark = mark
            self._rolled = True  # reap() looks again
    # -- the steps -------------------------------------------------------------------------------

    def draft_message(self, envelope: Envelope, data: bytes) -> MessageDraft:
        _check_envelope(envelope)
        return draft_message(self._writing_key(), envelope, bytes(data))

    def draft_transitions(self, changes: Iterable[Transition]) -> TransitionDraft | None:
        """Encode the changes that can still matter; None when none can.

        A change to a message that is no longer live, or to a recipient already terminal, is
        dropped here (apply would ignore it anyway): it races a delivery or a delete and lost.
        """
        keep = []
        for t in changes:
            msg = self._index.messages.get(t.queue_id)
            if msg is None:
                if t.queue_id >= self.next_id or t.queue_id <= 0:
                    raise ValueError(f"no message {t.queue_id} was ever queued")
                continue
            if not 0 <= t.rcpt_id - t.queue_id < len(msg.states):
                raise ValueError(f"recipient {t.rcpt_id} is not part of message {t.queue_id}")
            if not msg.states[t.rcpt_id - t.queue_id].terminal:
                keep.append(t)
        if not keep:
            return None
        key = self._writing_key()
        return TransitionDraft(tuple(keep), b"".join(encode_transition(key, t) for t in keep))

    def _writing_key(self) -> RecordKey:
        if self._key is None:
            raise SpoolUnavailable("spool opened read-only")
        return self._key

    def has_room(self, nbytes: int) -> bool:
        """Whether ``max_bytes`` lets the spool grow by ``nbytes`` (checked for messages only:
        transitions are how messages become terminal and space is freed, so refusing them when
        full would wedge the spool). While the disk reserve is spent, no message fits."""
        if self.pressure:
            return False
        return self._max_bytes is None or self._bytes + nbytes <= self._max_bytes

    @property
    def pressure(self) -> bool:
        """The disk filled up and the reserve kept for transitions is (partly) spent: deliveries must
        wait (their outcome might not be recordable) and messages are refused until it is back."""
        return self._reserve_bytes > 0 and not self._reserve_held and not self.readonly

    # -- the disk reserve ------------------------------------------------------------------------

    def keep_reserve(self) -> None:
        """(Re)allocate the reserve file if it is not held (blocking; at most once a second)."""
        if self._reserve_bytes <= 0 or self._reserve_held or self.readonly or self._closed:
            return
        now = time.monotonic()
        if now - self._reserve_tried < _RESERVE_RETRY:
            return
        self._reserve_tried = now
        try:
            if self._reserve_fd < 0:
                path = self.directory / RESERVE_FILE
                self._reserve_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                segment.fsync_dir(self.directory)
            os.posix_fallocate(self._reserve_fd, 0, self._reserve_bytes)
            os.fsync(self._reserve_fd)
        except OSError as exc:
            log.warning("spool: cannot reserve %d bytes for transitions: %s", self._reserve_bytes, exc)
            self._drop_reserve()
            return
        if not self._reserve_held:
            log.info("spool: %d bytes reserved for transitions", self._reserve_bytes)
        self._reserve_held = True

    def _drop_reserve(self) -> bool:
        """Give the reserve's blocks back to the filesystem; True when there was one to give."""
        held = self._reserve_held
        self._reserve_held = False
        if self._reserve_fd >= 0:
            try:
                os.ftruncate(self._reserve_fd, 0)
                os.fsync(self._reserve_fd)
            except OSError as exc:
                log.error("spool: cannot release the reserve: %s", exc)
        return held

    # -- the idle active segment -----------------------------------------------------------------

    def idle_roll_due(self) -> bool:
        """Whether the active segment holds nothing live and is worth replacing so it can be deleted
        (otherwise a big segment left with no live message is never compacted: it only rolls when a
        write overflows it, which a full disk or ``max_bytes`` may prevent for good)."""
        if self.readonly or self._cur_fd < 0:
            return False
        size = self._sizes.get(self._cur_seq, 0)
        if size == 0 or self._index.references(self._cur_seq) or not self._covered(self._cur_seq):
            return False
        crowded = self._max_bytes is not None and self._bytes * 2 > self._max_bytes
        return size >= self._segment_bytes // 8 or crowded or self.pressure

    def roll_idle(self) -> None:
        """Open a fresh active segment (blocking); the old one is reaped at once if nothing needs it."""
        try:
            self._roll(self.next_id)
        except OSError as exc:
            log.warning("spool: cannot roll the idle active segment: %s", exc)

    def _covered(self, seq: int) -> bool:
        mark = self.store_mark
        return mark is None or mark >= (seq, self._sizes.get(seq, 0))

    def seal(self, drafts: list[Draft]) -> Sealed:
        """Allocate ids (in log order) and lay the batch out. Cheap: runs on the event loop."""
        s = Sealed(drafts, counter=self.next_id)
        chunks = s.chunks
        pos = 0
        for d in drafts:
            s.offsets.append(pos)
            if isinstance(d, MessageDraft):
                first = self.next_id
                self.next_id += d.nrcpts  # never rolled back: a failed batch's ids stay unused
                header, suffix = seal_message(d, first)
                chunks += (header, d.prefix, d.data, suffix)
                s.first_ids.append(first)
                pos += d.size
            else:
                chunks.append(d.records)
                s.first_ids.append(-1)
                pos += d.size
        s.nbytes = pos
        return s

    def write(self, s: Sealed) -> Written:
        """One write and one fdatasync for the whole batch (blocking: runs in a thread).

        On failure the segment is cut back to where the batch began, so the log stays a valid
        sequence of acknowledged records, and the error is raised for every draft in the batch.
        """
        if self.readonly:
            raise SpoolUnavailable("spool opened read-only")
        if self._cur_fd < 0:
            raise SpoolUnavailable("spool is closed")
        cur = self._sizes[self._cur_seq]
        if self._poisoned or (cur > 0 and cur + s.nbytes > self._segment_bytes):
            try:
                self._roll(s.counter)
            except OSError as exc:
                raise classify(exc, "creating a spool segment") from exc
        fd, start = self._cur_fd, self._sizes[self._cur_seq]
        buf = memoryview(b"".join(s.chunks))
        done = 0
        try:
            while done < len(buf):
                done += _pwrite(fd, buf[done:], start + done)
        except OSError as exc:
            self._undo(fd, start, poison=False)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and _transitions_only(s) and self._drop_reserve():
                # The disk is full, but an outcome must be recorded (a delivered message whose "sent"
                # cannot be written would go out again): spend the reserve on it, once.
                log.error("spool: disk full; writing transitions into the reserve, deliveries pause")
                return self.write(s)
            raise classify(exc, "writing the spool") from exc
        try:
            # One fdatasync per batch is the point of group commit; nothing in the batch is
            # acknowledged before it returns.
            os.fdatasync(fd)
        except OSError as exc:
            # After a failed fdatasync the page cache may no longer match the disk ("fsyncgate"):
            # keep what is acknowledged, but write new batches to a fresh segment.
            self._undo(fd, start, poison=True)
            raise classify(exc, "syncing the spool") from exc
        self._sizes[self._cur_seq] = start + done
        self._bytes += done
        return Written(self._cur_seq, start)

    def _undo(self, fd: int, start: int, *, poison: bool) -> None:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as exc:
            # The tail is unknown: never append after it. The next batch opens a fresh segment and
            # recovery quarantines whatever is left here.
            log.error("spool: cannot truncate a failed batch (%s); rolling to a new segment", exc)
            poison = True
        self._poisoned = self._poisoned or poison

    def _roll(self, counter: int) -> None:
        # The name is at least the id counter (a high-water mark that survives compaction) and
        # strictly greater than the current segment's (names must stay unique and ordered).
        seq = max(counter, self._cur_seq + 1)
        fd = segment.create(self.directory, seq)
        old = self._cur_fd
        self._cur_fd, self._cur_seq = fd, seq
        self._sizes[seq] = 0
        self._rolled, self._poisoned = True, False
        os.close(old)

    def apply(self, s: Sealed, w: Written) -> list[Accepted | None]:
        """Make a durable batch visible: index its records. Returns one result per draft."""
        index = self._index
        index.add_segment(w.segment)
        results: list[Accepted | None] = []
        changes = self.changes if self._mirrored else None
        for d, first, rel in zip(s.drafts, s.first_ids, s.offsets, strict=True):
            if isinstance(d, MessageDraft):
                data_at = w.offset + rel + HEADER_SIZE + len(d.prefix)
                index.add(first, d.envelope, w.segment, data_at, len(d.data))
                results.append(Accepted(first, tuple(range(first, first + d.nrcpts))))
                if changes is not None:
                    changes.append(Added(first, d.envelope))
            else:
                for t in d.changes:
                    msg = index.messages.get(t.queue_id)
                    if index.apply(t, w.segment) and changes is not None and msg is not None:
                        changes.append(Changed(t, msg.envelope))
                results.append(None)
        self.commits += 1
        self.appends += len(s.drafts)
        return results

    def reap(self) -> list[int]:
        """Forget segments no live message needs (never the current one); returns them, oldest first.

        The caller must then ``unlink`` them, in the returned order.
        """
        if not (self._index.freed or self._rolled):
            return []
        self._index.freed.clear()
        self._rolled = False
        victims: list[int] = []
        while True:  # dropping a segment can release the ones that only had to outlive it
            batch = [seq for seq in self._index.unreferenced() if seq != self._cur_seq and self._covered(seq)]
            if not batch:
                break
            for seq in batch:
                self._index.drop_segment(seq)
                self._bytes -= self._sizes.pop(seq, 0)
                fd = self._readers.pop(seq, None)
                if fd is not None:
                    os.close(fd)
            victims += batch
        self._index.freed.clear()
        # Oldest first: a segment is always older than the ones that had to outlive it.
        return sorted(victims)

    def unlink(self, victims: list[int]) -> None:
        """Delete reaped segments, oldest first, each durably before the next (blocking).

        Order matters: a message is stored in the oldest segment that mentions it, so if a crash
        keeps only some deletions, what survives is a newer segment's orphan transitions
        (harmless), never an old copy of a message whose "sent" record is gone (a resend).
        """
        for seq in victims:
            try:
                os.unlink(self.directory / segment.name(seq))
                segment.fsync_dir(self.directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                # Stop here: deleting a later one could break the order above. Recovery will find
                # the rest unreferenced and delete them at the next start.
                log.error("spool: cannot delete segment %s: %s", seq, exc)
                return
            log.info("spool: compacted segment %s", seq)


def _pwrite(fd: int, data: memoryview, offset: int) -> int:
    n = os.pwrite(fd, data, offset)
    if n <= 0:  # a regular file never does this, but a zero would loop forever
        raise OSError(errno.EIO, "pwrite wrote nothing")
    return n


def _transitions_only(s: Sealed) -> bool:
    return all(isinstance(d, TransitionDraft) for d in s.drafts)


def _check_envelope(env: Envelope) -> None:
    if not env.rcpts:
        raise ValueError("a message needs at least one recipient")
