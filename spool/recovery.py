"""Recovery: rebuild the index by scanning every segment, oldest first.

Damage is never silently dropped:
- a torn tail of the newest segment (a write cut short by a crash: partial header, partial
  payload, or a bad MAC at the very end) is copied to ``quarantine/`` and truncated away, so new
  appends follow the last good record;
- a record whose header parses but whose MAC does not verify is quarantined as exactly the span
  its header claims, and the scan goes on after it: recovery never looks for records inside the
  payload of a record whose header parsed (that payload is a message body a member wrote);
- other bad bytes are copied to ``quarantine/`` with a note, and the scan resumes at the next
  magic whose record MAC verifies (keyed: bytes a member wrote never verify, ``spool.record``).
Records of the older CRC-only format (v1) are read only as an unbroken run from the start of a
segment, as the version that wrote them left it; after a resync or a v2 record, never.
A read-only scan (``atmos admin queue list`` beside a running server) changes nothing on disk:
the newest segment's tail may simply be a batch being written at that moment.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from spool import segment
from spool.index import Index
from spool.message import Added, Change, Changed, Position
from spool.record import (
    MAGIC,
    MESSAGE,
    Header,
    RecordKey,
    Undecodable,
    decode_message,
    decode_transition,
    header_at,
    valid_at,
    verifies,
)

log = logging.getLogger("spool.recovery")

QUARANTINE = "quarantine"


@dataclass(frozen=True, slots=True)
class QuarantinedRange:
    segment: int
    offset: int
    length: int
    reason: str
    path: Path | None  # where the bytes were copied; None in a read-only scan


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    segments: int
    records: int
    messages_live: int
    recipients_live: int
    truncated_bytes: int
    torn_tail: QuarantinedRange | None  # the truncated bytes (also kept in quarantine/)
    quarantined: tuple[QuarantinedRange, ...]  # damaged ranges in the middle of the log
    orphan_transitions: int
    compacted_segments: int
    next_id: int
    seconds: float
    readonly: bool = False

    def __str__(self) -> str:
        return (
            f"{self.messages_live} live messages ({self.recipients_live} recipients) in {self.segments} "
            f"segments, {self.records} records, {self.truncated_bytes} torn bytes truncated, "
            f"{len(self.quarantined)} ranges quarantined, {self.compacted_segments} segments compacted, "
            f"next id {self.next_id}, {self.seconds:.3f}s"
        )


@dataclass(slots=True)
class Scan:
    """What scanning left behind for the log to continue from."""

    sizes: dict[int, int] = field(default_factory=dict)  # segment -> valid length
    next_id: int = 1
    records: int = 0
    truncated_bytes: int = 0
    torn_tail: QuarantinedRange | None = None
    quarantined: list[QuarantinedRange] = field(default_factory=list)
    # Changes recorded after ``replay_after``, in log order: what a mirror (the status store) may not
    # have seen before the process stopped. Empty unless scan() was asked for them.
    replay: list[Change] = field(default_factory=list)
    replay_after: Position | None = None


def scan(directory: Path, index: Index, *, readonly: bool, key: RecordKey | None = None,
         replay_after: Position | None = None) -> Scan:
    result = Scan(replay_after=replay_after)
    if not directory.is_dir():
        return result  # a read-only look at a spool that was never started
    seqs = segment.listing(directory)
    for seq in seqs:
        last = seq == seqs[-1]
        try:
            fd = os.open(directory / segment.name(seq), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # compacted by a running server between listdir and open (read-only scans)
        try:
            good = _scan_segment(directory, seq, fd, index, result, last=last, readonly=readonly, key=key)
        finally:
            os.close(fd)
        result.sizes[seq] = good
        # The name is a high-water mark of the id counter (see segment.py).
        result.next_id = max(result.next_id, seq)
    return result


def _scan_segment(
    directory: Path, seq: int, fd: int, index: Index, result: Scan, *, last: bool, readonly: bool,
    key: RecordKey | None,
) -> int:
    """Index one segment's records; returns the length the segment keeps."""
    index.add_segment(seq)
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    # A read-only scan copies instead of mapping: the running server may truncate the newest
    # segment after a failed write, and touching a mapped page past the new end is SIGBUS.
    src: mmap.mmap | bytes = _read_all(fd, size) if readonly else mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    with _closing(src), memoryview(src) as buf:
        size = len(buf)
        pos = 0
        legacy = True  # v1 records only as an unbroken run from the segment's start
        while pos < size:
            h = header_at(buf, pos, legacy=legacy)
            if h is not None and h.end(pos) <= size:
                end = h.end(pos)
                if not verifies(key, buf, pos, h):
                    if last and end == size:
                        break  # a complete length but a bad MAC at the very end: a torn write
                    # Never resync inside this span: its payload is a member's bytes.
                    reason = "bad record MAC" if h.version == 2 else "bad record CRC"
                    _quarantine(directory, seq, buf, pos, end, reason, result, readonly=readonly)
                    legacy = False
                    pos = end
                    continue
                try:
                    _apply(buf, pos, h, seq, index, result)
                except Undecodable as exc:
                    _quarantine(directory, seq, buf, pos, end, str(exc), result, readonly=readonly)
                else:
                    result.records += 1
                legacy = legacy and h.version == 1
                pos = end
                continue
            if h is not None and not last:
                _quarantine(directory, seq, buf, pos, size, "record runs past the segment end", result,
                            readonly=readonly)
                return size
            if h is not None:
                break  # the newest segment's last record, cut short: a torn tail
            legacy = False
            nxt = _resync(src, buf, pos + 1, key)
            if nxt >= 0:
                _quarantine(directory, seq, buf, pos, nxt, "bad record", result, readonly=readonly)
                pos = nxt
                continue
            if not last:
                reason = "bad record at segment end"
                _quarantine(directory, seq, buf, pos, size, reason, result, readonly=readonly)
                return size
            break
        if pos < size:
            result.truncated_bytes += size - pos
            if not readonly:
                result.torn_tail = _save(directory, seq, buf, pos, size, "torn tail (truncated)")
        keep = pos
    if keep < size and not readonly:
        _truncate(directory / segment.name(seq), keep)
        log.warning("segment %s: truncated a torn tail of %d bytes at offset %d", seq, size - keep, keep)
    return keep


def _apply(buf: memoryview, pos: int, h: Header, seq: int, index: Index, result: Scan) -> None:
    start = pos + h.size
    mark = result.replay_after
    replay = mark is not None and (seq, start + h.length) > mark
    with buf[start : start + h.length] as payload:
        if h.rtype == MESSAGE:
            ref = decode_message(payload)
            fresh = ref.first_id not in index.messages
            index.add(ref.first_id, ref.envelope, seq, start + ref.data_offset, ref.data_len)
            result.next_id = max(result.next_id, ref.first_id + len(ref.envelope.rcpts))
            if replay and fresh:
                result.replay.append(Added(ref.first_id, ref.envelope))
        else:
            t = decode_transition(payload)
            msg = index.messages.get(t.queue_id)
            if index.apply(t, seq) and replay and msg is not None:
                result.replay.append(Changed(t, msg.envelope))


def _resync(src: mmap.mmap | bytes, buf: memoryview, pos: int, key: RecordKey | None) -> int:
    """Offset of the next MAC-verified (v2) record at or after ``pos``, or -1."""
    while True:
        pos = src.find(MAGIC, pos)
        if pos < 0 or valid_at(key, buf, pos) >= 0:
            return pos
        pos += 1


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 24))
        if not chunk:
            break  # shrank while we read: the rest is a tail being rewritten
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@contextmanager
def _closing(src: mmap.mmap | bytes) -> Iterator[None]:
    try:
        yield
    finally:
        if isinstance(src, mmap.mmap):
            src.close()


def _quarantine(
    directory: Path,
    seq: int,
    buf: memoryview,
    start: int,
    end: int,
    reason: str,
    result: Scan,
    *,
    readonly: bool,
) -> None:
    if readonly:
        result.quarantined.append(QuarantinedRange(seq, start, end - start, reason, None))
        return
    result.quarantined.append(_save(directory, seq, buf, start, end, reason))
    log.error("segment %s: quarantined %d bytes at offset %d (%s)", seq, end - start, start, reason)


def _save(directory: Path, seq: int, buf: memoryview, start: int, end: int, reason: str) -> QuarantinedRange:
    """Copy a damaged range to quarantine/, durably, before the log moves past it.

    The name is derived from the range, so scanning the same damage at every start rewrites nothing.
    """
    qdir = directory / QUARANTINE
    if not qdir.exists():
        qdir.mkdir()
        segment.fsync_dir(directory)
    stem = f"{segment.name(seq).removesuffix('.log')}-at-{start:012d}-len-{end - start}"
    path = qdir / f"{stem}.bin"
    if not path.exists():
        note = (
            f"segment: {segment.name(seq)}\noffset: {start}\nlength: {end - start}\nreason: {reason}\n"
            f"found: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        )
        _write_durably(qdir / f"{stem}.txt", note.encode())
        with buf[start:end] as blob:
            _write_durably(path, blob)
        segment.fsync_dir(qdir)
    return QuarantinedRange(seq, start, end - start, reason, path)


def _write_durably(path: Path, data: bytes | memoryview) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _truncate(path: Path, length: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)
