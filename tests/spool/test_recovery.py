"""Recovery: torn tails are truncated, damage in the middle is quarantined, nothing is dropped silently."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spool.segment as segment_mod
from spool import SpoolLog, State, Transition
from tests.spool.helpers import copy_spool, envelope, segments, size


def _build(directory: Path, bodies: list[bytes]) -> tuple[list[int], list[int]]:
    """Append one message per body; returns queue ids and the file offset after each record."""
    ids: list[int] = []
    ends: list[int] = []
    with SpoolLog.open(directory) as log:
        seg = segments(directory)[-1]
        for body in bodies:
            ids.append(log.append(envelope(2, tag=str(len(ids))), body).queue_id)
            ends.append(size(seg))
    return ids, ends


def test_torn_tail_at_every_cut_point(tmp_path: Path) -> None:
    src = tmp_path / "src"
    ids, ends = _build(src, [b"first message", b"second", b"the torn one\r\n"])
    seg_name = segments(src)[-1].name
    start, end = ends[1], ends[2]
    # Every strict prefix of the last record (partial header, partial payload), plus a bad CRC.
    for cut in [*range(start + 1, end), -1]:
        work = copy_spool(src, tmp_path / f"cut{cut}")
        seg = work / seg_name
        blob = bytearray(seg.read_bytes())
        if cut == -1:
            blob[-1] ^= 0x01  # complete length, bad CRC, at the very end
        else:
            del blob[cut:]
        seg.write_bytes(bytes(blob))
        with SpoolLog.open(work) as log:
            assert [m.queue_id for m in log.live()] == ids[:2], cut
            assert log.read_data(ids[0]) == b"first message"
            assert log.read_data(ids[1]) == b"second"
            assert log.report.truncated_bytes == len(blob) - start
            assert log.report.quarantined == ()
            assert log.report.torn_tail is not None
            assert log.report.torn_tail.path is not None
            assert log.report.torn_tail.path.read_bytes() == bytes(blob[start:])  # kept, not dropped
            assert size(seg) == start  # the file itself is cut back
            # New appends follow the last good record, and ids move on.
            new = log.append(envelope(1), b"after")
            assert new.queue_id > ids[1]
        with SpoolLog.open(work) as log:
            assert [m.queue_id for m in log.live()] == [ids[0], ids[1], new.queue_id]
            assert log.report.truncated_bytes == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6),
    sent=st.sets(st.integers(0, 5)),
    cut_frac=st.floats(0.0, 1.0),
)
def test_any_prefix_of_the_log_recovers_exactly_the_complete_records(
    bodies: list[bytes], sent: set[int], cut_frac: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # After each record: (end offset, {live queue id: body index}).
        expected: list[tuple[int, dict[int, int]]] = []
        live: dict[int, int] = {}
        with SpoolLog.open(d) as log:
            seg = segments(d)[-1]
            for i, body in enumerate(bodies):
                a = log.append(envelope(1, tag=str(i)), body)
                live[a.queue_id] = i
                expected.append((size(seg), dict(live)))
                if i in sent:
                    log.transition([Transition(a.queue_id, a.queue_id, State.SENT)])
                    del live[a.queue_id]
                    expected.append((size(seg), dict(live)))
        total = size(seg)
        cut = int(total * cut_frac)
        with open(seg, "r+b") as f:
            f.truncate(cut)
        want: dict[int, int] = {}
        good = 0
        for end, snapshot in expected:
            if end <= cut:
                want, good = snapshot, end
        with SpoolLog.open(d) as log:
            assert {m.queue_id: log.read_data(m.queue_id) for m in log.live()} == {
                q: bodies[i] for q, i in want.items()
            }
            assert log.report.truncated_bytes == cut - good
            assert size(seg) == good


def test_flipped_byte_in_the_middle_is_quarantined(tmp_path: Path) -> None:
    ids, ends = _build(tmp_path, [b"one" * 10, b"two" * 10, b"three" * 10, b"four" * 10])
    seg = segments(tmp_path)[-1]
    blob = bytearray(seg.read_bytes())
    blob[ends[0] + 40] ^= 0xFF  # inside the second record
    seg.write_bytes(bytes(blob))
    with SpoolLog.open(tmp_path) as log:
        report = log.report
        assert [m.queue_id for m in log.live()] == [ids[0], ids[2], ids[3]]
        assert log.read_data(ids[3]) == b"four" * 10
        assert len(report.quarantined) == 1
        q = report.quarantined[0]
        assert (q.offset, q.length) == (ends[0], ends[1] - ends[0])
        assert "quarantined" in str(report)
        assert q.path is not None
        assert q.path.read_bytes() == bytes(blob[ends[0] : ends[1]])
        note = q.path.with_suffix(".txt").read_text()
        assert f"offset: {ends[0]}" in note
        assert report.truncated_bytes == 0
        assert size(seg) == len(blob)  # the middle is never cut out
        log.append(envelope(1), b"five")
    # The damage is reported at every start, but copied once.
    files = sorted((tmp_path / "quarantine").iterdir())
    with SpoolLog.open(tmp_path) as log:
        assert len(log.report.quarantined) == 1
        assert log.stats().live_messages == 4
    assert sorted((tmp_path / "quarantine").iterdir()) == files


def test_damaged_header_resyncs_on_the_next_valid_record(tmp_path: Path) -> None:
    ids, ends = _build(tmp_path, [b"a" * 50, b"b" * 50, b"c" * 50])
    seg = segments(tmp_path)[-1]
    blob = bytearray(seg.read_bytes())
    blob[ends[0] : ends[0] + 4] = b"XXXX"  # the second record's magic
    seg.write_bytes(bytes(blob))
    with SpoolLog.open(tmp_path) as log:
        assert [m.queue_id for m in log.live()] == [ids[0], ids[2]]
        assert [(q.offset, q.length) for q in log.report.quarantined] == [(ends[0], ends[1] - ends[0])]


def test_damage_at_the_end_of_an_older_segment_is_quarantined_not_truncated(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path, segment_bytes=1024) as log:
        a = log.append(envelope(1), b"a" * 800)
        b = log.append(envelope(1), b"b" * 800)  # rolls: a new segment
    older, newer = segments(tmp_path)
    blob = bytearray(older.read_bytes())
    blob[-3] ^= 0x55
    older.write_bytes(bytes(blob))
    with SpoolLog.open(tmp_path, segment_bytes=1024) as log:
        assert [m.queue_id for m in log.live()] == [b.queue_id]
        assert log.get(a.queue_id) is None
        assert len(log.report.quarantined) == 1
        assert log.report.truncated_bytes == 0
        q = log.report.quarantined[0]
        assert q.path is not None
        assert q.path.read_bytes() == bytes(blob)  # the whole damaged record, kept
        # Nothing live needs the older segment any more, so it was compacted; its bytes are safe
        # in quarantine/.
        assert not older.exists()
        assert newer.exists()


def test_first_start_makes_the_directory_chain_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: mkdir(parents=True) alone leaves the new names in the page cache; each created
    directory is fsynced into its parent, outermost first."""
    synced: list[Path] = []
    real = segment_mod.fsync_dir
    monkeypatch.setattr(segment_mod, "fsync_dir", lambda d: (synced.append(Path(d)), real(d))[1])
    state = tmp_path / "var" / "lib" / "atmos"
    with SpoolLog.open(state / "spool"):
        pass
    created = [tmp_path / "var", tmp_path / "var" / "lib", state, state / "spool"]
    assert all(p.is_dir() for p in created)
    order = [synced.index(p.parent) for p in created]  # each new name made durable in its parent...
    assert order == sorted(order)  # ...outermost first
    assert (state / "spool").stat().st_mode & 0o777 == 0o700
