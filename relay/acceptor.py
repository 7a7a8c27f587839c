"""The accept path shared by SMTP submission and ``POST /v1/send`` (DESIGN §4).

The order is the durability promise: the spool's group commit has fdatasync'ed
the message before this returns, so the caller may answer 250/200. The store
row is queued to the batched writer afterwards; the accept path never waits on
a per-message database transaction. If the process dies before the writer
flushes, the rows are re-derived from the spool at the next start
(``reconcile``), because the spool is the source of truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from relay.address import domain_of
from relay.errors import InsufficientStorage, QueueUnavailable
from relay.eventbus import EventBus
from relay.events import MessageAccepted
from relay.metrics import RelayMetrics
from relay.store.base import MessageRow
from relay.store.writer import StatusWriter
from spool import Envelope, QueuedMessage, Spool, SpoolFull, SpoolUnavailable

log = logging.getLogger("relay.accept")


@dataclass(frozen=True, slots=True)
class Accepted:
    queue_id: int
    ids: tuple[int, ...]  # one per recipient, in envelope order


class Acceptor:
    def __init__(
        self, spool: Spool, writer: StatusWriter, *, bus: EventBus | None = None, metrics: RelayMetrics | None = None,
        on_accept: Callable[[int], None] | None = None,
    ) -> None:
        self._spool = spool
        self._writer = writer
        self.accepted_messages = 0
        self.on_accept = on_accept  # the scheduler's notify
        self.bus = bus  # operator event stream: MessageAccepted after each accept
        self.metrics = metrics  # /metrics: accepted by source, accept latency

    async def accept(
        self, *, did: str, mail_from: str, rcpts: Iterable[str], data: bytes, attrs: Mapping[str, str]
    ) -> Accepted:
        if self._writer.overloaded:
            # The store is far behind (down or slow): refuse for now rather than grow without bound.
            raise QueueUnavailable()
        envelope = Envelope(
            mail_from=mail_from, rcpts=tuple(rcpts), did=did, attrs=dict(attrs), arrival=time.time()
        )
        started = time.perf_counter()
        try:
            result = await self._spool.accept(envelope, data)
        except SpoolFull as exc:
            log.warning("spool full, refusing message from %s: %s", did, exc)
            raise InsufficientStorage() from None
        except SpoolUnavailable:
            log.exception("spool unavailable, refusing message from %s", did)
            raise QueueUnavailable() from None
        self.accepted_messages += 1
        self._writer.submit_nowait(rows_for(result.queue_id, result.rcpt_ids, envelope))
        if self.on_accept is not None:
            self.on_accept(result.queue_id)
        source = _source(envelope.attrs)
        if self.metrics is not None:
            self.metrics.observe_accept(source, len(envelope.rcpts), time.perf_counter() - started)
        if self.bus is not None:
            self.bus.publish(MessageAccepted(
                queue_id=result.queue_id, rcpt_ids=tuple(result.rcpt_ids), did=did, sender=mail_from,
                recipients=envelope.rcpts, size=len(data), source=source))
        return Accepted(result.queue_id, tuple(result.rcpt_ids))


def _source(attrs: Mapping[str, str]) -> str:
    """The event stream's and /metrics' source: smtp | http | dsn | forward (inbound keeps its attrs)."""
    if attrs.get("dsn"):
        return "dsn"
    if attrs.get("forward"):
        return "forward"
    return "http" if attrs.get("source") == "http" else "smtp"


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
            status="accepted",
            attempts=0,
            last_reply="",
            next_attempt_at=None,
            created_at=env.arrival,
            updated_at=env.arrival,
        )
        for rid, rcpt in zip(ids, env.rcpts, strict=True)
    ]


def reconcile_rows(live: Iterable[QueuedMessage]) -> list[MessageRow]:
    """Store rows for every live spool message (INSERT OR IGNORE makes replays harmless)."""
    rows: list[MessageRow] = []
    for msg in live:
        if msg.envelope.attrs.get("dsn"):
            continue  # bounces the relay generated are not a member's messages
        rows.extend(rows_for(msg.queue_id, msg.rcpt_ids, msg.envelope))
    return rows
