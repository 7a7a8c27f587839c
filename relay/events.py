"""The operator event stream's wire schema, shared by the server (/admin/ws) and the console (DESIGN §3).

One definition, two users: the relay builds these and ``encode``s them; the console ``decode``s
the same classes. This module imports only the standard library, so the console (an asyncio
process) never pulls in Trio services.

Wire format: one JSON object per websocket text message::

    {"v": 1, "type": "delivery", "ts": 1790000000.0, "data": {...the event's fields...}}

A fresh client first receives one ``snapshot``, then deltas; ``heartbeat`` every few seconds.
Commands go the other way as ``{"v": 1, "type": "command", "data": {...Command...}}`` and are
answered by a ``command_result`` with the same ``id``. Unknown ``type``s are skipped by readers
(forward compatibility); a different major ``v`` is refused.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

VERSION = 1


class SchemaError(ValueError):
    """A frame that is not valid JSON, has the wrong version, or fields of the wrong shape."""


@dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class DomainWarming:
    domain: str
    did: str
    day: int  # days since the domain was verified
    tier: str  # e.g. "day 0-6", "day 7-13", "warm"
    hourly_used: int
    hourly_limit: int
    daily_used: int
    daily_limit: int


@dataclass(frozen=True, slots=True)
class SuspendedMember:
    did: str
    handle: str | None
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class QueuedItem:
    queue_id: int
    rcpt_id: int
    did: str
    sender: str
    recipient: str
    domain: str
    state: str  # accepted | deferred | held
    attempts: int
    next_attempt_at: float | None
    last_reply: str
    arrival: float


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node of the relay as its last heartbeat told (relay.cluster.status)."""

    node: str
    state: str  # running | stopped | silent
    jobs: bool  # runs the cluster's periodic jobs
    heartbeat_age: float
    queue_messages: int = 0
    in_flight: int = 0
    accepted: int = 0
    delivered: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot(Event):
    type: ClassVar[str] = "snapshot"
    queue_by_state: dict[str, int] = field(default_factory=dict)
    queue_by_destination: dict[str, int] = field(default_factory=dict)
    oldest_deferred: float | None = None
    in_flight: int = 0
    queue: tuple[QueuedItem, ...] = ()  # the first ~500 live recipients
    warming: tuple[DomainWarming, ...] = ()
    suspended: tuple[SuspendedMember, ...] = ()
    paused_destinations: tuple[str, ...] = ()
    accepted_per_s: float = 0.0
    delivered_per_s: float = 0.0
    node: str = ""  # the node this stream comes from; the queue figures above are its own
    nodes: tuple[NodeInfo, ...] = ()  # every node of the relay


@dataclass(frozen=True, slots=True)
class MessageAccepted(Event):
    type: ClassVar[str] = "accepted"
    queue_id: int
    rcpt_ids: tuple[int, ...]
    did: str
    sender: str
    recipients: tuple[str, ...]
    size: int
    source: str  # smtp | http | dsn | forward
    tags: tuple[str, ...] = ()  # the sender's /v1/send tags and metadata (relay.accept.sendmeta)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivery(Event):
    """One attempt for one recipient and what it came to."""

    type: ClassVar[str] = "delivery"
    queue_id: int
    rcpt_id: int
    did: str
    recipient: str
    domain: str
    state: str  # sent | deferred | bounced
    attempts: int
    mx_host: str | None
    reply: str
    tls: bool
    next_attempt_at: float | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueChanged(Event):
    """An operator action changed queued recipients (hold, release, delete, retry), or paused/resumed a
    destination (``action`` pause | resume, ``queue_id`` 0, ``destination`` the domain)."""

    type: ClassVar[str] = "queue_changed"
    queue_id: int
    action: str
    changed: int
    destination: str = ""


@dataclass(frozen=True, slots=True)
class QueueDepth(Event):
    type: ClassVar[str] = "queue_depth"
    by_state: dict[str, int]
    by_destination: dict[str, int]
    in_flight: int
    oldest_deferred: float | None = None


@dataclass(frozen=True, slots=True)
class Warming(Event):
    type: ClassVar[str] = "warming"
    domains: tuple[DomainWarming, ...]


@dataclass(frozen=True, slots=True)
class MemberSuspended(Event):
    type: ClassVar[str] = "member_suspended"
    did: str
    reason: str
    automatic: bool


@dataclass(frozen=True, slots=True)
class MemberUnsuspended(Event):
    type: ClassVar[str] = "member_unsuspended"
    did: str


@dataclass(frozen=True, slots=True)
class ComplaintReceived(Event):
    type: ClassVar[str] = "complaint"
    did: str
    recipient: str | None
    feedback_type: str


@dataclass(frozen=True, slots=True)
class TlsReportReceived(Event):
    """A TLS report (RFC 8460) about the operator domain arrived: how other senders' TLS to us went."""

    type: ClassVar[str] = "tls_report"
    organization: str
    report_id: str
    policy_domain: str
    successes: int
    failures: int
    failure_types: str = ""


@dataclass(frozen=True, slots=True)
class Unsubscribed(Event):
    """A recipient unsubscribed from a member's mail (one-click, RFC 8058)."""

    type: ClassVar[str] = "unsubscribed"
    did: str
    recipient: str


@dataclass(frozen=True, slots=True)
class Throughput(Event):
    type: ClassVar[str] = "throughput"
    accepted_per_s: float
    delivered_per_s: float
    window: float


@dataclass(frozen=True, slots=True)
class Nodes(Event):
    """Every node of the relay, every few seconds (the operator plane across nodes, issue 17)."""

    type: ClassVar[str] = "nodes"
    nodes: tuple[NodeInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Heartbeat(Event):
    type: ClassVar[str] = "heartbeat"
    dropped_subscribers: int = 0


@dataclass(frozen=True, slots=True)
class Command(Event):
    """Console → relay. ``action``: retry | hold | release | delete (target = queue id),
    suspend | unsuspend (target = DID, ``reason``), pause | resume (target = destination domain)."""

    type: ClassVar[str] = "command"
    id: str
    action: str
    target: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CommandResult(Event):
    type: ClassVar[str] = "command_result"
    id: str
    ok: bool
    message: str


ACTIONS = ("retry", "hold", "release", "delete", "suspend", "unsuspend", "pause", "resume")
EVENTS: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (Snapshot, MessageAccepted, Delivery, QueueChanged, QueueDepth, Warming, MemberSuspended,
                MemberUnsuspended, ComplaintReceived, TlsReportReceived, Unsubscribed, Throughput, Nodes, Heartbeat,
                Command, CommandResult)
}
_NESTED: dict[str, type[Any]] = {"queue": QueuedItem, "warming": DomainWarming, "domains": DomainWarming,
                                 "suspended": SuspendedMember, "nodes": NodeInfo}


def encode(event: Event, *, ts: float | None = None) -> str:
    data = dataclasses.asdict(event)
    return json.dumps({"v": VERSION, "type": event.type, "ts": time.time() if ts is None else ts, "data": data},
                      separators=(",", ":"))


def decode(text: str | bytes) -> tuple[Event | None, float]:
    """(event, ts); the event is None for a type this version does not know (skip it)."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's stack
        raise SchemaError(f"not JSON: {exc!r}") from None
    if not isinstance(frame, dict) or frame.get("v") != VERSION:
        raise SchemaError(f"unsupported frame version {frame.get('v') if isinstance(frame, dict) else None!r}")
    cls = EVENTS.get(str(frame.get("type")))
    if cls is None:
        return None, float(frame.get("ts") or 0.0)
    data = frame.get("data")
    if not isinstance(data, dict):
        raise SchemaError(f"{cls.type}: data must be an object")
    return _build(cls, data), float(frame.get("ts") or 0.0)


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            continue  # a newer minor version added a field: ignore it
        if key in _NESTED and isinstance(value, list):
            value = tuple(_build(_NESTED[key], item) for item in value if isinstance(item, dict))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SchemaError(f"{getattr(cls, 'type', cls.__name__)}: {exc}") from None
