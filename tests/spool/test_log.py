"""SpoolLog, synchronously: round trip, ids, restart, read-only scans, locking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spool import Envelope, SpoolLog, SpoolUnavailable, State, Transition
from tests.spool.helpers import envelope, segments


def test_round_trip(tmp_path: Path) -> None:
    env = Envelope(
        mail_from="ünï@例え.jp",
        rcpts=("a@x.org", "b@y.org", "c@z.org"),
        did="did:web:example.com",
        attrs={"category": "mfa-otp", "source": "http", "subject": "\udcff surrogate-escaped"},
        arrival=1_700_000_123.25,
    )
    data = bytes(range(256)) * 40 + b"\r\n.\r\n"
    with SpoolLog.open(tmp_path) as log:
        acc = log.append(env, data)
        assert acc.queue_id == 1
        assert acc.rcpt_ids == (1, 2, 3)
        assert log.read_data(acc.queue_id) == data
    with SpoolLog.open(tmp_path) as log:
        msg = log.get(acc.queue_id)
        assert msg is not None
        assert msg.envelope == env
        assert msg.rcpt_ids == (1, 2, 3)
        assert msg.length == len(data)
        assert [msg.rcpt_state(r) for r in msg.rcpt_ids] == [State.ACCEPTED] * 3
        assert log.read_data(acc.queue_id) == data
        assert log.report.messages_live == 1
        assert log.report.recipients_live == 3


def test_ids_are_contiguous_per_message_and_monotonic_across_restarts(tmp_path: Path) -> None:
    seen: list[int] = []
    for round_ in range(3):
        with SpoolLog.open(tmp_path) as log:
            for n in (1, 3, 2):
                acc = log.append(envelope(n, tag=str(round_)), b"x")
                assert acc.rcpt_ids == tuple(range(acc.queue_id, acc.queue_id + n))
                seen.extend(acc.rcpt_ids)
    assert seen == list(range(1, len(seen) + 1))


def test_ids_survive_compaction_of_everything(tmp_path: Path) -> None:
    # Each record is bigger than a segment, so every batch opens a new segment.
    with SpoolLog.open(tmp_path, segment_bytes=1024) as log:
        accs = [log.append(envelope(2), b"m" * 2000) for _ in range(3)]
        last_id = accs[-1].rcpt_ids[-1]
        note = "n" * 1500
        log.transition([Transition(a.queue_id, r, State.SENT, info=note) for a in accs for r in a.rcpt_ids])
        assert log.stats().live_messages == 0
        # Only the current segment is left, and it holds transitions only: no MESSAGE record
        # anywhere still carries an id.
        assert len(segments(tmp_path)) == 1
    with SpoolLog.open(tmp_path, segment_bytes=1024) as log:
        assert log.report.messages_live == 0
        assert log.next_id > last_id
        acc = log.append(envelope(1), b"after")
        assert acc.queue_id > last_id
        # ...and again once that segment too is compacted away.
        log.transition([Transition(acc.queue_id, acc.queue_id, State.DELETED, info="n" * 1500)])
        newest = acc.queue_id
    with SpoolLog.open(tmp_path, segment_bytes=1024) as log:
        assert log.append(envelope(1), b"again").queue_id > newest


def test_transitions_and_terminal_state_survive_restart(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path) as log:
        a = log.append(envelope(3), b"a")
        b = log.append(envelope(1), b"b")
        r1, r2, r3 = a.rcpt_ids
        log.transition(
            [
                Transition(a.queue_id, r1, State.SENT, attempts=1, reply="250 ok"),
                Transition(a.queue_id, r2, State.DEFERRED, attempts=2, next_attempt_at=123.5, reply="451 x"),
                Transition(a.queue_id, r3, State.HELD, info="operator hold"),
            ]
        )
        log.transition([Transition(b.queue_id, b.queue_id, State.BOUNCED, attempts=1, reply="550 no")])
        # Terminal is final: a late deferral does not resurrect a delivered recipient.
        log.transition([Transition(a.queue_id, r1, State.DEFERRED, attempts=9)])
    with SpoolLog.open(tmp_path) as log:
        assert log.get(b.queue_id) is None
        assert [m.queue_id for m in log.live()] == [a.queue_id]
        msg = log.get(a.queue_id)
        assert msg is not None
        s1, s2, s3 = msg.states
        assert (s1.state, s1.attempts, s1.reply) == (State.SENT, 1, "250 ok")
        assert (s2.state, s2.attempts, s2.next_attempt_at) == (State.DEFERRED, 2, 123.5)
        assert s2.reply == "451 x"
        assert (s3.state, s3.info) == (State.HELD, "operator hold")
        log.transition([Transition(a.queue_id, r3, State.RELEASED)])
        log.transition([Transition(a.queue_id, r3, None, info="note only")])
        st = log.get(a.queue_id)
        assert st is not None
        assert st.recipient(r3).state == State.RELEASED
        assert st.recipient(r3).info == "note only"
        log.transition([Transition(a.queue_id, r2, State.SENT), Transition(a.queue_id, r3, State.DELETED)])
        assert log.get(a.queue_id) is None
        assert log.stats().live_recipients == 0
    with SpoolLog.open(tmp_path) as log:
        assert list(log.live()) == []


def test_bad_transitions_are_refused(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path) as log:
        a = log.append(envelope(2), b"a")
        with pytest.raises(ValueError, match="not part of"):
            log.transition([Transition(a.queue_id, a.queue_id + 5, State.SENT)])
        with pytest.raises(ValueError, match="was ever queued"):
            log.transition([Transition(999, 999, State.SENT)])
        with pytest.raises(ValueError, match="initial state"):
            Transition(a.queue_id, a.queue_id, State.ACCEPTED)
        with pytest.raises(ValueError, match="recipient"):
            log.append(envelope(0), b"nobody")


def test_readonly_scan_beside_a_writer(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path) as log:
        a = log.append(envelope(2), b"hello")
        # The writer holds the directory: a second writer is refused, a reader is not.
        with pytest.raises(SpoolUnavailable, match="in use"):
            SpoolLog.open(tmp_path)
        # A batch being written at this very moment looks like a torn tail to a reader.
        seg = segments(tmp_path)[-1]
        with open(seg, "ab") as f:
            f.write(b"\xe5ASP\x01\x00")
        before = seg.read_bytes()
        ro = SpoolLog.open_readonly(tmp_path)
        try:
            assert [m.queue_id for m in ro.live()] == [a.queue_id]
            assert ro.read_data(a.queue_id) == b"hello"
            assert ro.report.readonly
            assert ro.report.truncated_bytes == 6
            assert not (tmp_path / "quarantine").exists()
            assert seg.read_bytes() == before  # nothing changed on disk
            with pytest.raises(SpoolUnavailable, match="read-only"):
                ro.append(envelope(1), b"no")
        finally:
            ro.close()


def test_readonly_of_an_empty_or_missing_spool(tmp_path: Path) -> None:
    ro = SpoolLog.open_readonly(tmp_path)
    assert list(ro.live()) == []
    assert ro.stats().segments == 0
    ro.close()
    assert os.listdir(tmp_path) == []


def test_readonly_of_a_missing_directory(tmp_path: Path) -> None:
    ro = SpoolLog.open_readonly(tmp_path / "never-started")
    assert list(ro.live()) == []
    assert not (tmp_path / "never-started").exists()
