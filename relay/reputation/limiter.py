"""Send counters behind the rate policy: in memory on the accept path, in the store across restarts.

One owner (the Trio thread; no locks: nothing here awaits between reading and updating a count).
Counts live in memory per (DID, sending domain, hour bucket) for the last 48 h, loaded from the
store's ``send_counters`` at start; increments are written in batches every ``flush_interval``
seconds (and once more at shutdown), never in a per-message transaction on the accept path. A crash
loses at most the last unflushed seconds of counts: the limits are then briefly generous, never
stricter than configured. The relay-wide per-minute count is memory only.

``acquire`` checks and counts in one step with no checkpoint in between, so concurrent sessions cannot
both take the last unit of budget; ``release`` gives it back when the accept then fails.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from relay.config import LimitsConfig
from relay.reputation.policy import (
    HOUR,
    Over,
    RateLimitExceeded,
    Window,
    decide,
    hour_bucket,
    minute_bucket,
    rate_limit_headers,
    windows,
)
from relay.store.aio import AsyncStore
from relay.store.base import SEND_COUNTER_RETENTION, StoreError
from relay.store.rows import MemberTotal, SendCount

log = logging.getLogger("relay.reputation")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Grant:
    """Budget taken by ``acquire``; hand it back with ``release`` if the message is not accepted."""

    did: str
    domain: str
    count: int
    hour: int
    minute: int
    headers: dict[str, str] = field(default_factory=dict)  # RateLimit-* after this send


class RateLimiter:
    def __init__(
        self,
        store: AsyncStore,
        limits: LimitsConfig,
        *,
        clock: Clock = time.time,
        flush_interval: float = 2.0,
        domain_ttl: float = 300.0,
    ) -> None:
        self._store = store
        self.limits = limits
        self._clock = clock
        self.flush_interval = flush_interval
        self._domain_ttl = domain_ttl
        self._hours: dict[str, dict[str, dict[int, int]]] = {}  # did -> domain -> hour -> count
        self._pending: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self._accepted: defaultdict[str, int] = defaultdict(int)  # lifetime totals not yet written
        self._minute = (0, 0)  # (minute bucket, relay-wide count)
        self._starts: dict[str, tuple[float, float]] = {}  # domain -> (warming start, cached until)

    # -- lifecycle ------------------------------------------------------------------------------

    async def load(self) -> int:
        """Read the last 48 h of counters from the store (call once, before the first check)."""
        rows = await self._store.send_counts_since(hour_bucket(self._clock()) - SEND_COUNTER_RETENTION)
        for r in rows:
            hours = self._hours.setdefault(r.did, {}).setdefault(r.domain, {})
            hours[r.bucket_start] = hours.get(r.bucket_start, 0) + r.count
        return len(rows)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Standalone service: load, then flush every ``flush_interval`` s and at cancellation."""
        await self.load()
        task_status.started()
        try:
            while True:
                await trio.sleep(self.flush_interval)
                await self.flush()
        finally:
            with trio.move_on_after(5, shield=True):
                await self.flush()

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
        now = self._clock() if now is None else now
        domains = self._hours.get(did, {})
        member: dict[int, int] = {}
        for hours in domains.values():
            for b, n in hours.items():
                member[b] = member.get(b, 0) + n
        minute, count = self._minute
        return windows(now=now, limits=self.limits, did=did, domain=domain, domain_start=start,
                       domain_hours=domains.get(domain, {}), member_hours=member,
                       relay_minute=count if minute == minute_bucket(now) else 0)

    async def budget(self, did: str, domain: str) -> list[Window]:
        return self.windows_for(did, domain, await self.domain_start(domain))

    async def headers(self, did: str, domain: str) -> dict[str, str]:
        """RateLimit-* values for the next send from ``did`` on ``domain`` (nothing is counted)."""
        return rate_limit_headers(await self.budget(did, domain), self._clock())

    async def check(self, did: str, domain: str, n: int = 1) -> list[Window]:
        """Raise RateLimitExceeded (451 4.7.1 / 429) unless ``n`` more recipients fit; else the windows."""
        start = await self.domain_start(domain)
        now = self._clock()
        wins = self.windows_for(did, domain, start, now)
        result = decide(wins, n)
        if isinstance(result, Over):
            raise RateLimitExceeded(result, wins, now)
        return wins

    def consume(self, did: str, domain: str, n: int = 1) -> Grant:
        """Count ``n`` accepted recipients now (no check: use ``acquire`` on the accept path)."""
        now = self._clock()
        grant = Grant(did, domain, n, hour_bucket(now), minute_bucket(now))
        self._add(grant, n)
        return grant

    async def acquire(self, did: str, domain: str, n: int = 1) -> Grant:
        """Check and count in one step; raises RateLimitExceeded. The grant carries RateLimit-* headers."""
        start = await self.domain_start(domain)
        # No checkpoint from here to the end: the check and the count are atomic in Trio.
        now = self._clock()
        wins = self.windows_for(did, domain, start, now)
        result = decide(wins, n)
        if isinstance(result, Over):
            raise RateLimitExceeded(result, wins, now)
        grant = Grant(did, domain, n, hour_bucket(now), minute_bucket(now))
        self._add(grant, n)
        after = self.windows_for(did, domain, start, now)
        return Grant(did, domain, n, grant.hour, grant.minute, rate_limit_headers(after, now))

    def release(self, grant: Grant) -> None:
        """Give back a grant whose message was not accepted (spool full, store down, ...)."""
        self._add(grant, -grant.count)

    def _add(self, grant: Grant, n: int) -> None:
        hours = self._hours.setdefault(grant.did, {}).setdefault(grant.domain, {})
        hours[grant.hour] = max(0, hours.get(grant.hour, 0) + n)
        self._pending[(grant.did, grant.domain, grant.hour)] += n
        self._accepted[grant.did] += n
        minute, count = self._minute
        if minute == grant.minute:
            self._minute = (minute, max(0, count + n))
        elif grant.minute > minute and n > 0:
            self._minute = (grant.minute, n)

    # -- reading --------------------------------------------------------------------------------

    def sends_since(self, did: str, first_bucket: int) -> int:
        """Recipients accepted from ``did`` in hour buckets starting at or after ``first_bucket``."""
        return sum(n for hours in self._hours.get(did, {}).values() for b, n in hours.items() if b >= first_bucket)

    def relay_minute(self) -> int:
        minute, count = self._minute
        return count if minute == minute_bucket(self._clock()) else 0


__all__ = ["HOUR", "Grant", "RateLimiter"]
