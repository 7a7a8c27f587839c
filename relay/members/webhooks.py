"""Member webhooks: delivery events POSTed to the member's own HTTPS endpoint, signed.

A member registers one endpoint (``PUT /member/webhook``) and the event types it wants:
``accepted`` (per recipient), ``delivered``, ``deferred``, ``bounced``, ``complained``,
``unsubscribed``. Each event is one POST of JSON::

    {"type": "delivered", "id": "evt_…", "created": 1790000000, "data": {...}}

with ``Content-Type: application/json`` and a Stripe-style signature header::

    Atmos-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{raw body}")>

The receiver recomputes the HMAC over the raw body bytes with its ``whsec_…`` secret, compares in
constant time and refuses timestamps older than a few minutes (``verify_signature`` below is
standalone: copy it). ``id`` is the same on every retry, so receivers can de-duplicate.

Delivery never waits for a webhook: the dispatcher is an ordinary event-bus subscriber (the bus drops a
subscriber that falls behind; the dispatcher then logs and resubscribes) that writes each event to the
store's outbox (it survives restarts; ``id`` is derived from the event, so the same fact always has the
same id). One lane per member POSTs that member's events in order, at most 16 lanes at once, each POST
bounded (3 s to connect, 10 s overall), so one member's slow endpoint delays only that member; a failed
POST (non-2xx, timeout, connection error) is retried after 1 s, 5 s, 30 s, 2 min and 10 min, then
dropped and logged.
Endpoints are looked up in the store and cached for ``cache_ttl`` seconds; ``PUT``/``DELETE
/member/webhook`` call ``forget`` so a change takes effect at once (another process, e.g. ``atmos
admin``, changing the table is seen within ``cache_ttl``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import httpx
import trio

from relay.events import ComplaintReceived, Delivery, Event, MessageAccepted, Unsubscribed
from relay.mail.dkimkeys import SecretBox, SecretBoxError
from relay.net.egress import Egress
from relay.operator.eventbus import EventBus
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.rows import OutboxEvent, Webhook

log = logging.getLogger("relay.members.webhooks")

EVENT_TYPES = ("accepted", "delivered", "deferred", "bounced", "complained", "unsubscribed")
SIGNATURE_HEADER = "Atmos-Signature"
BACKOFF = (1.0, 5.0, 30.0, 120.0, 600.0)
_DELIVERY_TYPES = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced"}


def new_secret() -> str:
    """``whsec_`` + 32 random bytes, base64url without padding."""
    return "whsec_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


_SEALED = "sealed:v1:"


def seal_secret(box: SecretBox, did: str, url: str, secret: str) -> str:
    """The ``whsec_`` secret as stored: AES-GCM under the relay secret (as DKIM keys are), bound to
    its row (DID and URL as associated data), so a ciphertext copied to another row never opens."""
    blob = box.encrypt(secret.encode(), aad=_row(did, url))
    return _SEALED + base64.b64encode(blob).decode("ascii")


def open_secret(box: SecretBox, hook: Webhook) -> str:
    """The usable secret of a stored endpoint; SecretBoxError when it does not open for this row.
    Rows stored before sealing (plain ``whsec_…``) are read as they are."""
    if not hook.secret.startswith(_SEALED):
        return hook.secret
    try:
        blob = base64.b64decode(hook.secret.removeprefix(_SEALED), validate=True)
    except ValueError:
        raise SecretBoxError("the stored webhook secret is not valid base64") from None
    return box.decrypt(blob, aad=_row(hook.did, hook.url)).decode()


def _row(did: str, url: str) -> bytes:
    return b"webhook\0" + did.encode() + b"\0" + url.encode()


def sign(secret: str, body: bytes, t: int) -> str:
    """The ``Atmos-Signature`` header value for ``body`` sent at unix time ``t``."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes | str, tolerance: float = 300,
                     now: float | None = None) -> bool:
    """True when ``header`` (``t=…,v1=…``) is a valid signature of the raw ``body`` with ``secret``
    and its timestamp is within ``tolerance`` seconds of ``now`` (default: the current time).

    Standard library only, so members can copy it into their receiver.
    """
    raw = body.encode() if isinstance(body, str) else body
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            candidates.append(value)
    if t is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, c) for c in candidates)


def to_webhook_events(event: Event) -> list[tuple[str, str, dict[str, Any]]]:
    """(did, webhook type, data) for a bus event; empty for events members do not get."""
    match event:
        case MessageAccepted() if event.source in ("smtp", "http"):  # not the relay's own DSNs/forwards
            return [(event.did, "accepted", {"message_id": rid, "queue_id": event.queue_id, "recipient": rcpt,
                                             "sender": event.sender, "source": event.source,
                                             "tags": list(event.tags), "metadata": event.metadata})
                    for rid, rcpt in zip(event.rcpt_ids, event.recipients, strict=False)]
        case Delivery() if event.state in _DELIVERY_TYPES:
            data: dict[str, Any] = {"message_id": event.rcpt_id, "queue_id": event.queue_id,
                                    "recipient": event.recipient, "attempts": event.attempts,
                                    "mx_host": event.mx_host, "reply": event.reply, "tls": event.tls,
                                    "tags": list(event.tags), "metadata": event.metadata}
            if event.state == "deferred":
                data["next_attempt_at"] = event.next_attempt_at
            return [(event.did, _DELIVERY_TYPES[event.state], data)]
        case ComplaintReceived():
            return [(event.did, "complained", {"recipient": event.recipient, "feedback_type": event.feedback_type})]
        case Unsubscribed():
            return [(event.did, "unsubscribed", {"recipient": event.recipient})]
    return []


def _members_due(store: Store, *, now: float) -> list[str]:
    return store.outbox_members_due(now)


def _due(store: Store, *, did: str, now: float, limit: int) -> list[OutboxEvent]:
    return store.outbox_due(did, now, limit)


def event_id_for(did: str, kind: str, data: dict[str, Any]) -> str:
    """The stable id of a webhook event: the same fact (re-derived after a restart) gets the same id."""
    blob = json.dumps([did, kind, data], sort_keys=True, separators=(",", ":")).encode()
    return "evt_" + hashlib.sha256(blob).hexdigest()[:24]


class WebhookDispatcher:
    """Bus events -> the store's webhook outbox -> one delivery lane per member.

    The outbox survives restarts; an event leaves it when the endpoint answered 2xx or after its
    last retry. Each member has one lane (one POST at a time, in order), at most ``workers`` lanes
    run at once, and every POST is bounded (``connect_timeout``, ``timeout`` overall): a member's
    slow or dead endpoint delays only that member's events (issue 13 item 7b, issue 14).
    """

    def __init__(self, store: AsyncStore, bus: EventBus, *, clock: Callable[[], float] = time.time,
                 workers: int = 16, backoff: Sequence[float] = BACKOFF, connect_timeout: float = 3.0,
                 timeout: float = 10.0, cache_ttl: float = 10.0, poll: float = 1.0, batch: int = 20,
                 egress: Egress | None = None, secret_key: bytes = b"") -> None:
        self.store, self.bus, self.clock = store, bus, clock
        self._box = SecretBox(secret_key) if secret_key else None  # opens sealed endpoint secrets
        self.egress = egress or Egress()  # every POST resolves and connects through the address policy
        self.workers, self.backoff = workers, tuple(backoff)
        self.connect_timeout, self.timeout, self.cache_ttl = connect_timeout, timeout, cache_ttl
        self.poll, self.batch = poll, batch
        self._cache: dict[str, tuple[float, Webhook | None]] = {}
        self._lanes: set[str] = set()
        self._wake = trio.Event()
        self.sent = self.failed = self.dropped = 0  # counters since start

    async def run(self, *, deliver: bool = True,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bus events into the outbox; with ``deliver``, also the delivery lanes (``deliver``)."""
        async with trio.open_nursery() as nursery:
            if deliver:
                nursery.start_soon(self.deliver)
            await nursery.start(self._listen)
            task_status.started()

    async def deliver(self) -> None:
        """POST what the outbox holds, forever. Every node fills the outbox with its own events; one node
        of a cluster delivers them (relay.cluster.node.Node.while_leading), so none is POSTed twice."""
        timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout)
        async with self.egress.http_client(timeout=timeout) as client, trio.open_nursery() as nursery:
            await self._dispatch(client, nursery)

    async def _listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            with self.bus.subscribe(internal=True) as sub:
                if not started:
                    task_status.started()
                    started = True
                async for event in sub:
                    try:
                        await self._handle(event)
                    except Exception:  # a store hiccup loses one event, never the dispatcher
                        log.exception("webhook: could not queue %s", event.type)
            if not sub.dropped:
                return  # the bus closed: shutting down
            log.warning("webhook dispatcher fell behind the event bus and was dropped; resubscribing")

    def forget(self, did: str) -> None:
        """Drop the cached endpoint of ``did`` (it was just changed or removed)."""
        self._cache.pop(did, None)

    async def _webhook(self, did: str) -> Webhook | None:
        now = self.clock()
        hit = self._cache.get(did)
        if hit is not None and hit[0] > now:
            return hit[1]
        hook = await self.store.get_webhook(did)
        self._cache[did] = (now + self.cache_ttl, hook)
        return hook

    async def _handle(self, event: Event) -> None:
        rows: list[OutboxEvent] = []
        now = self.clock()
        for did, kind, data in to_webhook_events(event):
            hook = await self._webhook(did)
            if hook is None or kind not in hook.events:
                continue
            event_id = event_id_for(did, kind, data)
            body = json.dumps({"type": kind, "id": event_id, "created": int(now), "data": data},
                              separators=(",", ":"))
            rows.append(OutboxEvent(id=event_id, did=did, body=body, next_attempt_at=now, created_at=now))
        if rows:
            await self.store.call(lambda s: s.outbox_add(rows))
            self._wake.set()

    async def _dispatch(self, client: httpx.AsyncClient, nursery: trio.Nursery) -> None:
        """Start a lane for every member with due events (until ``workers`` lanes run)."""
        while True:
            try:
                due = await self.store.call(partial(_members_due, now=self.clock()))
            except Exception:
                log.exception("webhook: cannot read the outbox; trying again")
                due = []
            for did in due:
                if did not in self._lanes and len(self._lanes) < self.workers:
                    self._lanes.add(did)
                    nursery.start_soon(self._lane, client, did)
            with trio.move_on_after(self.poll):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _lane(self, client: httpx.AsyncClient, did: str) -> None:
        try:
            while True:
                hook = await self._webhook(did)
                due = await self.store.call(partial(_due, did=did, now=self.clock(), limit=self.batch))
                if not due:
                    return
                if hook is None:
                    n = await self.store.call(lambda s: s.outbox_drop_member(did))
                    log.info("webhook: %s has no endpoint any more; dropped %d queued events", did, n)
                    return
                for ev in due:
                    if not await self._deliver(client, hook, ev):
                        return  # the endpoint is failing: the rest waits for the next round
        except Exception:
            log.exception("webhook: lane of %s failed; it restarts with the next round", did)
        finally:
            self._lanes.discard(did)

    async def _deliver(self, client: httpx.AsyncClient, hook: Webhook, ev: OutboxEvent) -> bool:
        if await self._post(client, hook, ev):
            self.sent += 1
            await self.store.call(lambda s: s.outbox_done(ev.id))
            return True
        self.failed += 1
        if ev.attempts >= len(self.backoff):
            self.dropped += 1
            log.warning("webhook %s to %s dropped after %d attempts", ev.id, hook.url, ev.attempts + 1)
            await self.store.call(lambda s: s.outbox_done(ev.id))
        else:
            later = self.clock() + self.backoff[ev.attempts]
            await self.store.call(lambda s: s.outbox_retry(ev.id, ev.attempts + 1, later))
        return False

    async def _post(self, client: httpx.AsyncClient, hook: Webhook, ev: OutboxEvent) -> bool:
        body = ev.body.encode()
        try:
            secret = open_secret(self._box, hook) if self._box is not None else hook.secret
        except SecretBoxError as exc:  # counted as a failure: retried, then dropped, like an unreachable endpoint
            log.error("webhook %s of %s: cannot open its stored secret (%s): not sent", ev.id, hook.did, exc)
            return False
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body, int(self.clock())),
                   "User-Agent": "atmosphere-relay-webhooks/1"}
        with trio.move_on_after(self.timeout):  # overall, whatever the peer trickles
            try:
                resp = await client.post(hook.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                log.info("webhook %s to %s failed: %s", ev.id, hook.url, exc)
                return False
            if 200 <= resp.status_code < 300:
                return True
            log.info("webhook %s to %s answered %d", ev.id, hook.url, resp.status_code)
            return False
        log.info("webhook %s to %s timed out after %.0f s", ev.id, hook.url, self.timeout)
        return False


__all__ = ["EVENT_TYPES", "SIGNATURE_HEADER", "WebhookDispatcher", "event_id_for", "new_secret", "open_secret",
           "seal_secret", "sign", "to_webhook_events", "verify_signature"]
