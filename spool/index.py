"""The in-memory index: live messages, their recipients' states, and compaction bookkeeping.

Compaction rule: a segment may be deleted only when every message referenced by any record in
it (stored there or transitioned there) is terminal, AND every segment that stores one of those
messages is gone. Deleting a segment that holds "rcpt X sent" while X's MESSAGE record survives
elsewhere would make recovery resend X: while X is live (its record pins that segment), and also
after X is terminal when an older segment holding X is still pinned by another message that stays
deferred (issue 14). So each live message knows the segments that mention it, and each segment
counts the live messages it mentions; when a message retires, its own segment is released at once
but the segments holding its later records are released only when its own segment is dropped. A
segment whose count drops to zero is garbage (unless it is the one being written).
"""

from __future__ import annotations

from collections.abc import Iterator

from spool.message import INITIAL, Envelope, QueuedMessage
from spool.transition import TERMINAL, Transition


class Index:
    def __init__(self) -> None:
        # Insertion order is log order, which is id order: live() lists oldest first.
        self.messages: dict[int, QueuedMessage] = {}
        self.live_rcpts = 0
        self.orphans = 0  # transitions for messages no longer (or never) known
        self.duplicates = 0
        self._mentions: dict[int, list[int]] = {}  # queue id -> segments mentioning it
        self._refs: dict[int, int] = {}  # segment -> live messages it mentions
        self.freed: list[int] = []  # segments whose count reached zero, for the owner to reap
        # segment -> segments holding records of retired messages stored in it: released when it is dropped
        self._waiting: dict[int, list[int]] = {}

    def add_segment(self, seq: int) -> None:
        self._refs.setdefault(seq, 0)

    def unreferenced(self) -> list[int]:
        return [seq for seq, n in self._refs.items() if n == 0]

    def references(self, seq: int) -> int:
        """Live messages segment ``seq`` mentions, plus retired ones whose own segment it must outlive."""
        return self._refs.get(seq, 0)

    def drop_segment(self, seq: int) -> None:
        """Forget a deleted segment; the segments that only had to outlive it may now go too."""
        del self._refs[seq]
        for dep in self._waiting.pop(seq, ()):
            self._release(dep)

    def add(self, queue_id: int, envelope: Envelope, seq: int, offset: int, length: int) -> None:
        """Index a durable MESSAGE record; ``offset``/``length`` locate its raw bytes in ``seq``."""
        if queue_id in self.messages:
            self.duplicates += 1  # ids are never reused, so only a damaged log can get here
            return
        n = len(envelope.rcpts)
        msg = QueuedMessage(queue_id, envelope, seq, offset, length, (INITIAL,) * n)
        self.messages[queue_id] = msg
        self._mentions[msg.queue_id] = [seq]
        self._refs[seq] += 1
        self.live_rcpts += n

    def apply(self, t: Transition, seq: int) -> bool:
        """Apply one durable transition recorded in segment ``seq`` (same rules live and replayed).

        Returns whether it changed anything (False: an orphan, or a recipient already terminal).
        """
        msg = self.messages.get(t.queue_id)
        i = t.rcpt_id - t.queue_id
        if msg is None or not 0 <= i < len(msg.states):
            self.orphans += 1
            return False
        old = msg.states[i]
        if old.terminal:
            return False  # terminal is final: see transition.TERMINAL
        new = old.after(t)
        mentions = self._mentions[t.queue_id]
        if mentions[-1] != seq:  # records arrive in log order, so the newest mention is last
            mentions.append(seq)
            self._refs[seq] += 1
        states = (*msg.states[:i], new, *msg.states[i + 1 :])
        if new.state in TERMINAL:
            self.live_rcpts -= 1
            if all(s.terminal for s in states):
                self._retire(msg)
                return True
        self.messages[t.queue_id] = QueuedMessage(
            msg.queue_id, msg.envelope, msg.segment, msg.offset, msg.length, states
        )
        return True

    def _retire(self, msg: QueuedMessage) -> None:
        del self.messages[msg.queue_id]
        home, *later = self._mentions.pop(msg.queue_id)
        self._release(home)
        if later:
            # These hold the records that make msg terminal: they must outlive the record of msg itself.
            self._waiting.setdefault(home, []).extend(later)

    def _release(self, seq: int) -> None:
        self._refs[seq] -= 1
        if self._refs[seq] == 0:
            self.freed.append(seq)

    def live(self) -> Iterator[QueuedMessage]:
        # A snapshot of the values, so callers may await between items while commits go on.
        return iter(list(self.messages.values()))
