"""Compaction deletes a segment only when nothing in it can still matter."""

from __future__ import annotations

from pathlib import Path

from spool import SpoolLog, State, Transition
from tests.spool.helpers import envelope, segments

# Every record below is bigger than a segment, so each batch opens a new segment and the test can
# say exactly which segment holds what.
SEG = 1024
BIG = b"m" * 1500
NOTE = "n" * 1500


def test_a_segment_holding_only_a_sent_record_of_a_live_message_is_kept(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path, segment_bytes=SEG) as log:
        m = log.append(envelope(2), BIG)  # segment A
        r1, r2 = m.rcpt_ids
        log.transition([Transition(m.queue_id, r1, State.SENT, info=NOTE)])  # segment S: "r1 sent" only
        filler = log.append(envelope(1), BIG)  # segment C: S is no longer current
        a, s, c = segments(tmp_path)
        # S stores no message at all, but deleting it would forget that r1 was delivered, and the
        # next start would deliver r1 again.
        assert s.exists()
    with SpoolLog.open(tmp_path, segment_bytes=SEG) as log:
        msg = log.get(m.queue_id)
        assert msg is not None
        assert msg.rcpt_state(r1) == State.SENT  # no duplicate delivery after restart
        assert msg.rcpt_state(r2) == State.ACCEPTED
        assert segments(tmp_path) == [a, s, c]
        log.transition([Transition(m.queue_id, r2, State.BOUNCED, info=NOTE)])  # segment D
        # The message is terminal: its segment and the one with its transition go; C stays (the
        # filler is live) and D is current.
        assert segments(tmp_path)[:1] == [c]
        assert not a.exists()
        assert not s.exists()
        log.transition([Transition(filler.queue_id, filler.queue_id, State.SENT)])
        assert not c.exists()
        assert len(segments(tmp_path)) == 1
        assert log.stats().segments == 1
    with SpoolLog.open(tmp_path, segment_bytes=SEG) as log:
        assert list(log.live()) == []


def test_a_segment_is_kept_while_any_message_it_mentions_is_live(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path, segment_bytes=SEG) as log:
        m1 = log.append(envelope(1), BIG)  # A
        m2 = log.append(envelope(1), BIG)  # B
        # One record set in segment C: m1 sent, m2 deferred.
        log.transition(
            [
                Transition(m1.queue_id, m1.queue_id, State.SENT, info=NOTE),
                Transition(m2.queue_id, m2.queue_id, State.DEFERRED, attempts=1, next_attempt_at=1.0),
            ]
        )
        m3 = log.append(envelope(1), BIG)  # D, current
        # A (m1 only) is gone; B (m2) and C (mentions the live m2) stay.
        b, c, d = segments(tmp_path)
        assert log.get(m1.queue_id) is None
        assert log.get(m2.queue_id) is not None
        log.transition([Transition(m2.queue_id, m2.queue_id, State.SENT)])  # E: D is over size
        # B and C are no longer needed; D stays for the live m3.
        assert not b.exists()
        assert not c.exists()
        assert d.exists()
        assert log.get(m3.queue_id) is not None
        assert len(segments(tmp_path)) == 2


def test_compaction_at_startup_and_the_current_segment_is_never_deleted(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path, segment_bytes=SEG) as log:
        m = log.append(envelope(1), b"small")
        log.transition([Transition(m.queue_id, m.queue_id, State.SENT)])
        # Everything is terminal, but this is still the segment being written.
        assert len(segments(tmp_path)) == 1
    with SpoolLog.open(tmp_path, segment_bytes=SEG) as log:
        assert len(segments(tmp_path)) == 1
        assert log.report.compacted_segments == 0
        log.append(envelope(1), BIG)  # rolls; the old all-terminal segment can go now
        assert len(segments(tmp_path)) == 1


def test_a_terminal_record_outlives_the_message_it_refers_to(tmp_path: Path) -> None:
    """Issue 14: A holds M0 (stays deferred) and M1; M1's "sent" lands in B after A rolled; once B's other
    messages are terminal B may not be deleted while A (which still stores M1) exists, across restarts."""
    small, seg, fill = b"s" * 200, 4096, b"f" * 3700  # two fills never share a segment; small records do
    with SpoolLog.open(tmp_path, segment_bytes=seg) as log:
        m0 = log.append(envelope(1), small)  # segment A
        m1 = log.append(envelope(1), small)  # segment A too: both fit
        log.transition([Transition(m0.queue_id, m0.queue_id, State.DEFERRED, attempts=1, next_attempt_at=9.0)])
        other = log.append(envelope(1), fill)  # segment B: A rolled
        a, b = segments(tmp_path)
        log.transition([Transition(m1.queue_id, m1.queue_id, State.SENT)])  # in B
        log.transition([Transition(other.queue_id, other.queue_id, State.SENT)])  # in B: B mentions nothing live
        last = log.append(envelope(1), fill)  # segment C: B is no longer current
        assert len(segments(tmp_path)) == 3
        assert a.exists()
        assert b.exists(), "B holds M1's 'sent' while A still holds M1 itself"
    for _ in range(2):  # and across restarts (recovery reaps with the same rule)
        with SpoolLog.open(tmp_path, segment_bytes=seg) as log:
            assert log.get(m1.queue_id) is None, "M1 was delivered; it must never be live again"
            assert log.get(other.queue_id) is None
            held = log.get(m0.queue_id)
            assert held is not None and held.rcpt_state(m0.queue_id) == State.DEFERRED
            assert a.exists() and b.exists()
    with SpoolLog.open(tmp_path, segment_bytes=seg) as log:
        log.transition([Transition(m0.queue_id, m0.queue_id, State.SENT)])
        # M0 terminal: A goes, and with it B (its only reason to stay was M1 in A), oldest first.
        assert not a.exists()
        assert not b.exists()
    with SpoolLog.open(tmp_path, segment_bytes=seg) as log:
        assert [m.queue_id for m in log.live()] == [last.queue_id]
