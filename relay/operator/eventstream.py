"""The operator event stream's server side: snapshot, periodic state, commands (DESIGN §3).

- ``build_snapshot(services)``: what a fresh /admin/ws client receives first.
- ``run_publisher(services)``: the root-nursery task that, every second, samples throughput and (while
  anyone listens) publishes ``QueueDepth`` and ``Throughput``; ``Warming`` every 10 s when the relay
  runs a reputation service; ``Nodes`` (every node of the relay) every 2 s; a ``Heartbeat`` (with the
  dropped-subscriber count) every 5 s.
- ``execute(services, command)`` / ``handle_frame(services, text)``: the console's commands (the same
  ones ``POST /admin/api/command`` takes), answered by a ``CommandResult``; never raises for bad input.
- ``queue_command`` / ``destination_command``: the queue and destination actions themselves, also behind
  ``POST /admin/api/queue/<id>/<action>`` and ``/admin/api/destinations/<domain>/<action>`` (one set of
  checks and error texts; ``UnknownMessage`` is the HTTP 404).
- ``reputation_hooks(bus)``: the reputation service's hooks that put automatic suspensions and complaints
  onto the bus.

Other publish points live where the thing happens: the acceptor (``MessageAccepted``), the scheduler
(``Delivery`` after each attempt, ``QueueChanged`` after operator actions and pauses), the command
handlers here (``MemberSuspended``/``MemberUnsuspended``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

import trio

from relay.address import is_did, is_domain, normalize_domain
from relay.cluster.commands import NodeUnavailable, forward
from relay.cluster.identity import NodeIdentity, owner
from relay.cluster.status import JOBS_LEASE, node_state, node_view
from relay.delivery.scheduler import Scheduler
from relay.events import (
    ACTIONS,
    VERSION,
    Command,
    CommandResult,
    ComplaintReceived,
    DomainWarming,
    Heartbeat,
    MemberSuspended,
    MemberUnsuspended,
    NodeInfo,
    Nodes,
    QueueDepth,
    QueuedItem,
    SchemaError,
    Snapshot,
    SuspendedMember,
    Throughput,
    Warming,
    decode,
)
from relay.operator.eventbus import EventBus
from relay.store.base import NotFound, StoreError
from spool import Spool, SpoolError, State

log = logging.getLogger("relay.events")

if TYPE_CHECKING:
    from relay.accept.acceptor import Acceptor
    from relay.config import Config
    from relay.operator.metrics import RelayMetrics
    from relay.reputation import Reputation
    from relay.store.aio import AsyncStore
    from relay.store.writer import StatusWriter


class OperatorView(Protocol):
    """What the operator plane reads of the running relay. ``relay.app.services.Services`` is one; naming
    only these here keeps this module (and the metrics and health beside it) free of the wiring."""

    @property
    def cfg(self) -> Config: ...
    @property
    def store(self) -> AsyncStore: ...
    @property
    def spool(self) -> Spool: ...
    @property
    def writer(self) -> StatusWriter: ...
    @property
    def scheduler(self) -> Scheduler | None: ...
    @property
    def acceptor(self) -> Acceptor: ...
    @property
    def bus(self) -> EventBus: ...
    @property
    def metrics(self) -> RelayMetrics: ...
    @property
    def reputation(self) -> Reputation | None: ...
    @property
    def node(self) -> NodeIdentity: ...


QUEUE_STATES = ("accepted", "deferred", "held")  # wire names; a released recipient is "accepted" again
_WIRE_STATE = {State.ACCEPTED: "accepted", State.RELEASED: "accepted", State.DEFERRED: "deferred",
               State.HELD: "held"}
SNAPSHOT_ITEMS = 500
TOP_DESTINATIONS = 100  # by_destination keeps the busiest ones: a frame per second must stay small
MAX_FRAME = 64 * 1024  # a command is a few hundred bytes


# ---- queue state ----------------------------------------------------------------------------------

@dataclass(slots=True)
class QueueView:
    by_state: dict[str, int] = field(default_factory=dict)
    by_destination: dict[str, int] = field(default_factory=dict)
    oldest_deferred: float | None = None  # arrival time of the oldest message with a deferred recipient
    in_flight: int = 0
    items: list[QueuedItem] = field(default_factory=list)


def queue_view(spool: Spool, scheduler: Scheduler | None, *, limit: int = SNAPSHOT_ITEMS,
               now: float | None = None) -> QueueView:
    """One pass over the live spool: depth by state and destination, and the first ``limit`` recipients
    (in queue order, i.e. oldest first)."""
    by_state: Counter[str] = Counter({s: 0 for s in QUEUE_STATES})
    by_dest: Counter[str] = Counter()
    view = QueueView(in_flight=scheduler.in_flight if scheduler is not None else 0)
    for msg in spool.live():
        env = msg.envelope
        for rid, rcpt, st in msg.recipients():
            state = _WIRE_STATE.get(st.state)
            if state is None:
                continue  # terminal
            domain = rcpt.rpartition("@")[2].lower()
            by_state[state] += 1
            by_dest[domain] += 1
            if state == "deferred" and (view.oldest_deferred is None or env.arrival < view.oldest_deferred):
                view.oldest_deferred = env.arrival
            if len(view.items) < limit:
                view.items.append(QueuedItem(
                    queue_id=msg.queue_id, rcpt_id=rid, did=env.did, sender=env.mail_from, recipient=rcpt,
                    domain=domain, state=state, attempts=st.attempts, next_attempt_at=st.next_attempt_at,
                    last_reply=st.reply or st.info, arrival=env.arrival))
    view.by_state = dict(by_state)
    view.by_destination = dict(by_dest.most_common(TOP_DESTINATIONS))
    return view


def queue_depth(services: OperatorView) -> QueueDepth:
    view = queue_view(services.spool, services.scheduler, limit=0)
    return QueueDepth(by_state=view.by_state, by_destination=view.by_destination, in_flight=view.in_flight,
                      oldest_deferred=view.oldest_deferred)


async def suspended_members(services: OperatorView) -> tuple[SuspendedMember, ...]:
    members = await services.store.list_members()
    return tuple(SuspendedMember(did=m.did, handle=m.handle, reason=m.suspension_reason or "", since=m.updated_at)
                 for m in members if m.status == "suspended")


async def warming_state(services: OperatorView) -> tuple[DomainWarming, ...]:
    """Per verified domain: warming tier, day and hourly/daily use, from the reputation service's
    in-memory counters. Empty when the relay runs no reputation service (``services.reputation``)."""
    if services.reputation is None:
        return ()
    limiter = services.reputation.limiter
    try:
        rows = await services.store.call(
            lambda store: [(m.did, store.domains_for(m.did)) for m in store.list_members()])
        now = time.time()
        out: list[DomainWarming] = []
        for did, domains in rows:
            for d in domains:
                if d.state != "verified":
                    continue
                start = d.verified_at or d.created_at
                out.append(_warming(did, d.domain, limiter.windows_for(did, d.domain, start, now),
                                    int(max(0.0, now - start) // 86400)))
        return tuple(out)
    except StoreError as exc:
        log.warning("warming state not available: %s", exc)
        return ()
    except Exception:  # the reputation module is young: its shape must not break the snapshot
        log.exception("warming state could not be computed")
        return ()


def _warming(did: str, domain: str, windows: list[Any], age: int) -> DomainWarming:
    kinds = {w.kind: w for w in windows}
    hourly, daily = kinds.get("domain-hourly"), kinds.get("domain-daily")
    if hourly is not None and daily is not None and hourly.tier is not None:
        tier = hourly.tier
        return DomainWarming(domain=domain, did=did, day=hourly.day if hourly.day is not None else age,
                             tier=f"day {tier.from_day}-{tier.until_day - 1}", hourly_used=hourly.used,
                             hourly_limit=hourly.limit, daily_used=daily.used, daily_limit=daily.limit)
    # Warmed: only the member-wide caps apply (counted across the DID's domains).
    mh, md = kinds.get("member-hourly"), kinds.get("member-daily")
    return DomainWarming(domain=domain, did=did, day=age, tier="warm",
                         hourly_used=mh.used if mh else 0, hourly_limit=mh.limit if mh else 0,
                         daily_used=md.used if md else 0, daily_limit=md.limit if md else 0)


async def node_infos(services: OperatorView) -> tuple[NodeInfo, ...]:
    """Every node as the store has it (relay.cluster.status); empty when the store does not answer."""
    try:
        rows, holder = await services.store.call(lambda s: (s.list_nodes(), s.lease_holder(JOBS_LEASE)))
    except StoreError as exc:
        log.warning("node list not available: %s", exc)
        return ()
    return tuple(NodeInfo(node=v["node"], state=v["state"], jobs=v["jobs"], heartbeat_age=v["heartbeat_age_seconds"],
                          queue_messages=v.get("queue_messages", 0), in_flight=v.get("in_flight", 0),
                          accepted=v.get("accepted", 0), delivered=v.get("delivered", 0))
                 for v in node_view(rows, holder, time.time(), services.cfg.node.lease_ttl))


async def build_snapshot(services: OperatorView) -> Snapshot:
    view = queue_view(services.spool, services.scheduler, limit=SNAPSHOT_ITEMS)
    accepted_per_s, delivered_per_s = services.metrics.throughput.rates()
    scheduler = services.scheduler
    try:
        suspended = await suspended_members(services)
    except StoreError as exc:  # the queue view is still worth having
        log.warning("snapshot without suspended members: %s", exc)
        suspended = ()
    return Snapshot(
        queue_by_state=view.by_state, queue_by_destination=view.by_destination,
        oldest_deferred=view.oldest_deferred, in_flight=view.in_flight, queue=tuple(view.items),
        warming=await warming_state(services), suspended=suspended,
        paused_destinations=scheduler.paused_destinations if scheduler is not None else (),
        accepted_per_s=accepted_per_s, delivered_per_s=delivered_per_s,
        node=services.node.name, nodes=await node_infos(services),
    )


# ---- the periodic publisher -----------------------------------------------------------------------

async def run_publisher(
    services: OperatorView, *, tick: float = 1.0, heartbeat_every: float = 5.0, warming_every: float = 10.0,
    nodes_every: float = 2.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    bus = services.bus
    started = trio.current_time()
    last_heartbeat = last_warming = last_nodes = started
    task_status.started()
    deadline = started
    while True:
        deadline += tick
        await trio.sleep_until(deadline)  # fixed cadence: the work below does not make the tick drift
        now = trio.current_time()
        try:
            _sample(services, now)
            if bus.subscribers:
                bus.publish(queue_depth(services))
                accepted, delivered = services.metrics.throughput.rates()
                bus.publish(Throughput(accepted_per_s=accepted, delivered_per_s=delivered,
                                       window=services.metrics.throughput.window))
                if now - last_warming >= warming_every and services.reputation is not None:
                    last_warming = now
                    bus.publish(Warming(domains=await warming_state(services)))
            if now - last_heartbeat >= heartbeat_every:
                last_heartbeat = now
                bus.publish(Heartbeat(dropped_subscribers=bus.dropped))
            if bus.subscribers and now - last_nodes >= nodes_every:
                last_nodes = now  # after the heartbeat: a slow store read must not delay it
                bus.publish(Nodes(nodes=await node_infos(services)))
        except Exception:  # a bug here must never take the relay's root nursery down
            log.exception("event publisher tick failed")
        if deadline < trio.current_time() - tick:
            deadline = trio.current_time()  # fell far behind (a long pause): do not burst to catch up


def _sample(services: OperatorView, now: float) -> None:
    scheduler = services.scheduler
    services.metrics.throughput.sample(now, services.acceptor.accepted_messages,
                                       scheduler.delivered if scheduler is not None else 0)


# ---- commands ---------------------------------------------------------------------------------------

QUEUE_ACTIONS = ("retry", "hold", "release", "delete")
DESTINATION_ACTIONS = ("pause", "resume")


class CommandError(ValueError):
    """A command that cannot be carried out; its text goes back in the CommandResult."""


class UnknownMessage(CommandError):
    """The target queue id is not in the spool (HTTP renders it 404)."""


def parse_command(text: str | bytes) -> Command:
    """A ``command`` frame → Command; CommandError names what is wrong."""
    if len(text) > MAX_FRAME:
        raise CommandError(f"frame larger than {MAX_FRAME} bytes")
    try:
        event, _ = decode(text)
    except SchemaError as exc:
        raise CommandError(str(exc)) from None
    if event is None:
        raise CommandError("unknown frame type: expected a command")
    if not isinstance(event, Command):
        raise CommandError(f"expected a command, got {event.type!r}")
    return check_command(event)


def command_from_json(body: Any) -> Command:
    """The JSON body of ``POST /admin/api/command`` (the Command fields) → Command."""
    if not isinstance(body, dict):
        raise CommandError("body must be a JSON object with action and target")
    body = {"id": "", **body}
    return parse_command(json.dumps({"v": VERSION, "type": Command.type, "data": body}))


def check_command(command: Command) -> Command:
    for name in ("id", "action", "target", "reason"):
        if not isinstance(getattr(command, name), str):
            raise CommandError(f"{name}: expected a string")
    if command.action not in ACTIONS:
        raise CommandError(f"action: expected one of {', '.join(ACTIONS)}, got {command.action!r}")
    if not command.target.strip():
        raise CommandError("target: required")
    return command


def frame_id(text: str | bytes) -> str:
    """The ``id`` of a command frame too broken to parse, when it can still be found (else "")."""
    try:
        frame = json.loads(text)
        value = frame["data"]["id"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return ""
    return value if isinstance(value, str) else ""


async def handle_frame(services: OperatorView, text: str | bytes) -> CommandResult:
    """One frame from a console: parsed, executed, answered. Never raises for bad input."""
    try:
        command = parse_command(text)
    except CommandError as exc:
        return CommandResult(id=frame_id(text), ok=False, message=str(exc))
    return await execute(services, command)


async def execute(services: OperatorView, command: Command) -> CommandResult:
    try:
        message = await _execute(services, check_command(command))
    except CommandError as exc:
        return CommandResult(id=str(command.id), ok=False, message=str(exc))
    except (StoreError, SpoolError) as exc:
        log.warning("command %s %s failed: %s", command.action, command.target, exc)
        return CommandResult(id=command.id, ok=False, message=f"{command.action} failed: {exc}")
    log.info("operator command %s %s: %s", command.action, command.target, message)
    return CommandResult(id=command.id, ok=True, message=message)


async def _execute(services: OperatorView, command: Command) -> str:
    action, target = command.action, command.target.strip()
    if action in QUEUE_ACTIONS:
        _scheduler(services)  # "not running" before "bad target", as the console has always been told
        try:
            queue_id = int(target)
        except ValueError:
            raise CommandError(f"target: expected a queue id, got {target!r}") from None
        changed = await queue_command(services, action, queue_id)
        return f"{action} {queue_id}: {changed} recipient{'s' if changed != 1 else ''} changed"
    if action in ("suspend", "unsuspend"):
        if not is_did(target):
            raise CommandError(f"target: expected a DID, got {target!r}")
        return await _member_status(services, target, action == "suspend", command.reason.strip())
    domain = await destination_everywhere(services, action, target)
    return f"{'paused' if action == 'pause' else 'resumed'} delivery to {domain}"


async def queue_command(services: OperatorView, action: str, queue_id: int) -> int:
    """``retry | hold | release | delete`` of one queued message: the number of recipients changed. The
    one implementation behind /admin/ws, ``POST /admin/api/command`` and ``POST /admin/api/queue/...``;
    UnknownMessage when the spool has no such message, CommandError for anything else wrong. A message
    of another node's range is acted on by that node (relay.cluster.commands)."""
    if action not in QUEUE_ACTIONS:
        raise CommandError(f"action: expected one of {', '.join(QUEUE_ACTIONS)}, got {action!r}")
    if queue_id < 1 or services.node.owns(queue_id):
        return await _local_queue_command(services, action, queue_id)
    try:
        ok, result = await forward(services.store, owner(queue_id), action, str(queue_id),
                                   live_within=services.cfg.node.lease_ttl)
    except NodeUnavailable as exc:
        raise CommandError(str(exc)) from None
    try:
        answer = json.loads(result)
        if ok:
            return int(answer["changed"])
        text = str(answer["error"])
    except (ValueError, KeyError, TypeError):
        raise CommandError(f"{action} {queue_id}: the owning node answered {result!r}") from None
    raise (UnknownMessage if answer.get("unknown") else CommandError)(text)


async def node_command(services: OperatorView, action: str, target: str) -> tuple[bool, str]:
    """A queue or destination action another node left for this one (relay.cluster.node.Node.serve_commands)."""
    if action in DESTINATION_ACTIONS:
        try:
            return True, json.dumps({"domain": destination_command(services, action, target)})
        except CommandError as exc:
            return False, json.dumps({"error": str(exc), "unknown": False})
    try:
        changed = await _local_queue_command(services, action, int(target))
    except UnknownMessage as exc:
        return False, json.dumps({"error": str(exc), "unknown": True})
    except (CommandError, ValueError, StoreError, SpoolError) as exc:
        return False, json.dumps({"error": str(exc), "unknown": False})
    return True, json.dumps({"changed": changed})


async def _local_queue_command(services: OperatorView, action: str, queue_id: int) -> int:
    if action not in QUEUE_ACTIONS:
        raise CommandError(f"action: expected one of {', '.join(QUEUE_ACTIONS)}, got {action!r}")
    scheduler = _scheduler(services)
    if services.spool.get(queue_id) is None:
        raise UnknownMessage(f"no queued message {queue_id}")
    method = {"retry": scheduler.retry_now, "hold": scheduler.hold, "release": scheduler.release,
              "delete": scheduler.delete}[action]
    return await method(queue_id)  # the scheduler publishes QueueChanged


def destination_command(services: OperatorView, action: str, target: str) -> str:
    """``pause | resume`` delivery to a destination domain: the normalized domain. CommandError when the
    action or the domain is not one."""
    if action not in DESTINATION_ACTIONS:
        raise CommandError(f"action: expected one of {', '.join(DESTINATION_ACTIONS)}, got {action!r}")
    domain = normalize_domain(target.strip())
    if not is_domain(domain):
        raise CommandError(f"target: expected a destination domain, got {target!r}")
    _scheduler(services).pause(domain, action == "pause")  # the scheduler publishes QueueChanged
    return domain


async def destination_everywhere(services: OperatorView, action: str, target: str) -> str:
    """``pause | resume`` on this node at once, and on every other running node (each has its own
    scheduler) through the commands it polls: in effect cluster-wide within a second. The domain."""
    domain = destination_command(services, action, target)
    try:
        rows = await services.store.list_nodes()
        now = time.time()
        for row in rows:
            if row.number != services.node.number and node_state(row, now, services.cfg.node.lease_ttl) == "running":
                await services.store.add_node_command(row.number, action, domain)
    except StoreError as exc:  # this node is paused; say the others may not be
        raise CommandError(f"{action} {domain}: done on node {services.node.name} only ({exc})") from None
    return domain


def _scheduler(services: OperatorView) -> Scheduler:
    if services.scheduler is None:
        raise CommandError("delivery is not running on this relay")
    return services.scheduler


async def _member_status(services: OperatorView, did: str, suspend: bool, reason: str) -> str:
    reason = reason or "suspended by the operator"
    try:
        await services.store.set_member_status(did, "suspended" if suspend else "active",
                                               reason if suspend else None)
    except NotFound:
        raise CommandError(f"no member {did}") from None
    if services.reputation is not None:
        # The accept path's in-memory view of suspensions, so this takes effect on the next MAIL FROM.
        services.reputation.note_member_status(did, "suspended" if suspend else "active", reason if suspend else None)
    if suspend:
        services.bus.publish(MemberSuspended(did=did, reason=reason, automatic=False))
        return f"suspended {did}: {reason}"
    services.bus.publish(MemberUnsuspended(did=did))
    return f"lifted the suspension of {did}"


# ---- hooks for other services -------------------------------------------------------------------------

class ReputationHooks(TypedDict):
    on_suspended: Callable[[str, str], None]
    on_complaint: Callable[[str, str], None]


def reputation_hooks(bus: EventBus) -> ReputationHooks:
    """The reputation service's ``on_suspended(did, reason)`` and ``on_complaint(did, feedback_type)``
    hooks, publishing automatic suspensions and complaints onto the bus (constructor arguments:
    ``Reputation.from_config(store, cfg, **reputation_hooks(bus))``)."""
    return ReputationHooks(
        on_suspended=lambda did, reason: bus.publish(MemberSuspended(did=did, reason=reason, automatic=True)),
        on_complaint=lambda did, feedback: bus.publish(
            ComplaintReceived(did=did, recipient=None, feedback_type=feedback)),
    )


__all__ = [
    "DESTINATION_ACTIONS",
    "QUEUE_ACTIONS",
    "CommandError",
    "OperatorView",
    "QueueView",
    "ReputationHooks",
    "UnknownMessage",
    "build_snapshot",
    "destination_command",
    "destination_everywhere",
    "execute",
    "handle_frame",
    "queue_command",
    "queue_view",
    "reputation_hooks",
    "run_publisher",
]
