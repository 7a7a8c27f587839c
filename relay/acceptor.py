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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from relay import sendmeta
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


@dataclass(frozen=True, slots=True)
class Submission:
    """One message to accept (``Acceptor.accept_all`` takes several at once)."""

    did: str
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes
    attrs: Mapping[str, str]


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
        self.last_refusal: tuple[str, float] | None = None  # (why, monotonic time) until the next accept; /healthz

    async def accept(
        self, *, did: str, mail_from: str, rcpts: Iterable[str], data: bytes, attrs: Mapping[str, str]
    ) -> Accepted:
        (accepted,) = await self.accept_all([Submission(did, mail_from, tuple(rcpts), data, attrs)])
        return accepted

    async def accept_all(self, subs: Sequence[Submission]) -> list[Accepted]:
        """Several messages in one spool batch: all of them are durable, or none (every copy an
        inbound message makes, so a refusal never leaves some copies behind to be duplicated by the
        sender's retry)."""
        if not subs:
            return []
        if self._writer.overloaded:
            # The store is far behind (down or slow): refuse for now rather than grow without bound.
            raise QueueUnavailable()
        now = time.time()
        envelopes = [Envelope(mail_from=s.mail_from, rcpts=s.rcpts, did=s.did, attrs=dict(s.attrs), arrival=now)
                     for s in subs]
        started = time.perf_counter()
        dids = ",".join(sorted({s.did for s in subs}))
        try:
            results = await self._spool.commit([(env, s.data) for env, s in zip(envelopes, subs, strict=True)])
        except SpoolFull as exc:
            log.warning("spool full, refusing message from %s: %s", dids, exc)
            self.last_refusal = (f"spool full: {exc}", time.monotonic())
            raise InsufficientStorage() from None
        except SpoolUnavailable as exc:
            log.exception("spool unavailable, refusing message from %s", dids)
            self.last_refusal = (f"spool unavailable: {exc}", time.monotonic())
            raise QueueUnavailable() from None
        self.last_refusal = None
        out = []
        for env, sub, result in zip(envelopes, subs, results, strict=True):
            self.accepted_messages += 1
            if self.on_accept is not None:
                self.on_accept(result.queue_id)
            source = _source(env.attrs)
            if self.metrics is not None:
                self.metrics.observe_accept(source, len(env.rcpts), time.perf_counter() - started)
            if self.bus is not None:
                self.bus.publish(MessageAccepted(
                    queue_id=result.queue_id, rcpt_ids=tuple(result.rcpt_ids), did=sub.did, sender=sub.mail_from,
                    recipients=env.rcpts, size=len(sub.data), source=source,
                    tags=tuple(sendmeta.tags_of(env.attrs.get("tags"))),
                    metadata=sendmeta.metadata_of(env.attrs.get("metadata"))))
            out.append(Accepted(result.queue_id, tuple(result.rcpt_ids)))
        return out


def _source(attrs: Mapping[str, str]) -> str:
    """The event stream's and /metrics' source: smtp | http | dsn | forward (inbound keeps its attrs)."""
    if attrs.get("dsn"):
        return "dsn"
    if attrs.get("forward"):
        return "forward"
    return "http" if attrs.get("source") == "http" else "smtp"
