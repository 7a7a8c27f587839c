"""The accept path shared by SMTP submission and ``POST /v1/send`` (DESIGN §4).

The order is the durability promise: the spool's group commit has fdatasync'ed
the message before this returns, so the caller may answer 250/200. The store
row is queued to the batched writer afterwards; the accept path never waits on
a per-message database transaction. The store rows are derived from the spool by
relay.store.mirror (right after the commit, and again at the next start for
whatever the store had not durably seen), because the spool is the source of truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from relay.errors import InsufficientStorage, QueueUnavailable
from relay.eventbus import EventBus
from relay.events import MessageAccepted
from relay.metrics import RelayMetrics
from relay.store.writer import StatusWriter
from spool import Envelope, Spool, SpoolFull, SpoolUnavailable

log = logging.getLogger("relay.accept")


@dataclass(frozen=True, slots=True)
class Accepted:
    queue_id: int
    ids: tuple[int, ...]  # one per recipient, in envelope order


class Acceptor:
    def __init__(
        self, spool: Spool, writer: StatusWriter, *, bus: EventBus | None = None, metrics: RelayMetrics | None = None
    ) -> None:
        self._spool = spool
        self._writer = writer
        self.accepted_messages = 0
        self.on_accept: Callable[[int], None] | None = None  # the scheduler's notify
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
