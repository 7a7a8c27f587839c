"""Rate policy: warming tiers, member caps, the relay-wide cap (DESIGN §6). Pure: no I/O, no clock.

Windows, and why they are built from buckets:

- Counts are kept per (DID, sending domain) in fixed **hour buckets** (``bucket_start`` a multiple of
  3600 s, UTC), the unit the store persists so the limits survive a restart.
- The **hourly** window is the current clock hour's bucket: a fixed window that refills at the top of
  the hour. (A burst of twice the hourly limit is possible across the hour boundary; the daily limit
  bounds it.)
- The **daily** window is the sum of the last 24 hour buckets (the current one and the 23 before it),
  a sliding window that moves by the hour: recipients sent in the 10:00-11:00 bucket stop counting
  at 10:00 the next day, so the budget refills hour by hour, not all at once at midnight.
- The **relay-wide** window is the current clock minute.

Several nodes, one relay (issue 17): the counts behind every window are budget leases in the store
(relay.reputation.limiter); ``lease_scopes`` names what a set of windows leases and ``lease_size``
how much a node takes at a time.

Limits, all configurable (``[limits]``): each sending domain warms up through ``warming_tiers``
``(from day, per hour, per day)``, counted on that domain alone; day 0 is the first 24 h after the
domain was verified. A tier lasts until the next tier's first day; the last tier lasts
``LAST_TIER_DAYS`` (7) days, so the defaults ((0, 5, 20), (7, 10, 50)) mean days 0-6, days 7-13, then
warmed. At every age the member caps ``hourly``/``daily`` apply to the DID's sends across all its
domains (the docs: "Send activity ... tracked per-DID across all your domains"), and
``relay_per_minute`` applies to everyone together.

Headers follow draft-ietf-httpapi-ratelimit-headers (-07): ``RateLimit-Limit``, ``RateLimit-Remaining``
and ``RateLimit-Reset`` (delta seconds) describe the window closest to exhaustion, ``RateLimit-Policy``
lists every window (``limit;w=seconds``); a refusal adds ``Retry-After`` (RFC 9110 §10.2.3).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from relay.config import LimitsConfig
from relay.errors import RateLimited

MINUTE = 60
HOUR = 3600
DAY = 86400
LAST_TIER_DAYS = 7

LimitKind: TypeAlias = Literal["relay-minute", "domain-hourly", "domain-daily", "member-hourly", "member-daily"]
ScopeName: TypeAlias = Literal["relay", "domain", "member"]  # relay.store.rows.LeaseScope
LeaseKey: TypeAlias = tuple[ScopeName, str, int]  # (scope, subject, bucket start)

# A node leases at most 1/LEASE_SHARE of what is left of a window at a time (and at most LEASE_MAX units):
# far from the limit one store transaction covers many sends, near it every send asks the store, so any
# number of nodes together admit exactly the limit.
LEASE_SHARE = 8
LEASE_MAX = 100


def hour_bucket(t: float) -> int:
    return int(t // HOUR) * HOUR


def minute_bucket(t: float) -> int:
    return int(t // MINUTE) * MINUTE


def age_days(start: float, now: float) -> int:
    """Whole days since ``start`` (day 0 is the first 24 h); never negative."""
    return max(0, int((now - start) // DAY))


@dataclass(frozen=True, slots=True)
class Tier:
    number: int  # 1-based, in order of from_day
    from_day: int
    until_day: int  # first day after this tier
    hourly: int
    daily: int


def tiers(limits: LimitsConfig) -> tuple[Tier, ...]:
    ordered = sorted(limits.warming_tiers)
    out: list[Tier] = []
    for i, (start, hourly, daily) in enumerate(ordered):
        until = ordered[i + 1][0] if i + 1 < len(ordered) else start + LAST_TIER_DAYS
        out.append(Tier(i + 1, start, until, hourly, daily))
    return tuple(out)


def tier_for(days: int, limits: LimitsConfig) -> Tier | None:
    """The warming tier of a domain ``days`` old, or None once warmed."""
    for tier in tiers(limits):  # contiguous; days before the first tier count as the first
        if days < tier.until_day:
            return tier
    return None


@dataclass(frozen=True, slots=True)
class Window:
    """One limit as it stands now: ``used`` of ``limit``, and when the used units free up."""

    kind: LimitKind
    subject: str  # the domain, the DID, or "relay"
    limit: int
    used: int
    period: int  # seconds: 60, 3600 or 86400
    releases: tuple[tuple[float, int], ...]  # (time, units freed then), ascending, units > 0
    ends_at: float  # end of the current bucket: when the window next moves
    tier: Tier | None = None
    day: int | None = None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def fits(self, need: int) -> bool:
        return self.used + need <= self.limit

    def refill_at(self, need: int = 1) -> float:
        """Earliest time at which ``need`` more units fit (the last release if they never will)."""
        if self.fits(need):
            return 0.0
        used = self.used
        for at, units in self.releases:
            used -= units
            if used + need <= self.limit:
                return at
        return self.releases[-1][0] if self.releases else self.ends_at

    def next_change(self) -> float:
        """When ``remaining`` next grows (or the window moves, if nothing is used)."""
        return self.releases[0][0] if self.releases else self.ends_at

    def describe(self) -> str:
        if self.kind == "relay-minute":
            return f"relay-wide limit of {self.limit} recipients per minute"
        per = "per hour" if self.period == HOUR else "per 24 h"
        if self.kind.startswith("domain"):
            assert self.tier is not None
            return (f"warming limit for {self.subject} (day {self.day}, tier {self.tier.number}): "
                    f"{self.limit} recipients {per}")
        return f"member limit for {self.subject}: {self.limit} recipients {per}"


def windows(
    *,
    now: float,
    limits: LimitsConfig,
    did: str,
    domain: str,
    domain_start: float,
    domain_hours: Mapping[int, int],
    member_hours: Mapping[int, int],
    relay_minute: int,
) -> list[Window]:
    """Every window that applies to one more send from ``did`` on ``domain`` at ``now``.

    ``domain_hours``/``member_hours`` map hour-bucket start -> recipients counted (older buckets
    are ignored); ``relay_minute`` is the relay-wide count in the current minute.
    """
    h = hour_bucket(now)
    m = minute_bucket(now)
    days = age_days(domain_start, now)
    tier = tier_for(days, limits)
    out = [Window("relay-minute", "relay", limits.relay_per_minute, relay_minute, MINUTE,
                  ((m + MINUTE, relay_minute),) if relay_minute > 0 else (), m + MINUTE)]
    if tier is not None:
        out += [_hourly("domain-hourly", domain, tier.hourly, domain_hours, h, tier, days),
                _daily("domain-daily", domain, tier.daily, domain_hours, h, tier, days)]
    out += [_hourly("member-hourly", did, limits.hourly, member_hours, h, None, None),
            _daily("member-daily", did, limits.daily, member_hours, h, None, None)]
    return out


def _hourly(kind: LimitKind, subject: str, limit: int, hours: Mapping[int, int], h: int,
            tier: Tier | None, day: int | None) -> Window:
    used = hours.get(h, 0)
    return Window(kind, subject, limit, used, HOUR, ((h + HOUR, used),) if used > 0 else (), h + HOUR, tier, day)


def _daily(kind: LimitKind, subject: str, limit: int, hours: Mapping[int, int], h: int,
           tier: Tier | None, day: int | None) -> Window:
    first = h - DAY + HOUR
    counted = sorted((b, n) for b, n in hours.items() if first <= b <= h and n > 0)
    used = sum(n for _, n in counted)
    return Window(kind, subject, limit, used, DAY, tuple((b + DAY, n) for b, n in counted), h + HOUR, tier, day)


def lease_scopes(wins: list[Window] | tuple[Window, ...]) -> dict[LeaseKey, tuple[tuple[int, int], ...]]:
    """The budgets ``wins`` draw on: (scope, subject, current bucket) -> each window's (first bucket, limit).

    A window counts the buckets of its scope from its first to the current one: the relay's minute
    buckets (one), a domain's or a member's hour buckets (one hourly, 24 daily), so the hourly and daily
    windows of one subject share one lease per hour."""
    out: dict[LeaseKey, tuple[tuple[int, int], ...]] = {}
    for w in wins:
        scope: ScopeName = ("relay" if w.kind == "relay-minute" else
                            "domain" if w.kind.startswith("domain") else "member")
        key = (scope, w.subject, int(w.ends_at) - (MINUTE if scope == "relay" else HOUR))
        out[key] = (*out.get(key, ()), (int(w.ends_at) - w.period, w.limit))
    return out


def lease_size(need: int, available: int) -> int:
    """Units to lease when ``need`` are wanted now and ``available`` are left in the tightest window."""
    return max(need, min(LEASE_MAX, available // LEASE_SHARE))


@dataclass(frozen=True, slots=True)
class Allowed:
    windows: tuple[Window, ...]


@dataclass(frozen=True, slots=True)
class Over:
    window: Window
    need: int
    reset_at: float  # when ``need`` more fit in this window

    @property
    def kind(self) -> LimitKind:
        return self.window.kind

    @property
    def limit(self) -> int:
        return self.window.limit

    @property
    def remaining(self) -> int:
        return self.window.remaining

    def message(self, now: float) -> str:
        w = self.window
        wait = retry_after(self, now)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.reset_at))
        if self.need > w.limit:
            return (f"{self.need} recipients exceed the {w.describe()}; send to at most {w.limit} at once "
                    f"(budget fully refills at {when}, in {wait} s)")
        more = f"; {self.need} more requested" if self.need > 1 else ""
        return f"{w.describe()} reached ({w.used} used{more}); budget refills at {when} (in {wait} s)"


def decide(wins: list[Window], need: int) -> Allowed | Over:
    """Allowed if ``need`` more recipients fit every window; otherwise the window that frees last."""
    over = [Over(w, need, w.refill_at(need)) for w in wins if not w.fits(need)]
    if not over:
        return Allowed(tuple(wins))
    return max(over, key=lambda o: o.reset_at)


def retry_after(over: Over, now: float) -> int:
    """Retry-After seconds (RFC 9110 §10.2.3: a non-negative integer; at least 1 here)."""
    return max(1, math.ceil(over.reset_at - now))


def tightest(wins: list[Window] | tuple[Window, ...]) -> Window:
    """The window closest to exhaustion (fewest remaining; then the one that refills last)."""
    return min(wins, key=lambda w: (w.remaining, -w.next_change()))


def rate_limit_headers(wins: list[Window] | tuple[Window, ...], now: float, over: Over | None = None) -> dict[str, str]:
    """RateLimit-* header values (draft-ietf-httpapi-ratelimit-headers-07), plus Retry-After when over."""
    if over is not None:
        w, reset = over.window, retry_after(over, now)
    else:
        w = tightest(wins)
        reset = max(0, math.ceil(w.next_change() - now))
    headers = {
        "RateLimit-Limit": str(w.limit),
        "RateLimit-Remaining": str(w.remaining),
        "RateLimit-Reset": str(reset),
        "RateLimit-Policy": ", ".join(f"{x.limit};w={x.period}" for x in wins),
    }
    if over is not None:
        headers["Retry-After"] = str(reset)
    return headers


class RateLimitExceeded(RateLimited):
    """RateLimited with the window that refused: 451 4.7.1 / 429 with the RateLimit-* headers."""

    def __init__(self, over: Over, wins: list[Window] | tuple[Window, ...], now: float) -> None:
        super().__init__(over.message(now), retry_after=retry_after(over, now))
        self.over = over
        self.headers = rate_limit_headers(wins, now, over)

    def http_body(self) -> dict[str, object]:
        body = super().http_body()
        w = self.over.window
        body["limit"] = {"name": w.kind, "subject": w.subject, "limit": w.limit, "used": w.used,
                         "windowSeconds": w.period, "resetAt": int(self.over.reset_at)}
        return body
