"""Send counters behind the rate policy: budget leases in the store, spent in memory on the accept path.

Several nodes (processes, machines) sharing one store are one relay: the warming, member and relay-wide
caps hold across all of them (issue 17). The protocol:

- **Leases.** Each window family, a *scope* (the relay's minute, a sending domain's hours, a member's
  hours: ``policy.lease_scopes``), is counted per bucket in the store's ``rate_leases``, one row per
  holder (one RateLimiter instance: a node's process; a restarted node is a new holder). A holder
  spends from its own lease in memory; only when a send needs more than it holds does it ask the store
  (``Store.lease_budget``): in one write transaction its lease on the bucket is handed back down to what
  it spent, then, if the send fits every window counting every holder's units, it leases
  ``policy.lease_size`` units (1/8 of what is left, at most 100, at least the need) with one conditional
  UPDATE that re-counts the other holders. Far from a limit one transaction covers many sends; near it
  the chunk is the need itself, so a fresh domain's 5/hour admits exactly 5 whichever nodes the sends
  reach. The send that triggered the lease is counted in the same transaction.
- **Returns.** Every ``lease_interval`` (0.5 s) a holder writes what it spent, renews the leases it
  uses and hands back the unused units of those idle for ``lease_idle`` (1 s) and of past buckets, so
  another node can use them; at shutdown it hands back everything.
- **Expiry.** A lease is live for ``lease_ttl`` (10 s) after its grant or last renewal; past it the
  store counts only the units the holder reported spent, so a crashed node's unused reserve is free
  again within the TTL (never stricter for longer). A holder stops spending a lease ``lease_margin``
  (1 s) before it expires (clock skew between machines must stay below that) and never revives one
  that expired: its units may be someone else's by then. Sends a crashed node made after its last
  report are not counted: the limits are then briefly generous, never stricter than configured.
- The relay-wide minute is leased the same way: it is the busiest budget, shared by every member, and
  splitting it per node would need to know how many nodes there are.

One owner (the Trio thread): the check and the count of a send have no checkpoint in between, and
leases are changed in the store by one task at a time (``_hop``); a lease being rewritten is not spent
meanwhile (``_in_flight``). ``release`` gives units back when the accept then fails.

Separately, the member's sends are still counted per (DID, sending domain, hour bucket) in memory for
the suspension judge and written to ``send_counters`` in batches every ``flush_interval`` seconds (and
once more at shutdown), never in a per-message transaction.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from relay.config import LimitsConfig
from relay.errors import QueueUnavailable
from relay.reputation.policy import (
    DAY,
    HOUR,
    LeaseKey,
    Over,
    RateLimitExceeded,
    ScopeName,
    Window,
    decide,
    hour_bucket,
    lease_scopes,
    lease_size,
    minute_bucket,
    rate_limit_headers,
    windows,
)
from relay.store.aio import AsyncStore
from relay.store.base import SEND_COUNTER_RETENTION, StoreError
from relay.store.rows import LeaseAsk, LeaseGrant, LeaseReport, MemberTotal, SendCount

log = logging.getLogger("relay.reputation")

Clock = Callable[[], float]
Caps = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Grant:
    """Budget taken by ``acquire``; hand it back with ``release`` if the message is not accepted."""

    did: str
    domain: str
    count: int
    hour: int
    minute: int
    headers: dict[str, str] = field(default_factory=dict)  # RateLimit-* after this send
    keys: tuple[LeaseKey, ...] = ()  # the leases it was spent from


@dataclass(slots=True)
class _Lease:
    """This holder's row of one (scope, subject, bucket), as it believes the store has it."""

    granted: int = 0  # units reserved (the row's granted)
    used: int = 0  # units spent on the bucket, all leases together
    reported: int = 0  # ``used`` as last written to the store
    expires_at: float = 0.0  # the row's expiry; past it the store counts ``reported`` only
    usable_until: float = 0.0  # expires_at - margin: spent from until then
    touched: float = 0.0

    def unused(self, now: float) -> int:
        return max(0, self.granted - self.used) if now < self.usable_until else 0

    def counted(self, now: float) -> int:
        """What the store counts of this row now."""
        return self.granted if now < self.expires_at else self.reported


def holder_name(node: str = "") -> str:
    """A holder id unique to this process and instance: ``<node or host>:<pid>:<random>``."""
    return f"{node or socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class RateLimiter:
    def __init__(
        self,
        store: AsyncStore,
        limits: LimitsConfig,
        *,
        clock: Clock = time.time,
        flush_interval: float = 2.0,
        domain_ttl: float = 300.0,
        node: str = "",
        lease_ttl: float = 10.0,
        lease_margin: float = 1.0,
        lease_idle: float = 1.0,
        lease_interval: float = 0.5,
    ) -> None:
        if not 0 <= lease_margin < lease_ttl:
            raise ValueError("lease_margin must be below lease_ttl")
        self._store = store
        self.limits = limits
        self._clock = clock
        self.flush_interval = flush_interval
        self._domain_ttl = domain_ttl
        self.holder = holder_name(node)
        self.lease_ttl = lease_ttl
        self.lease_margin = lease_margin
        self.lease_idle = lease_idle
        self.lease_interval = lease_interval
        self._hours: dict[str, dict[str, dict[int, int]]] = {}  # did -> domain -> hour -> count (own sends)
        self._pending: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self._accepted: defaultdict[str, int] = defaultdict(int)  # lifetime totals not yet written
        self._starts: dict[str, tuple[float, float]] = {}  # domain -> (warming start, cached until)
        self._mine: dict[tuple[ScopeName, str], dict[int, _Lease]] = {}  # (scope, subject) -> bucket -> lease
        self._others: dict[tuple[ScopeName, str], dict[int, int]] = {}  # other holders' units, as last read
        self._hop = trio.Lock()  # one task at a time rewrites this holder's rows in the store
        self._in_flight: set[LeaseKey] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def load(self) -> int:
        """Read the last 48 h of counters from the store (call once, before the first check)."""
        rows = await self._store.send_counts_since(hour_bucket(self._clock()) - SEND_COUNTER_RETENTION)
        for r in rows:
            hours = self._hours.setdefault(r.did, {}).setdefault(r.domain, {})
            hours[r.bucket_start] = hours.get(r.bucket_start, 0) + r.count
        return len(rows)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Standalone service: load, keep the leases, flush every ``flush_interval`` s and at cancellation."""
        await self.load()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.keep_leases)
                task_status.started()
                while True:
                    await trio.sleep(self.flush_interval)
                    await self.flush()
        finally:
            with trio.move_on_after(5, shield=True):
                await self.flush()
                await self.return_leases()

    async def flush(self) -> int:
        """Write the increments counted since the last flush in one transaction; returns rows written."""
        self._prune()
        if not self._pending and not self._accepted:
            return 0
        pending, accepted = self._pending, self._accepted
        self._pending, self._accepted = defaultdict(int), defaultdict(int)
        sends = [SendCount(did, domain, b, n) for (did, domain, b), n in pending.items() if n]
        totals = [MemberTotal(did, "accepted", n) for did, n in accepted.items() if n]
        try:
            await self._store.add_counts(sends=sends, totals=totals)
        except StoreError as exc:
            log.warning("rate counters not written (will retry): %s", exc)
            for key, n in pending.items():
                self._pending[key] += n
            for did, n in accepted.items():
                self._accepted[did] += n
            return 0
        return len(sends) + len(totals)

    def _prune(self) -> None:
        oldest = hour_bucket(self._clock()) - SEND_COUNTER_RETENTION
        for did in list(self._hours):
            domains = self._hours[did]
            for domain in list(domains):
                hours = domains[domain]
                for b in [b for b in hours if b < oldest]:
                    del hours[b]
                if not hours:
                    del domains[domain]
            if not domains:
                del self._hours[did]

    # -- leases ---------------------------------------------------------------------------------

    async def keep_leases(self) -> None:
        """Every ``lease_interval``: report, renew and hand back leases (``maintain``); runs until cancelled."""
        while True:
            await trio.sleep(self.lease_interval)
            try:
                await self.maintain()
            except StoreError as exc:
                log.warning("rate leases not written (will retry): %s", exc)

    async def maintain(self) -> int:
        """Write what was spent; renew the leases in use, hand back the unused units of idle ones and of
        past buckets. Returns the rows written (none when nothing changed: an idle node costs nothing)."""
        async with self._hop:
            now = self._clock()
            reports: list[tuple[LeaseKey, _Lease, int, bool]] = []
            for (scope, subject), buckets in self._mine.items():
                current = _bucket(scope, now)
                for b, lease in buckets.items():
                    live = now < lease.expires_at
                    keep = live and b == current and now - lease.touched < self.lease_idle
                    if keep and (lease.used != lease.reported or lease.expires_at - now < self.lease_ttl / 2):
                        reports.append(((scope, subject, b), lease, lease.used, True))
                    elif not keep and (lease.used != lease.reported or (live and lease.granted > lease.used)):
                        lease.granted, lease.usable_until, lease.expires_at = lease.used, 0.0, now
                        reports.append(((scope, subject, b), lease, lease.used, False))
            if reports:
                flags = await self._store.report_leases(
                    self.holder, [LeaseReport(k[0], k[1], k[2], used, keep) for k, _, used, keep in reports],
                    now, self.lease_ttl)
                for (_, lease, used, keep), still in zip(reports, flags, strict=True):
                    lease.reported = used
                    if keep and still:
                        lease.expires_at = now + self.lease_ttl
                        lease.usable_until = lease.expires_at - self.lease_margin
                    elif keep:  # expired in the store meanwhile: its units may be another holder's
                        lease.granted, lease.usable_until, lease.expires_at = lease.used, 0.0, now
            self._prune_leases(now)
            return len(reports)

    async def return_leases(self) -> None:
        """Hand every unused unit back and write what was spent (shutdown)."""
        async with self._hop:
            now = self._clock()
            reports = []
            for (scope, subject), buckets in self._mine.items():
                for b, lease in buckets.items():
                    if lease.used != lease.reported or lease.granted > lease.used:
                        lease.granted, lease.usable_until, lease.expires_at = lease.used, 0.0, now
                        reports.append(LeaseReport(scope, subject, b, lease.used, False))
            if reports:
                await self._store.report_leases(self.holder, reports, now, self.lease_ttl)
                for r in reports:
                    self._mine[(r.scope, r.subject)][r.bucket].reported = r.used

    def _prune_leases(self, now: float) -> None:
        oldest = hour_bucket(now) - DAY
        for key in list(self._mine):
            buckets = self._mine[key]
            first = _bucket(key[0], now) if key[0] == "relay" else oldest
            for b in [b for b, lease in buckets.items() if b < first and lease.used == lease.reported
                      and now >= lease.expires_at]:
                del buckets[b]
            if not buckets:
                del self._mine[key]
        for key in list(self._others):
            first = _bucket(key[0], now) if key[0] == "relay" else oldest
            kept = {b: n for b, n in self._others[key].items() if b >= first}
            if kept:
                self._others[key] = kept
            else:
                del self._others[key]

    def _lease(self, key: LeaseKey) -> _Lease:
        return self._mine.setdefault((key[0], key[1]), {}).setdefault(key[2], _Lease())

    def _note_totals(self, scope: ScopeName, subject: str, totals: dict[int, int], now: float) -> None:
        """Remember the other holders' units from a fresh read of every holder's (``totals``)."""
        mine = self._mine.get((scope, subject), {})
        self._others[(scope, subject)] = {
            b: left for b, n in totals.items() if (left := n - (mine[b].counted(now) if b in mine else 0)) > 0}

    async def refresh(self, did: str, domain: str) -> None:
        """Re-read every holder's units for the windows of ``did`` on ``domain`` (one store read)."""
        start = await self.domain_start(domain)
        now = self._clock()
        scopes = lease_scopes(self.windows_for(did, domain, start, now))
        keys = [(k[0], k[1], min(f for f, _ in caps), k[2]) for k, caps in scopes.items()]
        for (scope, subject, _, _), totals in zip(keys, await self._store.lease_totals(keys, now), strict=True):
            self._note_totals(scope, subject, totals, now)

    # -- domains --------------------------------------------------------------------------------

    async def domain_start(self, domain: str) -> float:
        """When the domain's warming began: its first verification, else its enrollment."""
        now = self._clock()
        cached = self._starts.get(domain)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await self._store.get_domain(domain)
        start = now if row is None else (row.verified_at or row.created_at)
        self.set_domain_start(domain, start)
        return start

    def set_domain_start(self, domain: str, start: float) -> None:
        self._starts[domain] = (start, self._clock() + self._domain_ttl)

    # -- the accept path ------------------------------------------------------------------------

    def windows_for(self, did: str, domain: str, start: float, now: float | None = None) -> list[Window]:
        """The windows as this node sees them: its own spent units plus the other holders' as last read."""
        now = self._clock() if now is None else now
        return windows(now=now, limits=self.limits, did=did, domain=domain, domain_start=start,
                       domain_hours=self._used("domain", domain), member_hours=self._used("member", did),
                       relay_minute=self._used("relay", "relay").get(minute_bucket(now), 0))

    def _used(self, scope: ScopeName, subject: str) -> dict[int, int]:
        out = dict(self._others.get((scope, subject), {}))
        for b, lease in self._mine.get((scope, subject), {}).items():
            out[b] = out.get(b, 0) + lease.used
        return out

    async def budget(self, did: str, domain: str) -> list[Window]:
        return self.windows_for(did, domain, await self.domain_start(domain))

    async def headers(self, did: str, domain: str) -> dict[str, str]:
        """RateLimit-* values for the next send from ``did`` on ``domain`` (nothing is counted)."""
        await self._refresh_quietly(did, domain)
        return rate_limit_headers(await self.budget(did, domain), self._clock())

    async def check(self, did: str, domain: str, n: int = 1) -> list[Window]:
        """Raise RateLimitExceeded (451 4.7.1 / 429) unless ``n`` more recipients fit; else the windows.

        Judged on this node's view; a refusal is re-checked on a fresh read of every node's units."""
        start = await self.domain_start(domain)
        now = self._clock()
        wins = self.windows_for(did, domain, start, now)
        if isinstance(decide(wins, n), Over):
            await self._refresh_quietly(did, domain)
            now = self._clock()
            wins = self.windows_for(did, domain, start, now)
            result = decide(wins, n)
            if isinstance(result, Over):
                raise RateLimitExceeded(result, wins, now)
        return wins

    async def _refresh_quietly(self, did: str, domain: str) -> None:
        try:
            await self.refresh(did, domain)
        except StoreError as exc:  # the view stays as it was: a check is advisory, acquire decides
            log.warning("rate budget not re-read: %s", exc)

    def consume(self, did: str, domain: str, n: int = 1) -> Grant:
        """Count ``n`` accepted recipients now (no check: use ``acquire`` on the accept path)."""
        now = self._clock()
        h, m = hour_bucket(now), minute_bucket(now)
        keys: tuple[LeaseKey, ...] = (("relay", "relay", m), ("member", did, h), ("domain", domain, h))
        grant = Grant(did, domain, n, h, m, keys=keys)
        self._spend(grant, n, now)
        return grant

    async def acquire(self, did: str, domain: str, n: int = 1) -> Grant:
        """Check and count in one step; raises RateLimitExceeded. The grant carries RateLimit-* headers."""
        start = await self.domain_start(domain)
        grant = self._take(did, domain, start, n)
        if grant is not None:
            return grant
        async with self._hop:
            grant = self._take(did, domain, start, n)  # a lease taken meanwhile may cover it
            if grant is not None:
                return grant
            return await self._lease_and_take(did, domain, start, n)

    def _take(self, did: str, domain: str, start: float, n: int) -> Grant | None:
        """Spend from this holder's leases if they cover ``n`` in every window; no checkpoint inside."""
        now = self._clock()
        wins = self.windows_for(did, domain, start, now)
        scopes = lease_scopes(wins)
        for key in scopes:
            if key in self._in_flight or self._lease(key).unused(now) < n:
                return None
        return self._granted(did, domain, start, n, now, tuple(scopes))

    def _granted(self, did: str, domain: str, start: float, n: int, now: float, keys: tuple[LeaseKey, ...]) -> Grant:
        grant = Grant(did, domain, n, hour_bucket(now), minute_bucket(now), keys=keys)
        self._spend(grant, n, now)
        after = self.windows_for(did, domain, start, now)
        return Grant(did, domain, n, grant.hour, grant.minute, rate_limit_headers(after, now), keys)

    async def _lease_and_take(self, did: str, domain: str, start: float, n: int) -> Grant:
        """One store transaction: lease what this holder lacks for ``n`` more (under ``_hop``)."""
        now = self._clock()
        scopes = lease_scopes(self.windows_for(did, domain, start, now))
        short = [k for k in scopes if self._lease(k).unused(now) < n]
        asks = [LeaseAsk(k[0], k[1], k[2], scopes[k], self._lease(k).used, n) for k in short]
        self._in_flight.update(short)
        try:
            grants: list[LeaseGrant] = await self._store.lease_budget(self.holder, asks, now, self.lease_ttl,
                                                                      lease_size)
        except StoreError as exc:
            log.warning("rate budget not leased: %s", exc)
            raise QueueUnavailable("rate budget temporarily unavailable, try again later") from exc
        finally:
            self._in_flight.difference_update(short)
        ok = all(g.units > 0 for g in grants)
        for key, ask, g in zip(short, asks, grants, strict=True):
            lease = self._lease(key)
            lease.reported = ask.used + (n if ok else 0)
            if ok:
                lease.granted, lease.expires_at = ask.used + g.units, g.expires_at
                lease.usable_until = g.expires_at - self.lease_margin
            else:  # handed back down to what was spent: nothing unused is held on a refused window
                lease.granted, lease.expires_at, lease.usable_until = ask.used, now, 0.0
            self._note_totals(key[0], key[1], g.totals, now)
        if ok:
            # The store counted these n already (``used`` + n): spend them here without counting twice.
            return self._granted(did, domain, start, n, now, tuple(scopes))
        wins = self.windows_for(did, domain, start, now)
        result = decide(wins, n)
        if not isinstance(result, Over):  # the view disagrees with the store (it cannot here): the store decides
            w = next(w for w in wins if lease_scopes([w]).keys() <= set(short))
            result = Over(w, n, w.refill_at(n) or w.ends_at)
        raise RateLimitExceeded(result, wins, now)

    def release(self, grant: Grant) -> None:
        """Give back a grant whose message was not accepted (spool full, store down, ...)."""
        self._spend(grant, -grant.count, self._clock())

    def _spend(self, grant: Grant, n: int, now: float) -> None:
        for key in grant.keys:
            lease = self._lease(key)
            lease.used = max(0, lease.used + n)
            lease.touched = now
        hours = self._hours.setdefault(grant.did, {}).setdefault(grant.domain, {})
        hours[grant.hour] = max(0, hours.get(grant.hour, 0) + n)
        self._pending[(grant.did, grant.domain, grant.hour)] += n
        self._accepted[grant.did] += n

    # -- reading --------------------------------------------------------------------------------

    def sends_since(self, did: str, first_bucket: int) -> int:
        """Recipients accepted from ``did`` in hour buckets from ``first_bucket`` (by this node, or loaded)."""
        return sum(n for hours in self._hours.get(did, {}).values() for b, n in hours.items() if b >= first_bucket)

    def unflushed_sends(self, did: str, first_bucket: int) -> int:
        """Recipients of ``did`` counted here since the last ``flush`` (not in the store yet)."""
        return sum(n for (d, _, b), n in self._pending.items() if d == did and b >= first_bucket)

    def relay_minute(self) -> int:
        """Relay-wide recipients this minute, as this node sees them."""
        return self._used("relay", "relay").get(minute_bucket(self._clock()), 0)


def _bucket(scope: ScopeName, now: float) -> int:
    return minute_bucket(now) if scope == "relay" else hour_bucket(now)


__all__ = ["HOUR", "Grant", "RateLimiter", "holder_name"]
