"""The spool's mirror contract: compaction waits for the store mark; recovery replays what lies past it."""

from __future__ import annotations

from pathlib import Path

from spool import SpoolLog, State, Transition
from spool.message import Added, Changed
from tests.spool.helpers import envelope, segments

SEG = 4096
FILL = b"f" * 3700  # two never share a segment


def test_compaction_waits_for_the_store_to_catch_up(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path, segment_bytes=SEG, mirrored=True, store_mark=None) as log:
        first = log.append(envelope(1), FILL)  # segment A
        log.transition([Transition(first.queue_id, first.queue_id, State.SENT)])
        log.append(envelope(1), FILL)  # segment B: A is no longer current, nothing in it is live
        a = segments(tmp_path)[0]
        # The store has not seen A's "sent" yet: deleting A now and crashing would leave the store
        # saying "accepted" for good.
        assert a.exists()
        changes = log.take_changes()
        assert [type(c) for c in changes] == [Added, Changed, Added]
        log.caught_up(log.end())
        log.housekeep()
        assert not a.exists()


def test_recovery_replays_what_the_store_had_not_seen(tmp_path: Path) -> None:
    with SpoolLog.open(tmp_path, segment_bytes=SEG, mirrored=True) as log:
        m0 = log.append(envelope(1), b"zero")
        seen = log.end()  # the store got this far before the crash
        m1 = log.append(envelope(2), b"one")
        log.transition([Transition(m0.queue_id, m0.queue_id, State.SENT, reply="250 ok")])
        log.transition([Transition(m1.queue_id, m1.queue_id, State.DEFERRED, attempts=1, next_attempt_at=5.0)])
        log.transition([Transition(m1.queue_id, m1.queue_id + 1, State.BOUNCED, reply="550 no")])
    with SpoolLog.open(tmp_path, segment_bytes=SEG, mirrored=True, store_mark=seen) as log:
        replay = log.replay
        assert replay[0] == Added(m1.queue_id, envelope(2))
        states = [(c.transition.rcpt_id, c.transition.state) for c in replay[1:] if isinstance(c, Changed)]
        # m0's "sent" is replayed although m0 is no longer live: the store must learn it too.
        assert states == [(m0.queue_id, State.SENT), (m1.queue_id, State.DEFERRED), (m1.queue_id + 1, State.BOUNCED)]
    with SpoolLog.open(tmp_path, segment_bytes=SEG, mirrored=True, store_mark=(10**9, 0)) as log:
        # A mark past the log's end (the spool was replaced): everything is replayed.
        assert sum(isinstance(c, Added) for c in log.replay) == 2
