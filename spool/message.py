"""What the spool holds: envelopes, queued messages and their recipients' states."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from spool.transition import TERMINAL, State, Transition


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpts: tuple[str, ...]
    did: str
    attrs: Mapping[str, str]  # free-form: category, source ("smtp"/"http"), subject, ...
    arrival: float  # unix time


# Where a record ends in the log: (segment, offset just past the record). Compared as tuples, it
# orders every record of the log; a mirror (the status store) remembers how far it has caught up.
Position = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Added:
    """A MESSAGE record made durable, as a mirror of the spool sees it."""

    queue_id: int
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Changed:
    """A transition that changed a recipient, with its message's envelope (the message may be gone)."""

    transition: Transition
    envelope: Envelope


# What a mirror is told, in log order: a message was added, or a transition changed a recipient.
Change = Added | Changed


@dataclass(frozen=True, slots=True)
class Accepted:
    """An acknowledged (fdatasync'ed) message: its queue id and one id per recipient, in order."""

    queue_id: int
    rcpt_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RcptState:
    state: State = State.ACCEPTED
    attempts: int = 0
    next_attempt_at: float | None = None
    reply: str = ""
    info: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def after(self, t: Transition) -> RcptState:
        """The state once ``t`` is applied (the caller has checked this one is not terminal)."""
        if t.state is None:
            return RcptState(self.state, self.attempts, self.next_attempt_at, self.reply, t.info or self.info)
        attempts = t.attempts or self.attempts
        return RcptState(t.state, attempts, t.next_attempt_at, t.reply or self.reply, t.info or self.info)


INITIAL = RcptState()


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """An immutable snapshot of one live message; the index replaces it on every transition.

    ``segment``/``offset``/``length`` locate the raw message bytes on disk (``length`` is the
    message size). ``states`` is parallel to ``rcpt_ids`` and ``envelope.rcpts``.
    """

    queue_id: int
    envelope: Envelope
    segment: int
    offset: int
    length: int
    states: tuple[RcptState, ...]

    @property
    def rcpt_ids(self) -> tuple[int, ...]:
        # Recipient ids are a contiguous range starting at the queue id.
        return tuple(range(self.queue_id, self.queue_id + len(self.states)))

    def recipient(self, rcpt_id: int) -> RcptState:
        i = rcpt_id - self.queue_id
        if not 0 <= i < len(self.states):
            raise KeyError(rcpt_id)
        return self.states[i]

    def rcpt_state(self, rcpt_id: int) -> State:
        return self.recipient(rcpt_id).state

    def recipients(self) -> Iterator[tuple[int, str, RcptState]]:
        """(rcpt id, address, state) for every recipient, in envelope order."""
        for i, (addr, st) in enumerate(zip(self.envelope.rcpts, self.states, strict=True)):
            yield self.queue_id + i, addr, st

    @property
    def live(self) -> bool:
        return any(not s.terminal for s in self.states)
