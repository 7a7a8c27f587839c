"""The store as a mirror of the spool: every status row is derived from the spool log, in log order.

The spool is the source of truth (DESIGN §4); the store shows it. After each group commit the spool
hands this mirror what the commit changed (a message added, a recipient's transition) and the log
position just past it; the mirror turns that into write ops for the batched status writer, followed
by a ``SpoolMark`` with that position, as ONE item (the writer never splits an item across
transactions, so the rows and the mark that vouches for them commit together).

Why the status is truthful after any crash (issue 14):
- the spool never deletes a segment past the mark the store has durably reached (``caught_up``), so
  whatever the store has not seen is still in the log;
- at the next start the spool replays every change recorded after the store's mark, through here
  again. Replays are harmless: rows are inserted ``ON CONFLICT DO NOTHING`` and status updates carry
  absolute values.
The idempotency record of an HTTP send travels in the message's envelope (``relay.accept.acceptor``), so it
is derived here too: it exists exactly when the message does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence

from relay.address import domain_of
from relay.reputation.policy import hour_bucket
from relay.reputation.suspension import classify_status, normalize_class
from relay.store.rows import (
    IdempotentResponse,
    MemberTotal,
    MessageRow,
    MessageStatus,
    ReputationCount,
    ReputationKind,
    SpoolMark,
    StatusUpdate,
    WriteOp,
)
from relay.store.writer import StatusWriter
from spool import Envelope, State, Transition
from spool.message import Added, Change, Position

# Envelope attrs of an HTTP send with an Idempotency-Key (relay.accept.acceptor sets them).
IDEMPOTENCY_KEY = "idempotency_key"
REQUEST_HASH = "request_hash"
REJECTED = "rejected"  # JSON: the recipients refused before the accept (part of the 200 answer)
# A delivery's "sent"/"bounced" transition notes its RFC 3463 status as ``info`` ("status 5.1.1"):
# the bounce class of the reputation counters is derived from it.
STATUS_NOTE = "status "

# What the store calls each spool state (an operator delete shows as bounced: it will never arrive).
_STATUS: dict[State, MessageStatus] = {
    State.DEFERRED: "deferred",
    State.SENT: "sent",
    State.BOUNCED: "bounced",
    State.HELD: "held",
    State.RELEASED: "accepted",
    State.DELETED: "bounced",
}


class StatusMirror:
    """The spool's ``Mirror`` (spool.aio): feeds the status writer, reports how far the store got."""

    def __init__(
        self, writer: StatusWriter, *, clock: Callable[[], float] = time.time, count_outcomes: bool = False,
        store_mark: Position | None = None, node: int = 1,
    ) -> None:
        self._writer = writer
        self._node = node  # whose spool this mirrors: the store keeps one mark per node
        self._count_outcomes = count_outcomes  # also write reputation counters (Reputation(outcomes_in_store))
        # A store that never had a mark (first start, or one from before the mirror) has counted the
        # outcomes already in the log its own way: the first replay must not count them again.
        self._recount = store_mark is not None
        self._clock = clock
        self._position: Position | None = None

    def mirror(self, position: Position, changes: Sequence[Change]) -> None:
        now = self._clock()
        ops = ops_for(changes, now, count_outcomes=self._count_outcomes and self._recount)
        self._recount = True
        ops.append(SpoolMark(position[0], position[1], now, self._node))
        self._writer.submit_nowait(ops)
        self._position = position

    async def caught_up(self) -> Position | None:
        position = self._position
        await self._writer.flush()  # every item queued before this is committed (or dropped as invalid)
        return position


def ops_for(changes: Iterable[Change], now: float, *, count_outcomes: bool = False) -> list[WriteOp]:
    ops: list[WriteOp] = []
    for change in changes:
        if isinstance(change, Added):
            env = change.envelope
            if env.attrs.get("dsn"):
                continue  # bounces the relay generated are not a member's messages
            ids = range(change.queue_id, change.queue_id + len(env.rcpts))
            ops.extend(rows_for(change.queue_id, ids, env))
            idem = idempotent_response(env, ids)
            if idem is not None:
                ops.append(idem)
        elif (state := change.transition.state) is not None:
            t = change.transition
            ops.append(StatusUpdate(
                id=t.rcpt_id, status=_STATUS[state], at=now, attempts=t.attempts or None,
                last_reply=t.reply or t.info or None, next_attempt_at=t.next_attempt_at))
            if count_outcomes:
                ops += outcome_counts(t, change.envelope, now)
    return ops


def outcome_counts(t: Transition, env: Envelope, now: float) -> list[WriteOp]:
    """A member's delivery outcome as reputation counters (relay.reputation's hourly aggregates),
    written in the same transaction as the status and the mark: counted exactly once, also when
    recovery replays it. The relay's own mail (DSNs, forwards) is not a member's sending."""
    if t.state not in (State.SENT, State.BOUNCED) or not env.mail_from or env.attrs.get("forward") \
            or env.attrs.get("dsn"):
        return []
    domain = env.mail_from.rpartition("@")[2].lower()
    if t.state is State.SENT:
        kind: ReputationKind = "sent"
        klass = ""
    else:
        kind = "bounce"
        klass = normalize_class(classify_status(t.info.removeprefix(STATUS_NOTE)) if t.info.startswith(STATUS_NOTE)
                                else "hard")
    return [ReputationCount(env.did, domain, hour_bucket(now), kind, klass, 1), MemberTotal(env.did, kind, 1)]


def rows_for(queue_id: int, ids: Iterable[int], env: Envelope) -> list[MessageRow]:
    sender_domain = domain_of(env.mail_from) if "@" in env.mail_from else ""
    return [
        MessageRow(
            id=rid,
            queue_id=queue_id,
            did=env.did,
            from_domain=sender_domain,
            mail_from=env.mail_from,
            recipient=rcpt,
            subject=env.attrs.get("subject", "")[:300],
            category=env.attrs.get("category", ""),
            source="http" if env.attrs.get("source") == "http" else "smtp",
            tags=env.attrs.get("tags", ""),  # the sender's /v1/send tags and metadata (relay.accept.sendmeta)
            metadata=env.attrs.get("metadata", ""),
            status="accepted",
            attempts=0,
            last_reply="",
            next_attempt_at=None,
            created_at=env.arrival,
            updated_at=env.arrival,
        )
        for rid, rcpt in zip(ids, env.rcpts, strict=True)
    ]


def send_response(rcpts: Iterable[str], ids: Iterable[int], rejected: Sequence[object]) -> dict[str, object]:
    """The body of ``POST /v1/send``'s 200 (one shape, built here and by the HTTP handler)."""
    accepted = [{"recipient": r, "messageId": i} for r, i in zip(rcpts, ids, strict=True)]
    return {"accepted": accepted, "rejected": list(rejected)}


def idempotent_response(env: Envelope, ids: Iterable[int]) -> IdempotentResponse | None:
    key = env.attrs.get(IDEMPOTENCY_KEY)
    if not key:
        return None
    rejected = json.loads(env.attrs.get(REJECTED) or "[]")
    body = json.dumps(send_response(env.rcpts, ids, rejected), separators=(",", ":"), sort_keys=True)  # as jsonify
    return IdempotentResponse(did=env.did, key=key, request_hash=env.attrs.get(REQUEST_HASH, ""),
                              status_code=200, response_json=body, created_at=env.arrival)
