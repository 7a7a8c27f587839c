"""The delivery scheduler: one service that moves spooled recipients to sent or bounced (DESIGN §5).

It owns the in-memory schedule (a heap of due times per queue id) and the set of
recipients in flight; the spool owns durable state. Work is grouped by
destination domain: each domain has its own queue and at most
``per_destination`` workers, all workers share one relay-wide limit, and a
worker delivers its domain's jobs one after another so the transport can reuse
a connection (RSET between messages).

Fairness when destinations hang (``relay.delivery.congestion``): a domain starts
with ``initial_concurrency`` workers and gains one per answered attempt; a
timeout halves its window, and while its last attempt timed out its workers also
need one of ``slow_concurrency`` slots, so tarpits never hold more than that and
the rest of ``max_concurrency`` stays with destinations that answer.

One transaction per recipient: the envelope sender is a VERP address carrying
that recipient's id, so a bounce names exactly whom it is about (DESIGN §5).

Ordering of effects after an attempt: the spool transition is made durable
first (for a bounce, in the same batch as the DSN it reports, so a crash keeps
both or neither); the store row follows from it (relay.store.mirror). A crash
between the remote's 250 and our transition redelivers the message on restart:
delivery is at-least-once, never zero times. While the process runs, an outcome
that cannot be written (disk full) is retried, never turned into a second
delivery, and while the spool lives off its disk reserve nothing new is
dispatched (issue 14).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from relay.accept import sendmeta
from relay.delivery import verp
from relay.delivery.congestion import next_window
from relay.delivery.dsn import FailedRecipient, build_dsn
from relay.delivery.retry import DEFAULT_POLICY, Decision, Outcome, OutcomeKind, RetryPolicy, decide
from relay.events import Delivery, Event, MessageAccepted, QueueChanged
from relay.mail.headers import header_size
from relay.operator.eventbus import EventBus
from relay.reputation import DeliveryEvents, classify_status
from relay.store.mirror import STATUS_NOTE
from relay.store.rows import NewAttempt
from relay.store.writer import StatusWriter
from spool import Accepted, Envelope, QueuedMessage, Spool, SpoolError, State, Transition

log = logging.getLogger("relay.delivery")

# Recording an outcome that failed (disk full, I/O error) is retried with this backoff (seconds);
# the recipient stays in flight meanwhile, so it is never delivered a second time by this process.
_RECORD_RETRY_MIN, _RECORD_RETRY_MAX = 0.5, 30.0
_PRESSURE_POLL = 1.0  # seconds between looks at a spool that lives off its disk reserve


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: Outcome
    mx_host: str | None = None
    tls: bool = False


class Transport(Protocol):
    async def attempt(self, domain: str, mail_from: str, rcpt: str, data: bytes) -> AttemptResult: ...


class Prepare(Protocol):
    """Turns the spooled bytes into what goes on the wire for one recipient (headers, DKIM)."""

    async def __call__(self, env: Envelope, rcpt_id: int, rcpt: str, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    operator_domain: str
    secret: bytes
    reporting_mta: str
    max_concurrency: int = 50
    per_destination: int = 5
    initial_concurrency: int = 5  # slow start (clamped to per_destination)
    slow_concurrency: int = 20  # slots every timing-out destination shares
    policy: RetryPolicy = DEFAULT_POLICY


@dataclass(frozen=True, slots=True)
class Job:
    queue_id: int
    rcpt_id: int
    rcpt: str
    domain: str


@dataclass
class _Destination:
    window: int  # workers allowed now (slow start, halved on a timeout)
    jobs: deque[Job] = field(default_factory=deque)
    workers: int = 0
    paused: bool = False
    strikes: int = 0  # consecutive attempts that timed out


#: Outcomes in which the remote host answered (the window grows); a timeout shrinks it; the rest
#: (DNS, refused connections, TLS) say nothing about how many connections the host can take.
_ANSWERED = frozenset({OutcomeKind.DELIVERED, OutcomeKind.TEMPORARY, OutcomeKind.PERMANENT})


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        writer: StatusWriter,
        transport: Transport,
        config: SchedulerConfig,
        *,
        clock: Callable[[], float] = time.time,
        prepare: Prepare | None = None,
        bus: EventBus | None = None,
        delivery_events: DeliveryEvents | None = None,
    ) -> None:
        self._prepare = prepare
        self.delivery_events = delivery_events  # reputation: counts sends and bounces
        self.bus = bus  # operator event stream: Delivery after each attempt, QueueChanged after operator actions
        self._spool = spool
        self._writer = writer
        self._transport = transport
        self._cfg = config
        self._now = clock
        self._heap: list[tuple[float, int]] = []
        self._in_flight: set[int] = set()  # rcpt ids
        self._queued: set[int] = set()  # rcpt ids waiting in a destination queue
        initial = min(config.initial_concurrency, config.per_destination)
        self._dest: dict[str, _Destination] = defaultdict(lambda: _Destination(window=initial))
        self._limit = trio.CapacityLimiter(config.max_concurrency)
        self._slow = trio.CapacityLimiter(config.slow_concurrency)
        self._wakeup = trio.Event()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self._workers_scope = trio.CancelScope()
        self._idle = trio.Event()
        self.delivered = 0
        self.bounced = 0
        self.deferred = 0

    # ---- service -------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for msg in self._spool.live():
            self._push(self._first_due(msg), msg.queue_id)
        with self._workers_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while not self._stopping:
                    # Disk full and the spool on its reserve: an outcome might not be recordable, and a
                    # delivery whose "sent" is lost goes out again, so start none until it is back.
                    timeout = _PRESSURE_POLL if self._spool.pressure else self._dispatch_due()
                    with trio.move_on_after(timeout):
                        await self._wakeup.wait()
                    self._wakeup = trio.Event()
                # Stopping: no new jobs; in-flight deliveries finish (or are cancelled by shutdown()).
                self._drop_queued()

    async def shutdown(self, grace: float) -> None:
        """Stop dispatching; in-flight deliveries get ``grace`` seconds, then are cancelled (they stay spooled)."""
        self._stopping = True
        self._wakeup.set()
        if self._in_flight:
            with trio.move_on_after(grace):
                await self._idle.wait()
        self._workers_scope.cancel()

    def notify(self, queue_id: int) -> None:
        """A new message was accepted: deliver it now (called on the accept path, never blocks)."""
        self._push(self._now(), queue_id)
        self._wakeup.set()

    # ---- operator actions (admin API / console) --------------------------------------------
    async def hold(self, queue_id: int) -> int:
        n = await self._set_state(queue_id, State.HELD, "held by operator",
                                  lambda st: st.state in (State.ACCEPTED, State.DEFERRED, State.RELEASED))
        self._publish(QueueChanged(queue_id=queue_id, action="hold", changed=n))
        return n

    async def release(self, queue_id: int) -> int:
        n = await self._set_state(queue_id, State.RELEASED, "released by operator",
                                  lambda st: st.state is State.HELD)
        self.notify(queue_id)
        self._publish(QueueChanged(queue_id=queue_id, action="release", changed=n))
        return n

    async def delete(self, queue_id: int) -> int:
        n = await self._set_state(queue_id, State.DELETED, "deleted by operator (no DSN sent)",
                                  lambda st: not st.terminal)
        self._publish(QueueChanged(queue_id=queue_id, action="delete", changed=n))
        return n

    async def retry_now(self, queue_id: int) -> int:
        n = await self._set_state(queue_id, State.DEFERRED, "retry requested by operator",
                                  lambda st: st.state is State.DEFERRED, next_attempt_at=self._now())
        self.notify(queue_id)
        self._publish(QueueChanged(queue_id=queue_id, action="retry", changed=n))
        return n

    def pause(self, domain: str, paused: bool = True) -> None:
        dest = self._dest[domain.lower()]
        changed = int(dest.paused != paused)
        dest.paused = paused
        self._wakeup.set()
        self._publish(QueueChanged(queue_id=0, action="pause" if paused else "resume", changed=changed,
                                   destination=domain.lower()))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def paused_destinations(self) -> tuple[str, ...]:
        return tuple(sorted(domain for domain, dest in self._dest.items() if dest.paused))

    def _publish(self, event: Event) -> None:
        if self.bus is not None:
            self.bus.publish(event)

    async def _set_state(self, queue_id: int, state: State, note: str,
                         which: Callable[..., bool], next_attempt_at: float | None = None) -> int:
        msg = self._spool.get(queue_id)
        if msg is None:
            return 0
        changes = [Transition(queue_id, rid, state, attempts=st.attempts, next_attempt_at=next_attempt_at, info=note)
                   for rid, _, st in msg.recipients() if which(st) and rid not in self._in_flight]
        if changes:
            await self._spool.transition(changes)  # the store row follows (relay.store.mirror)
        return len(changes)

    # ---- dispatch ------------------------------------------------------------------------
    def _push(self, due: float, queue_id: int) -> None:
        heapq.heappush(self._heap, (due, queue_id))

    def _first_due(self, msg: QueuedMessage) -> float:
        dues = [st.next_attempt_at or 0.0 for _, _, st in msg.recipients() if _pending(st.state)]
        return min(dues, default=0.0)

    def _dispatch_due(self) -> float:
        """Queue every due recipient; return seconds until the next due time (inf if none)."""
        now = self._now()
        while self._heap and self._heap[0][0] <= now:
            _, queue_id = heapq.heappop(self._heap)
            msg = self._spool.get(queue_id)
            if msg is not None:
                self._queue_recipients(msg, now)
        for domain, dest in self._dest.items():
            self._start_workers(domain, dest)
        if not self._heap:
            return float("inf")
        return max(0.0, self._heap[0][0] - now)

    def _queue_recipients(self, msg: QueuedMessage, now: float) -> None:
        later: list[float] = []
        for rid, rcpt, st in msg.recipients():
            if not _pending(st.state) or rid in self._in_flight or rid in self._queued:
                continue
            if st.next_attempt_at is not None and st.next_attempt_at > now:
                later.append(st.next_attempt_at)
                continue
            domain = rcpt.rpartition("@")[2].lower()
            self._dest[domain].jobs.append(Job(msg.queue_id, rid, rcpt, domain))
            self._queued.add(rid)
        if later:
            self._push(min(later), msg.queue_id)

    def _start_workers(self, domain: str, dest: _Destination) -> None:
        assert self._nursery is not None
        while dest.jobs and not dest.paused and dest.workers < dest.window and not self._stopping:
            dest.workers += 1
            self._nursery.start_soon(self._worker, domain, dest)

    def _drop_queued(self) -> None:
        for dest in self._dest.values():
            dest.jobs.clear()
        self._queued.clear()

    async def _worker(self, domain: str, dest: _Destination) -> None:
        try:
            # More workers than the window (it shrank after a timeout): the extra ones stop here.
            while dest.jobs and not dest.paused and not self._stopping and dest.workers <= dest.window:
                job = dest.jobs.popleft()
                self._queued.discard(job.rcpt_id)
                self._in_flight.add(job.rcpt_id)
                try:
                    if dest.strikes:  # timing out: one of the few slow slots first, then a relay-wide one
                        async with self._slow, self._limit:
                            result = await self._deliver_when_relieved(job)
                    else:
                        async with self._limit:
                            result = await self._deliver_when_relieved(job)
                    if result is not None:
                        self._feedback(domain, dest, result.outcome.kind)
                except SpoolError as exc:  # could not read the message or record the outcome: retry later
                    log.error("spool error delivering %s: %s", job.rcpt_id, exc)
                    self._push(self._now() + 60, job.queue_id)
                finally:
                    self._in_flight.discard(job.rcpt_id)
                    if self._stopping and not self._in_flight:
                        self._idle.set()
        finally:
            dest.workers -= 1

    def _feedback(self, domain: str, dest: _Destination, kind: OutcomeKind) -> None:
        """Slow start and back-off of the destination's window (relay.delivery.congestion)."""
        timed_out = kind is OutcomeKind.TIMEOUT
        if not timed_out and kind not in _ANSWERED:
            return
        before = dest.window
        dest.window = next_window(dest.window, timed_out=timed_out, per_destination=self._cfg.per_destination)
        dest.strikes = dest.strikes + 1 if timed_out else 0
        if timed_out and dest.window < before:
            log.warning("destination %s timed out %d time(s) in a row: %d connection(s) now", domain, dest.strikes,
                        dest.window)
        self._start_workers(domain, dest)

    # ---- one attempt -----------------------------------------------------------------------
    async def _deliver_when_relieved(self, job: Job) -> AttemptResult | None:
        await self._spool.relieved()  # see run(): no delivery while on the disk reserve
        if self._stopping:
            return None  # stays spooled for the next start
        return await self._deliver(job)

    async def _deliver(self, job: Job) -> AttemptResult | None:
        """One attempt; the result, or None when there was nothing to do."""
        msg = self._spool.get(job.queue_id)
        if msg is None:
            return None
        st = msg.recipient(job.rcpt_id)
        if not _pending(st.state):
            return None
        data = self._spool.recent_data(job.queue_id)  # just accepted: still in memory, no disk read
        if data is None:
            data = await trio.to_thread.run_sync(self._spool.read_data, job.queue_id)
        env = msg.envelope
        # Null reverse-path stays null (a DSN); a forwarded reply keeps its SRS sender (RFC-style
        # SRS0, so the original sender can be reached and SPF passes); everything else gets VERP.
        if not env.mail_from or env.attrs.get("forward"):
            mail_from = env.mail_from
        else:
            mail_from = verp.encode(job.rcpt_id, secret=self._cfg.secret, domain=self._cfg.operator_domain)
        try:
            wire = data if self._prepare is None else await self._prepare(env, job.rcpt_id, job.rcpt, data)
            result = await self._transport.attempt(job.domain, mail_from, job.rcpt, wire)
        except Exception as exc:  # a bug in a transport must not kill the scheduler: retry later
            log.exception("transport failed for %s", job.rcpt_id)
            result = AttemptResult(Outcome(OutcomeKind.CONNECTION_FAILED, f"local error: {type(exc).__name__}"))
        now = self._now()
        attempts = st.attempts + 1
        decision = decide(result.outcome, attempts=attempts, now=now, arrival=env.arrival, policy=self._cfg.policy)
        note = f"{STATUS_NOTE}{decision.status}" if decision.state in ("sent", "bounced") else ""
        change = Transition(job.queue_id, job.rcpt_id, State(decision.state), attempts=attempts,
                            next_attempt_at=decision.next_attempt_at, reply=result.outcome.text, info=note)
        bounce = decision.state == "bounced" and bool(env.mail_from)
        dsn = self._dsn(env, data, job, decision, result, now) if bounce else None
        # The attempt row goes to the status writer before the outcome commits: the mirror queues
        # the status row behind it on the same writer, so no reader sees "sent" without its attempt.
        self._record(job, decision, result, attempts, now)
        accepted = await self._record_outcome(change, dsn)
        self._tell_reputation(env, job, decision, result)
        self._publish(Delivery(queue_id=job.queue_id, rcpt_id=job.rcpt_id, did=env.did, recipient=job.rcpt,
                               domain=job.domain, state=decision.state, attempts=attempts, mx_host=result.mx_host,
                               reply=result.outcome.text, tls=result.tls, next_attempt_at=decision.next_attempt_at,
                               tags=tuple(sendmeta.tags_of(env.attrs.get("tags"))),
                               metadata=sendmeta.metadata_of(env.attrs.get("metadata"))))
        if decision.state == "deferred" and decision.next_attempt_at is not None:
            self._push(decision.next_attempt_at, job.queue_id)
            self._wakeup.set()
        for dsn_env, dsn_id, size in accepted:
            self.notify(dsn_id.queue_id)
            self._publish(MessageAccepted(queue_id=dsn_id.queue_id, rcpt_ids=tuple(dsn_id.rcpt_ids), did=env.did,
                                          sender="", recipients=dsn_env.rcpts, size=size, source="dsn"))
        log.info("delivery %s to=%s via=%s tls=%s -> %s: %s", job.rcpt_id, job.rcpt, result.mx_host,
                 result.tls, decision.state, result.outcome.text)
        return result

    def _record(self, job: Job, decision: Decision, result: AttemptResult, attempts: int, now: float) -> None:
        if decision.state == "sent":
            self.delivered += 1
        elif decision.state == "bounced":
            self.bounced += 1
        else:
            self.deferred += 1
        # The status row itself follows from the spool transition (relay.store.mirror).
        self._writer.submit_nowait(
            NewAttempt(message_id=job.rcpt_id, at=now, mx_host=result.mx_host, reply=result.outcome.text,
                       tls=result.tls, outcome=decision.state))

    async def _record_outcome(
        self, change: Transition, dsn: tuple[Envelope, bytes] | None
    ) -> list[tuple[Envelope, Accepted, int]]:
        """Make the outcome durable (with its DSN, in one batch); retried until it is, never re-delivered.

        Returns the DSN as accepted (envelope, ids, size), if there was one.
        """
        delay = _RECORD_RETRY_MIN
        while True:
            try:
                accepted = await self._spool.commit([dsn] if dsn is not None else [], [change])
            except SpoolError as exc:
                log.error("cannot record the outcome of %s (%s); retrying in %.1f s", change.rcpt_id, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, _RECORD_RETRY_MAX)
                continue
            if dsn is None or not accepted:
                return []
            return [(dsn[0], accepted[0], len(dsn[1]))]

    def _tell_reputation(self, env: Envelope, job: Job, decision: Decision, result: AttemptResult) -> None:
        """Sends and bounces count toward the member's rates (DESIGN §6); the relay's own mail does not."""
        events = self.delivery_events
        if events is None or not env.mail_from or env.attrs.get("forward") or env.attrs.get("dsn"):
            return
        domain = env.mail_from.rpartition("@")[2].lower()
        if decision.state == "sent":
            events.sent(env.did, domain, job.rcpt_id)
        elif decision.state == "bounced":
            events.bounced(env.did, domain, job.rcpt_id, job.rcpt, classify_status(decision.status),
                           result.outcome.text)

    def _dsn(self, env: Envelope, data: bytes, job: Job, decision: Decision, result: AttemptResult,
             now: float) -> tuple[Envelope, bytes]:
        """RFC 3464 DSN to the original envelope sender, with a null reverse-path (never bounce a bounce)."""
        dsn = build_dsn(
            reporting_mta=self._cfg.reporting_mta,
            original_envelope_from=env.mail_from,
            original_headers=_headers(data),
            failed=[FailedRecipient(recipient=job.rcpt, status=decision.status, action="failed",
                                    remote_mta=result.mx_host, diagnostic=result.outcome.text, last_attempt=now)],
            arrival=env.arrival,
            now=now,
            message_id_domain=self._cfg.operator_domain,
            from_address=f"MAILER-DAEMON@{self._cfg.operator_domain}",
        )
        bounce_env = Envelope(mail_from="", rcpts=(env.mail_from,), did=env.did,
                              attrs={"dsn": "1", "source": "dsn", "subject": "Undelivered Mail Returned to Sender",
                                     "original_rcpt_id": str(job.rcpt_id)}, arrival=now)
        return bounce_env, dsn


def _pending(state: State) -> bool:
    return state in (State.ACCEPTED, State.DEFERRED, State.RELEASED)


def _headers(data: bytes) -> bytes:
    return data[: header_size(data)]
