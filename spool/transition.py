"""Per-recipient state changes: the only way a queued message changes after it is accepted."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    ACCEPTED = "accepted"  # initial state of every recipient; never the target of a transition
    DEFERRED = "deferred"
    SENT = "sent"
    BOUNCED = "bounced"
    HELD = "held"
    RELEASED = "released"
    DELETED = "deleted"


# Terminal states are final: the spool ignores any later transition for that recipient, so a
# late "deferred" racing a "sent" can never resurrect a delivered recipient.
TERMINAL: frozenset[State] = frozenset({State.SENT, State.BOUNCED, State.DELETED})

# Replies and notes are recorded for humans; capping them bounds every TRANSITION record
# (a hostile MX can send kilobytes of multi-line reply text).
TEXT_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class Transition:
    """One recipient's change of state.

    ``state=None`` records only ``info`` (a note) and leaves the state as it is.
    ``attempts``, ``reply`` and ``info`` keep their previous values when left at 0 / "".
    ``next_attempt_at`` (unix time) is replaced by every state change (None unless deferred).
    """

    queue_id: int
    rcpt_id: int
    state: State | None
    attempts: int = 0
    next_attempt_at: float | None = None
    reply: str = ""
    info: str = ""

    def __post_init__(self) -> None:
        if self.state is not None:
            object.__setattr__(self, "state", State(self.state))
            if self.state is State.ACCEPTED:
                raise ValueError("'accepted' is the initial state, not a transition")
        if len(self.reply) > TEXT_LIMIT:
            object.__setattr__(self, "reply", self.reply[:TEXT_LIMIT])
        if len(self.info) > TEXT_LIMIT:
            object.__setattr__(self, "info", self.info[:TEXT_LIMIT])
