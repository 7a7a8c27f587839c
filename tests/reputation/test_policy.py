"""The pure rate policy: tiers, windows, decisions, headers."""

from __future__ import annotations

import pytest

from relay.config import LimitsConfig
from relay.errors import RateLimited
from relay.reputation.policy import (
    DAY,
    HOUR,
    Allowed,
    Over,
    RateLimitExceeded,
    age_days,
    decide,
    rate_limit_headers,
    retry_after,
    tier_for,
    windows,
)
from tests.reputation.conftest import DID, DOMAIN, T0

LIMITS = LimitsConfig()


@pytest.mark.parametrize(
    ("day", "tier", "hourly", "daily"),
    [(0, 1, 5, 20), (6, 1, 5, 20), (7, 2, 10, 50), (13, 2, 10, 50), (14, None, None, None), (400, None, None, None)],
)
def test_default_tiers(day: int, tier: int | None, hourly: int | None, daily: int | None) -> None:
    found = tier_for(day, LIMITS)
    if tier is None:
        assert found is None
    else:
        assert found is not None and (found.number, found.hourly, found.daily) == (tier, hourly, daily)


def test_tiers_are_sorted_and_the_last_lasts_a_week() -> None:
    limits = LimitsConfig(warming_tiers=((3, 8, 30), (0, 3, 5)))
    assert [tier_for(d, limits).number for d in (0, 2, 3, 9)] == [1, 1, 2, 2]  # type: ignore[union-attr]
    assert tier_for(10, limits) is None
    assert tier_for(0, LimitsConfig(warming_tiers=())) is None


@pytest.mark.parametrize(("start", "now", "days"), [(T0, T0, 0), (T0, T0 + DAY - 1, 0), (T0, T0 + DAY, 1),
                                                    (T0, T0 + 7 * DAY + 5, 7), (T0 + 50, T0, 0)])
def test_age_days(start: float, now: float, days: int) -> None:
    assert age_days(start, now) == days


def wins(now: float, *, domain: dict[int, int] | None = None, member: dict[int, int] | None = None,
         relay: int = 0, start: float = T0, limits: LimitsConfig = LIMITS) -> list:  # type: ignore[type-arg]
    domain = domain or {}
    return windows(now=now, limits=limits, did=DID, domain=DOMAIN, domain_start=start, domain_hours=domain,
                   member_hours=member if member is not None else domain, relay_minute=relay)


def test_warming_hourly_cap_and_retry_after() -> None:
    now = T0 + 600
    h = int(T0)
    assert isinstance(decide(wins(now, domain={h: 4}), 1), Allowed)
    over = decide(wins(now, domain={h: 5}), 1)
    assert isinstance(over, Over)
    assert (over.kind, over.limit, over.remaining, over.reset_at) == ("domain-hourly", 5, 0, T0 + HOUR)
    assert retry_after(over, now) == 3000
    assert "warming limit for mail.example.com (day 0, tier 1): 5 recipients per hour" in over.message(now)
    assert "2023-11-14T23:00:00Z (in 3000 s)" in over.message(now)


def test_daily_window_slides_by_the_hour() -> None:
    h = int(T0) + 5 * HOUR
    used = {h - 5 * HOUR: 5, h - 4 * HOUR: 5, h - 3 * HOUR: 5, h - 2 * HOUR: 5}  # 20 of 20 today
    over = decide(wins(h + 60, domain=used), 1)
    assert isinstance(over, Over) and over.kind == "domain-daily"
    assert over.reset_at == T0 + DAY  # the oldest bucket leaves the 24 h window
    over3 = decide(wins(h + 60, domain=used), 6)
    assert isinstance(over3, Over) and over3.reset_at == T0 + DAY + HOUR  # 6 more: two buckets must go...
    # ...but 6 also exceeds the hourly 5: the limit that frees last is reported
    assert over3.kind == "domain-daily"
    # a bucket exactly 24 h old no longer counts
    assert isinstance(decide(wins(T0 + DAY + 60, domain={int(T0): 20}), 1), Allowed)


def test_member_caps_apply_across_domains_and_after_warming() -> None:
    now = T0 + 14 * DAY + 60
    h = int(now // HOUR * HOUR)
    over = decide(wins(now, domain={}, member={h: 100}), 1)
    assert isinstance(over, Over) and over.kind == "member-hourly" and over.limit == 100
    assert "member limit for did:plc:" in over.message(now)
    # while warming, the member cap applies too (the domain has room, the member has none)
    limits = LimitsConfig(hourly=3)
    over = decide(wins(T0 + 60, domain={}, member={int(T0): 3}, limits=limits), 1)
    assert isinstance(over, Over) and over.kind == "member-hourly"


def test_relay_wide_minute() -> None:
    now = T0 + 14 * DAY + 45
    over = decide(wins(now, relay=500), 1)
    assert isinstance(over, Over) and over.kind == "relay-minute"
    assert retry_after(over, now) == 15
    assert "relay-wide limit of 500 recipients per minute" in over.message(now)


def test_more_recipients_than_the_limit_says_so() -> None:
    over = decide(wins(T0), 7)
    assert isinstance(over, Over)
    assert over.message(T0).startswith("7 recipients exceed the warming limit")


def test_headers_name_the_tightest_window() -> None:
    now = T0 + 600
    w = wins(now, domain={int(T0): 3})
    h = rate_limit_headers(w, now)
    assert h == {"RateLimit-Limit": "5", "RateLimit-Remaining": "2", "RateLimit-Reset": "3000",
                 "RateLimit-Policy": "500;w=60, 5;w=3600, 20;w=86400, 100;w=3600, 1000;w=86400"}
    over = decide(wins(now, domain={int(T0): 5}), 1)
    assert isinstance(over, Over)
    exc = RateLimitExceeded(over, wins(now, domain={int(T0): 5}), now)
    assert isinstance(exc, RateLimited)
    assert exc.headers["Retry-After"] == "3000" and exc.headers["RateLimit-Remaining"] == "0"
    assert exc.retry_after == 3000
    assert (exc.smtp_reply.code, exc.smtp_reply.enhanced) == (451, "4.7.1")
    body = exc.http_body()
    assert body["code"] == "RATE_LIMITED"
    assert body["limit"] == {"name": "domain-hourly", "subject": DOMAIN, "limit": 5, "used": 5,
                             "windowSeconds": 3600, "resetAt": int(T0 + HOUR)}
