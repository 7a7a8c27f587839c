"""The reputation service: rate limits, delivery outcomes, complaints, automatic suspension (DESIGN §6).

One object, one owner task tree (``run``). Everything it counts is kept in memory and written to the
store in batches (hourly aggregates, ``relay.store`` tables ``send_counters``, ``reputation_counts``,
``member_totals``); nothing here puts a transaction on the accept path or in the delivery loop.

- Accept path: ``acquire``/``release``/``check`` (relay.reputation.limiter: budget leases, exact across
  every node sharing the store) and ``is_suspended`` (an in-memory view of suspended members). Every
  ``poll_interval`` (0.25 s) the view reads one row, the store's ``member_status`` change counter (bumped
  in the transaction of every suspension or lift, automatic or ``atmos admin``, by any node); when it
  moved, the suspended members (an indexed query). So a suspension made anywhere takes effect on every
  node within a second, at the cost of one primary-key read per node per poll; a full re-read also
  runs every ``refresh_interval`` s, and the view changes at once when this process suspends someone
  or sees a member authenticate as active.
- Outcomes, one method per event and caller: the scheduler calls the synchronous ``sent``/``bounced``
  (the ``DeliveryEvents`` protocol: never blocks, the follow-up is queued); the inbound listener awaits
  ``bounce``/``complaint`` (relay.inbound's ``InboundEvents``: the follow-up is done before it replies).
  Both kinds of bounce count once per recipient id. A complainer joins the member's suppression list. After
  each bounce or complaint the member's standing over ``[suspension] window`` is judged
  (relay.reputation.suspension); over the threshold, the member is suspended in the store with the
  reason, which the next AUTH, HTTP request or MAIL FROM refuses. With ``suppress_hard_bounces``,
  hard-bounced recipients join the member's suppression list.
- When an operator lifts a suspension, the bounces and complaints counted before the lift (to the end
  of that hour) no longer count, so the member is not suspended again by the same old events. This
  grace is kept in memory: after a restart within the window the old events count again.
- Sends are the rate limiter's counters, kept 48 h: a ``[suspension] window`` longer than that sees
  only the last 48 h of sends.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import trio

from relay.config import Config, LimitsConfig, SuspensionConfig
from relay.reputation import report
from relay.reputation.limiter import Clock, Grant, RateLimiter
from relay.reputation.policy import DAY, HOUR, Window, age_days, hour_bucket
from relay.reputation.suspension import Verdict, evaluate, normalize_class, window_first_bucket
from relay.store.aio import AsyncStore
from relay.store.base import REPUTATION_RETENTION, NotFound, Store, StoreError
from relay.store.rows import Member, MemberStatus, MemberTotal, ReputationCount, ReputationKind

log = logging.getLogger("relay.reputation")

_SEEN_BOUNCES = 100_000  # recipient ids remembered to ignore a second report of the same bounce
_FOLLOW_UP_QUEUE = 10_000


@dataclass(frozen=True, slots=True)
class _FollowUp:
    did: str
    recipient: str
    klass: str
    diagnostic: str


class Reputation:
    """Construct once per relay: ``Reputation(store, cfg.limits, cfg.suspension)`` or ``from_config``,
    start with ``await nursery.start(reputation.run)`` before the listeners, and hand it to the SMTP
    submission handler, the HTTP app (``services.reputation``) and the scheduler (``DeliveryEvents``)."""

    def __init__(
        self,
        store: AsyncStore,
        limits: LimitsConfig,
        suspension: SuspensionConfig,
        *,
        clock: Clock = time.time,
        flush_interval: float = 2.0,
        refresh_interval: float = 30.0,
        poll_interval: float = 0.25,
        node: str = "",
        purge_interval: float = 3600.0,
        suppress_complainers: bool = True,
        outcomes_in_store: bool = False,
        on_suspended: Callable[[str, str], None] | None = None,
        on_complaint: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self.suspension = suspension
        self._clock = clock
        self.limiter = RateLimiter(store, limits, clock=clock, flush_interval=flush_interval, node=node)
        self.flush_interval = flush_interval
        self.refresh_interval = refresh_interval
        self.poll_interval = poll_interval
        self._seen_seq: int | None = None  # the member_status change counter at the last refresh
        self.purge_interval = purge_interval
        self.suppress_complainers = suppress_complainers  # a complaint means "stop mailing me"
        # True: the status mirror (relay.store.mirror) writes the delivery outcomes' counters in the same
        # transaction as the status, so sent()/bounced() only keep the in-memory view (no timer, no loss).
        self.outcomes_in_store = outcomes_in_store
        self._suspended: dict[str, str] = {}  # did -> reason
        self._lifted: dict[str, int] = {}  # did -> first hour bucket that counts again
        self._suspending: set[str] = set()
        self._generation = 0  # counts local status changes, so a slow refresh cannot undo them
        self._changed: dict[str, int] = {}  # did -> generation of its last local change
        self._recent: dict[str, dict[int, list[int]]] = {}  # did -> hour -> [bounces, complaints]
        self._pending: defaultdict[tuple[str, str, int, ReputationKind, str], int] = defaultdict(int)
        self._totals: defaultdict[tuple[str, Literal["sent", "bounce", "complaint"]], int] = defaultdict(int)
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._follow_send, self._follow_recv = trio.open_memory_channel[_FollowUp](_FOLLOW_UP_QUEUE)
        # Optional hooks for the operator event stream: (did, reason) / (did, feedback type).
        self.on_suspended = on_suspended
        self.on_complaint = on_complaint

    @classmethod
    def from_config(cls, store: AsyncStore, cfg: Config, **kw: Any) -> Reputation:
        return cls(store, cfg.limits, cfg.suspension, **kw)

    # -- lifecycle ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Counters, recent bounces/complaints and the suspended set from the store."""
        await self.limiter.load()
        await self.refresh()
        first = window_first_bucket(self._clock(), self.suspension.window)
        for row in await self._store.reputation_counts_since(first):
            if row.kind != "sent":
                self._note_recent(row.did, row.bucket_start, row.kind, row.count)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_ups)
                nursery.start_soon(self.limiter.keep_leases)
                nursery.start_soon(self._every, self.flush_interval, self.flush)
                nursery.start_soon(self._every, self.poll_interval, self.poll)
                nursery.start_soon(self._every, self.refresh_interval, self.refresh)
                nursery.start_soon(self._every, self.purge_interval, self.purge)
                task_status.started()
        finally:
            with trio.move_on_after(5, shield=True):
                try:
                    await self.flush()
                    await self.limiter.return_leases()
                except StoreError as exc:
                    log.error("reputation counters not written at shutdown: %s", exc)

    async def _every(self, seconds: float, job: Callable[[], Any]) -> None:
        while True:
            await trio.sleep(seconds)
            try:
                await job()
            except StoreError as exc:
                log.warning("reputation %s failed (will retry): %s", getattr(job, "__name__", job), exc)
            except Exception:  # a bug here must not take the relay down: mail keeps flowing
                log.exception("reputation %s failed", getattr(job, "__name__", job))

    async def flush(self) -> None:
        """Write everything counted so far (rate counters, outcomes, totals) to the store."""
        await self.limiter.flush()
        if not self._pending and not self._totals:
            return
        pending, totals = self._pending, self._totals
        self._pending, self._totals = defaultdict(int), defaultdict(int)
        events = [ReputationCount(did, dom, b, kind, klass, n) for (did, dom, b, kind, klass), n in pending.items()]
        try:
            await self._store.add_counts(events=events, totals=[MemberTotal(d, k, n) for (d, k), n in totals.items()])
        except StoreError:
            for key, n in pending.items():
                self._pending[key] += n
            for tkey, n in totals.items():
                self._totals[tkey] += n
            raise

    async def poll(self) -> None:
        """Re-read who is suspended if the store's member_status change counter moved (one row read)."""
        started = self._generation
        seen = self._seen_seq

        def read(s: Store) -> tuple[int, list[Member] | None]:
            seq = s.change_seq("member_status")  # before the members: a change after it is seen next time
            return seq, (s.suspended_members() if seq != seen else None)

        seq, members = await self._store.call(read)
        if members is not None:
            self._apply(members, started)
        self._seen_seq = seq

    async def refresh(self) -> None:
        """Re-read who is suspended (the operator may suspend or lift from another process or node)."""
        started = self._generation
        seq = await self._store.change_seq("member_status")
        self._apply(await self._store.suspended_members(), started)
        self._seen_seq = seq

    def _apply(self, members: list[Member], started: int) -> None:
        """The stored suspended set, except for members whose status this process changed while the read
        was in flight: they keep the newer in-memory state (the read may predate that change)."""
        stored = {m.did: m.suspension_reason or "" for m in members}
        for did in self._suspended.keys() | stored.keys():
            if self._changed.get(did, 0) > started:
                continue
            if did in stored:
                self._suspended[did] = stored[did]
            elif self._suspended.pop(did, None) is not None:
                self._lift(did)
        self._changed = {did: gen for did, gen in self._changed.items() if gen > started}

    async def purge(self) -> None:
        await self._store.purge_counters(self._clock())
        oldest = window_first_bucket(self._clock(), self.suspension.window)
        for did in list(self._recent):
            hours = self._recent[did]
            for b in [b for b in hours if b < oldest]:
                del hours[b]
            if not hours:
                del self._recent[did]

    # -- the accept path ------------------------------------------------------------------------

    async def check(self, did: str, domain: str, n: int = 1) -> list[Window]:
        return await self.limiter.check(did, domain, n)

    async def acquire(self, did: str, domain: str, n: int = 1) -> Grant:
        return await self.limiter.acquire(did, domain, n)

    def release(self, grant: Grant) -> None:
        self.limiter.release(grant)

    def consume(self, did: str, domain: str, n: int = 1) -> Grant:
        return self.limiter.consume(did, domain, n)

    def is_suspended(self, did: str) -> bool:
        return did in self._suspended

    def suspension_reason(self, did: str) -> str | None:
        return self._suspended.get(did)

    def note_member_status(self, did: str, status: MemberStatus, reason: str | None = None) -> None:
        """What the caller just read from (or wrote to) the store: keeps ``is_suspended`` current."""
        self._mark(did)
        if status == "suspended":
            self._suspended[did] = reason or ""
        elif did in self._suspended:
            del self._suspended[did]
            self._lift(did)

    def _mark(self, did: str) -> None:
        self._generation += 1
        self._changed[did] = self._generation

    def _lift(self, did: str) -> None:
        self._lifted[did] = hour_bucket(self._clock()) + HOUR
        log.info("suspension of %s lifted; earlier bounces and complaints no longer count", did)

    # -- outcomes: the DeliveryEvents protocol (synchronous, never blocks the scheduler) --------

    def sent(self, did: str, domain: str, rcpt_id: int) -> None:
        if not self.outcomes_in_store:
            self._count(did, domain, "sent", "", 1)

    def bounced(self, did: str, domain: str, rcpt_id: int, recipient: str, klass: str, diagnostic: str) -> None:
        klass = normalize_class(klass)
        if not self._count_bounce(did, domain, rcpt_id, klass, stored=self.outcomes_in_store):
            return
        try:
            self._follow_send.send_nowait(_FollowUp(did, recipient, klass, diagnostic))
        except trio.WouldBlock:
            log.error("reputation follow-up queue full: bounce of %s for %s counted but not judged", recipient, did)

    # -- outcomes: relay.inbound's InboundEvents protocol, awaited ("" for unknown values) -------

    async def bounce(
        self, did: str, rcpt_id: int, recipient: str, klass: str, diagnostic: str, *, domain: str | None = None
    ) -> None:
        """A bounce (DSN on port 25). The sending domain is looked up from the message row of ``rcpt_id``
        unless given. A second report for the same ``rcpt_id`` (also one ``bounced`` counted) is ignored."""
        klass = normalize_class(klass)
        if domain is None:
            row = await self._store.get_message(rcpt_id)
            domain = row.from_domain if row is not None and row.did == did else ""
        if self._count_bounce(did, domain, rcpt_id, klass):
            await self._follow_up(_FollowUp(did, recipient, klass, diagnostic))

    async def complaint(
        self, did: str, recipient: str, feedback_type: str, message_id: str, *, domain: str | None = None
    ) -> None:
        """An ARF complaint (RFC 5965) attributed to ``did``. The sending domain, unless given, is taken
        from the Message-ID's right-hand side when it is one of the member's domains, or the member's only
        domain."""
        if domain is None:
            domain = await self._complaint_domain(did, message_id)
        feedback = (feedback_type.strip().lower() or "abuse")[:32]
        self._count(did, domain, "complaint", feedback, 1)
        log.warning("complaint (%s) for %s about %s", feedback, did, recipient or "an unknown recipient")
        if self.on_complaint is not None:
            self.on_complaint(did, feedback)
        if self.suppress_complainers and recipient:
            await self._store.add_suppression(did, recipient, f"complaint ({feedback})")
        await self._judge(did)

    async def _complaint_domain(self, did: str, message_id: str) -> str:
        domains = [d.domain for d in await self._store.domains_for(did)]
        if message_id and "@" in message_id:
            right = message_id.strip().strip("<>").rpartition("@")[2].lower()
            if right in domains:
                return right
        return domains[0] if len(domains) == 1 else ""

    # -- counting and judging -------------------------------------------------------------------

    def _count(self, did: str, domain: str, kind: ReputationKind, klass: str, n: int) -> None:
        b = hour_bucket(self._clock())
        self._pending[(did, domain, b, kind, klass)] += n
        self._totals[(did, kind)] += n
        if kind != "sent":
            self._note_recent(did, b, kind, n)

    def _count_bounce(self, did: str, domain: str, rcpt_id: int, klass: str, *, stored: bool = False) -> bool:
        """``stored``: the store already has the counter (the status mirror wrote it); note it in memory only."""
        if rcpt_id in self._seen:
            return False
        self._seen[rcpt_id] = None
        if len(self._seen) > _SEEN_BOUNCES:
            self._seen.popitem(last=False)
        if stored:
            self._note_recent(did, hour_bucket(self._clock()), "bounce", 1)
        else:
            self._count(did, domain, "bounce", klass, 1)
        return True

    def _note_recent(self, did: str, bucket: int, kind: str, n: int) -> None:
        counts = self._recent.setdefault(did, {}).setdefault(bucket, [0, 0])
        counts[0 if kind == "bounce" else 1] += n

    def standing(self, did: str) -> tuple[int, int, int]:
        """(sends, bounces, complaints) of ``did`` inside the suspension window, as judged now."""
        first = window_first_bucket(self._clock(), self.suspension.window)
        first = max(first, self._lifted.get(did, first))
        recent = [c for b, c in self._recent.get(did, {}).items() if b >= first]
        return (self.limiter.sends_since(did, first), sum(c[0] for c in recent), sum(c[1] for c in recent))

    async def cluster_standing(self, did: str) -> tuple[int, int, int]:
        """``standing`` over every node: with several nodes each one sees only its share of a member's
        sends and bounces, so a bad sender spread over N nodes would reach ``min_sends`` (and be judged)
        only after N times the volume. The store holds every node's counters (flushed each
        ``flush_interval``; outcomes written by the status mirror at once) plus what this node counted since
        its last flush; its own view is the floor of each figure (a mirror write still in flight)."""
        first = window_first_bucket(self._clock(), self.suspension.window)
        first = max(first, self._lifted.get(did, first))
        stored = await self._store.member_standing(did, first)
        unflushed = [self.limiter.unflushed_sends(did, first), 0, 0]
        for (d, _, b, kind, _), n in self._pending.items():
            if d == did and b >= first and kind != "sent":
                unflushed[1 if kind == "bounce" else 2] += n
        local = self.standing(did)
        return tuple(max(s + u, own) for s, u, own in zip(stored, unflushed, local, strict=True))  # type: ignore[return-value]

    def verdict(self, did: str) -> Verdict | None:
        """The verdict on this node's own view (``cluster_standing`` is what ``_judge`` uses)."""
        sends, bounces, complaints = self.standing(did)
        return evaluate(sends=sends, bounces=bounces, complaints=complaints, cfg=self.suspension)

    async def _follow_ups(self) -> None:
        async for item in self._follow_recv:
            try:
                await self._follow_up(item)
            except StoreError as exc:
                log.warning("bounce follow-up for %s failed: %s", item.did, exc)
            except Exception:
                log.exception("bounce follow-up for %s failed", item.did)

    async def _follow_up(self, item: _FollowUp) -> None:
        if self.suspension.suppress_hard_bounces and item.klass == "hard" and item.recipient:
            reason = f"hard bounce: {item.diagnostic}"[:300]
            if await self._store.add_suppression(item.did, item.recipient, reason):
                log.info("suppressed %s for %s after a hard bounce", item.recipient, item.did)
        await self._judge(item.did)

    async def _judge(self, did: str) -> None:
        if did in self._suspended or did in self._suspending:
            return
        self._suspending.add(did)  # one judge of a member at a time: the reads below await the store
        try:
            sends, bounces, complaints = await self.cluster_standing(did)
            verdict = evaluate(sends=sends, bounces=bounces, complaints=complaints, cfg=self.suspension)
            if verdict is None or did in self._suspended:  # or suspended meanwhile (seen by the poll)
                return
            await self._store.set_member_status(did, "suspended", verdict.reason)
        except NotFound:
            log.error("cannot suspend unknown member %s", did)
            return
        finally:
            self._suspending.discard(did)
        self._mark(did)
        self._suspended[did] = verdict.reason
        log.warning("member %s suspended: %s", did, verdict.reason)
        if self.on_suspended is not None:
            self.on_suspended(did, verdict.reason)

    # -- member views ---------------------------------------------------------------------------

    async def member_status(self, did: str) -> dict[str, Any]:
        """The body of ``GET /member/status`` (labels are left empty for the labeler to fill)."""
        await self.flush()
        member, domains, stored, statuses = await self._store.call(lambda s: (
            s.get_member(did), s.domains_for(did), s.member_totals(did), s.message_counts_for(did)))
        if member is None:
            raise NotFound(f"no member {did}")
        now = self._clock()
        entries = []
        for d in domains:
            start = d.verified_at or d.created_at
            self.limiter.set_domain_start(d.domain, start)
            await self.limiter.refresh(did, d.domain)  # every node's units, not only this one's
            wins = self.limiter.windows_for(did, d.domain, start, now)
            entries.append(report.domain_budget(d, wins, now, age_days(start, now)))
        sends, bounces, complaints = await self.cluster_standing(did)
        cfg = self.suspension
        return {
            "did": did,
            "handle": member.handle,
            "status": member.status,
            "suspensionReason": member.suspension_reason,
            "totals": report.totals(stored, statuses),
            "domains": entries,
            "standing": {
                "windowHours": cfg.window / HOUR, "sends": sends, "bounces": bounces, "complaints": complaints,
                "maxBounceRate": cfg.max_bounce_rate, "maxComplaintRate": cfg.max_complaint_rate,
                "minSends": cfg.min_sends, "minComplaints": cfg.min_complaints,
            },
            "labels": [],
        }

    async def deliverability(self, did: str, days: int = 14) -> dict[str, Any]:
        """The body of ``GET /member/deliverability``: ``days`` UTC days ending today."""
        days = max(1, min(days, REPUTATION_RETENTION // DAY - 1))
        await self.flush()
        first = report.day_start(self._clock()) - (days - 1) * DAY
        rows, domains = await self._store.call(lambda s: (
            s.reputation_counts_since(first, did), s.domains_for(did)))
        return report.deliverability(did, rows, first_day=first, days=days, domains=[d.domain for d in domains])


__all__ = ["Reputation"]
