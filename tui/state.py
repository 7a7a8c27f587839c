"""The console's view of the relay: a pure reducer over ``relay.events`` (no Textual, no I/O).

``State.apply(event, ts)`` returns a new ``State``; nothing is mutated in place, so the screens can
compare identities to know what changed, and the reducer is unit-testable on its own.

What comes from the server and what the console keeps itself:

- a ``Snapshot`` replaces everything the server is authoritative for (queue, depth, warming,
  suspensions, paused destinations, rates);
- ``QueueDepth`` replaces the depth gauges (the server's numbers cover the whole queue, the local
  ``queue`` only the ~500 recipients the snapshot listed plus those seen since); between two of
  them the gauges follow the deltas whose before and after the console knows (an acceptance, a
  delivery or an operator action on a listed recipient), so they move live and are corrected by
  the next ``QueueDepth``;
- the delivery log, throughput history, attempt timelines and session counters are the console's
  own memory: they survive a reconnect (a new snapshot) and are bounded.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from relay.events import (
    ComplaintReceived,
    Delivery,
    DomainWarming,
    Event,
    Heartbeat,
    MemberSuspended,
    MemberUnsuspended,
    MessageAccepted,
    NodeInfo,
    Nodes,
    QueueChanged,
    QueueDepth,
    QueuedItem,
    Snapshot,
    SuspendedMember,
    Throughput,
    TlsReportReceived,
    Warming,
)

HISTORY = 60  # throughput samples kept for the sparklines
LOG_LIMIT = 500  # lines kept in the live log
ATTEMPT_LIMIT = 20  # attempts kept per recipient for the detail timeline
QUEUE_LIMIT = 5000  # recipients kept locally (the oldest arrivals are forgotten first)
FINAL = ("sent", "bounced")
DELIVERY_KINDS = ("sent", "deferred", "bounced")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the live log. ``kind``: sent | deferred | bounced | accepted | queue | suspended |
    unsuspended | complaint | tls-report."""

    seq: int
    ts: float
    kind: str
    queue_id: int | None
    subject: str  # the recipient, DID or message the line is about
    detail: str


@dataclass(frozen=True, slots=True)
class Attempt:
    ts: float
    state: str
    mx_host: str | None
    reply: str
    tls: bool


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _reason_key(reply: str, width: int = 72) -> str:
    """Group deferral replies: first line, whitespace collapsed, cut to ``width``."""
    line = " ".join((reply.splitlines() or [""])[0].split())
    return line[:width] if line else "(no reply)"


@dataclass(frozen=True)
class State:
    has_snapshot: bool = False
    now: float = 0.0  # ts of the latest frame applied
    # server-authoritative, replaced by a snapshot
    queue: Mapping[int, QueuedItem] = field(default_factory=dict)  # rcpt_id -> item
    queue_by_state: Mapping[str, int] = field(default_factory=dict)
    queue_by_destination: Mapping[str, int] = field(default_factory=dict)
    in_flight: int = 0
    oldest_deferred: float | None = None
    warming: tuple[DomainWarming, ...] = ()
    suspended: tuple[SuspendedMember, ...] = ()
    paused_destinations: tuple[str, ...] = ()
    accepted_per_s: float = 0.0
    delivered_per_s: float = 0.0
    dropped_subscribers: int = 0
    last_heartbeat: float | None = None
    node: str = ""  # the node this console's stream comes from
    nodes: tuple[NodeInfo, ...] = ()  # every node of the relay (relay.cluster)
    # the console's own memory, kept across snapshots
    accepted_history: tuple[float, ...] = ()
    delivered_history: tuple[float, ...] = ()
    log: tuple[LogEntry, ...] = ()
    next_seq: int = 1
    attempts: Mapping[int, tuple[Attempt, ...]] = field(default_factory=dict)  # rcpt_id -> timeline
    counters: Mapping[str, int] = field(default_factory=dict)  # accepted/sent/deferred/bounced/complaints

    # ---------------------------------------------------------------- reducer

    def apply(self, event: Event | None, ts: float | None = None) -> State:
        """The state after ``event`` (received with frame timestamp ``ts``)."""
        state = self if ts is None else dataclasses.replace(self, now=ts)
        now = state.now
        match event:
            case Snapshot():
                return state._snapshot(event)
            case MessageAccepted():
                return state._accepted(event, now)
            case Delivery():
                return state._delivery(event, now)
            case QueueChanged():
                return state._queue_changed(event, now)
            case QueueDepth():
                return dataclasses.replace(state, queue_by_state=dict(event.by_state),
                                           queue_by_destination=dict(event.by_destination),
                                           in_flight=event.in_flight, oldest_deferred=event.oldest_deferred)
            case Warming():
                return dataclasses.replace(state, warming=tuple(event.domains))
            case MemberSuspended():
                return state._suspended(event, now)
            case MemberUnsuspended():
                kept = tuple(m for m in state.suspended if m.did != event.did)
                return dataclasses.replace(state, suspended=kept)._logged(now, "unsuspended", None, event.did,
                                                                          "suspension lifted")
            case ComplaintReceived():
                return state._counted("complaints")._logged(now, "complaint", None, event.did,
                                                             f"{event.feedback_type} from {event.recipient or '?'}")
            case TlsReportReceived():
                failed = f", {event.failures} failed ({event.failure_types})" if event.failures else ""
                return state._counted("tls_reports")._logged(
                    now, "tls-report", None, event.organization,
                    f"TLS to {event.policy_domain}: {event.successes} sessions ok{failed}")
            case Throughput():
                return state._rates(event.accepted_per_s, event.delivered_per_s)
            case Nodes():
                return dataclasses.replace(state, nodes=tuple(event.nodes))
            case Heartbeat():
                return dataclasses.replace(state, dropped_subscribers=event.dropped_subscribers, last_heartbeat=now)
            case _:  # Command, CommandResult, unknown (None): nothing to remember
                return state

    def _snapshot(self, snap: Snapshot) -> State:
        queue = {item.rcpt_id: item for item in snap.queue}
        attempts = {rid: timeline for rid, timeline in self.attempts.items() if rid in queue}
        state = dataclasses.replace(
            self, has_snapshot=True, queue=queue, queue_by_state=dict(snap.queue_by_state),
            queue_by_destination=dict(snap.queue_by_destination), in_flight=snap.in_flight,
            oldest_deferred=snap.oldest_deferred, warming=tuple(snap.warming), suspended=tuple(snap.suspended),
            paused_destinations=tuple(snap.paused_destinations), attempts=attempts, node=snap.node,
            nodes=tuple(snap.nodes))
        return state._rates(snap.accepted_per_s, snap.delivered_per_s)

    def _rates(self, accepted: float, delivered: float) -> State:
        return dataclasses.replace(
            self, accepted_per_s=accepted, delivered_per_s=delivered,
            accepted_history=(*self.accepted_history, accepted)[-HISTORY:],
            delivered_history=(*self.delivered_history, delivered)[-HISTORY:])

    def _accepted(self, ev: MessageAccepted, now: float) -> State:
        queue = dict(self.queue)
        for rcpt_id, recipient in zip(ev.rcpt_ids, ev.recipients, strict=False):
            queue[rcpt_id] = QueuedItem(queue_id=ev.queue_id, rcpt_id=rcpt_id, did=ev.did, sender=ev.sender,
                                        recipient=recipient, domain=_domain_of(recipient), state="accepted",
                                        attempts=0, next_attempt_at=now, last_reply="", arrival=now)
        if len(queue) > QUEUE_LIMIT:
            oldest = sorted(queue.values(), key=lambda i: (i.arrival, i.rcpt_id))[: len(queue) - QUEUE_LIMIT]
            for item in oldest:
                del queue[item.rcpt_id]
        depth = _Depth(self)
        for recipient in ev.recipients:
            depth.move(None, "accepted", _domain_of(recipient))
        n = len(ev.recipients)
        detail = f"from {ev.sender} via {ev.source}, {n} recipient{'s' if n != 1 else ''}, {ev.size} bytes"
        return (dataclasses.replace(self, queue=queue, queue_by_state=depth.by_state,
                                    queue_by_destination=depth.by_destination)._counted("accepted")
                ._logged(now, "accepted", ev.queue_id, ", ".join(ev.recipients), detail))

    def _delivery(self, ev: Delivery, now: float) -> State:
        queue = dict(self.queue)
        attempts = dict(self.attempts)
        depth = _Depth(self)
        old = queue.get(ev.rcpt_id)
        if ev.state in FINAL:
            queue.pop(ev.rcpt_id, None)
            attempts.pop(ev.rcpt_id, None)
            if old is not None:
                depth.move(old.state, None, old.domain)
        elif ev.state == "deferred":
            if old is not None:
                depth.move(old.state, "deferred", old.domain)
            queue[ev.rcpt_id] = QueuedItem(
                queue_id=ev.queue_id, rcpt_id=ev.rcpt_id, did=ev.did, sender=old.sender if old else "",
                recipient=ev.recipient, domain=ev.domain, state="deferred", attempts=ev.attempts,
                next_attempt_at=ev.next_attempt_at, last_reply=ev.reply, arrival=old.arrival if old else now)
            attempt = Attempt(ts=now, state=ev.state, mx_host=ev.mx_host, reply=ev.reply, tls=ev.tls)
            attempts[ev.rcpt_id] = (*attempts.get(ev.rcpt_id, ()), attempt)[-ATTEMPT_LIMIT:]
        via = f"{ev.mx_host}{' TLS' if ev.tls else ''}: " if ev.mx_host else ""
        state = dataclasses.replace(self, queue=queue, attempts=attempts, queue_by_state=depth.by_state,
                                    queue_by_destination=depth.by_destination)
        if ev.state in DELIVERY_KINDS:
            state = state._counted(ev.state)
        return state._logged(now, ev.state, ev.queue_id, ev.recipient, f"{via}{ev.reply}".strip())

    def _queue_changed(self, ev: QueueChanged, now: float) -> State:
        if ev.action in ("pause", "resume"):  # a destination, not a message (queue_id 0)
            domain = ev.destination.lower()
            paused = tuple(d for d in self.paused_destinations if d != domain)
            if ev.action == "pause":
                paused = tuple(sorted((*paused, domain)))
            verb = "paused" if ev.action == "pause" else "resumed"
            return dataclasses.replace(self, paused_destinations=paused)._logged(
                now, "queue", None, domain, f"delivery {verb}")
        queue = dict(self.queue)
        attempts = dict(self.attempts)
        depth = _Depth(self)
        for rid, item in self.queue.items():
            if item.queue_id != ev.queue_id:
                continue
            if ev.action == "delete":
                del queue[rid]
                attempts.pop(rid, None)
                depth.move(item.state, None, item.domain)
            elif ev.action == "hold":
                queue[rid] = dataclasses.replace(item, state="held", next_attempt_at=None)
                depth.move(item.state, "held", item.domain)
            elif ev.action == "release" and item.state == "held":  # released: "accepted" again, due now
                queue[rid] = dataclasses.replace(item, state="accepted", next_attempt_at=now)
                depth.move(item.state, "accepted", item.domain)
            elif ev.action == "retry" and item.state == "deferred":
                queue[rid] = dataclasses.replace(item, next_attempt_at=now)
        n = ev.changed
        return dataclasses.replace(self, queue=queue, attempts=attempts, queue_by_state=depth.by_state,
                                    queue_by_destination=depth.by_destination)._logged(
            now, "queue", ev.queue_id, f"message {ev.queue_id}", f"{ev.action}: {n} recipient{'s' if n != 1 else ''}")

    def _suspended(self, ev: MemberSuspended, now: float) -> State:
        old = next((m for m in self.suspended if m.did == ev.did), None)
        member = SuspendedMember(did=ev.did, handle=old.handle if old else None, reason=ev.reason,
                                 since=old.since if old else now)
        kept = tuple(m for m in self.suspended if m.did != ev.did)
        how = "automatically" if ev.automatic else "by an operator"
        return dataclasses.replace(self, suspended=(*kept, member))._logged(
            now, "suspended", None, ev.did, f"suspended {how}: {ev.reason}")

    def _counted(self, key: str) -> State:
        counters = dict(self.counters)
        counters[key] = counters.get(key, 0) + 1
        return dataclasses.replace(self, counters=counters)

    def _logged(self, ts: float, kind: str, queue_id: int | None, subject: str, detail: str) -> State:
        entry = LogEntry(seq=self.next_seq, ts=ts, kind=kind, queue_id=queue_id, subject=subject, detail=detail)
        return dataclasses.replace(self, log=(*self.log, entry)[-LOG_LIMIT:], next_seq=self.next_seq + 1)

    # ---------------------------------------------------------------- derived views

    @property
    def queue_total(self) -> int:
        return sum(self.queue_by_state.values())

    def top_deferral_reasons(self, n: int = 5) -> list[tuple[str, int]]:
        """The commonest last replies of deferred recipients (of those the console knows)."""
        counts = Counter(_reason_key(i.last_reply) for i in self.queue.values() if i.state == "deferred")
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def top_destinations(self, n: int = 5) -> list[tuple[str, int]]:
        return sorted(self.queue_by_destination.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def queue_items(self, query: str = "") -> list[QueuedItem]:
        """Queued recipients, oldest message first, filtered by a case-insensitive substring of any
        of: message id, recipient, sender, DID, state, last reply."""
        words = query.lower().split()
        items: Iterable[QueuedItem] = self.queue.values()
        if words:
            items = [i for i in items if all(w in _haystack(i) for w in words)]
        return sorted(items, key=lambda i: (i.queue_id, i.rcpt_id))

    def messages_by_id(self, queue_id: int) -> list[QueuedItem]:
        return [i for i in self.queue.values() if i.queue_id == queue_id]

    def log_since(self, seq: int, kinds: Iterable[str] | None = None) -> list[LogEntry]:
        wanted = None if kinds is None else set(kinds)
        return [e for e in self.log if e.seq > seq and (wanted is None or e.kind in wanted)]


class _Depth:
    """Copy-on-write queue gauges, moved by deltas whose before and after are known."""

    def __init__(self, state: State) -> None:
        self.by_state = dict(state.queue_by_state)
        self.by_destination = dict(state.queue_by_destination)

    def move(self, old: str | None, new: str | None, domain: str) -> None:
        if old == new:
            return
        if old is not None:
            self.by_state[old] = max(0, self.by_state.get(old, 0) - 1)
        if new is not None:
            self.by_state[new] = self.by_state.get(new, 0) + 1
        if old is None:
            self.by_destination[domain] = self.by_destination.get(domain, 0) + 1
        elif new is None:
            left = self.by_destination.get(domain, 0) - 1
            if left > 0:
                self.by_destination[domain] = left
            else:
                self.by_destination.pop(domain, None)


def _haystack(item: QueuedItem) -> str:
    return " ".join((str(item.queue_id), item.recipient, item.sender, item.did, item.state, item.last_reply)).lower()
