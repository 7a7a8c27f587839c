"""RateLimiter on trio's autojump clock: warming, transitions, caps, restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from relay.config import LimitsConfig
from relay.reputation import RateLimiter, RateLimitExceeded
from relay.reputation.policy import DAY, HOUR
from relay.store.aio import AsyncStore
from relay.store.sqlite import SqliteStore
from tests.reputation.conftest import DID, DID_B, DOMAIN, DOMAIN_2, DOMAIN_B, T0, open_sync, trio_clock


async def send(limiter: RateLimiter, n: int, *, did: str = DID, domain: str = DOMAIN) -> None:
    for _ in range(n):
        await limiter.acquire(did, domain, 1)


async def refused(limiter: RateLimiter, *, did: str = DID, domain: str = DOMAIN, n: int = 1) -> RateLimitExceeded:
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.acquire(did, domain, n)
    return info.value


@pytest.mark.trio
async def test_new_domain_sends_five_then_the_sixth_waits_for_the_hour(
    store: AsyncStore, autojump_clock: trio.testing.MockClock
) -> None:
    limiter = RateLimiter(store, LimitsConfig(), clock=trio_clock(T0 + 600))
    await limiter.load()
    await send(limiter, 5)
    exc = await refused(limiter)
    assert exc.over.kind == "domain-hourly"
    assert exc.retry_after == 3000  # 10 minutes into the hour: the budget refills at the top of it
    assert (exc.smtp_reply.code, exc.smtp_reply.enhanced) == (451, "4.7.1")
    assert "refills at 2023-11-14T23:00:00Z (in 3000 s)" in exc.message
    # check() answers the same without counting; other domains of the member have their own tier
    with pytest.raises(RateLimitExceeded):
        await limiter.check(DID, DOMAIN, 1)
    await send(limiter, 5, domain=DOMAIN_2)
    await trio.sleep(2999)
    await refused(limiter)
    await trio.sleep(1)
    await send(limiter, 5)
    await refused(limiter)


@pytest.mark.trio
async def test_daily_cap_refills_as_the_oldest_hour_leaves(
    store: AsyncStore, autojump_clock: trio.testing.MockClock
) -> None:
    limiter = RateLimiter(store, LimitsConfig(), clock=trio_clock(T0))
    await limiter.load()
    for _ in range(4):  # 4 hours x 5 = the day's 20
        await send(limiter, 5)
        await trio.sleep(HOUR)
    exc = await refused(limiter)
    assert exc.over.kind == "domain-daily" and exc.over.limit == 20
    assert exc.retry_after == DAY - 4 * HOUR  # the first hour's five leave the 24 h window then
    await trio.sleep(DAY - 4 * HOUR)
    await send(limiter, 5)
    await refused(limiter)


@pytest.mark.trio
async def test_day_7_and_day_14_transitions(store: AsyncStore, autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(store, LimitsConfig(), clock=trio_clock(T0 + 7 * DAY - 60))
    await limiter.load()
    await send(limiter, 5)
    assert (await refused(limiter)).over.limit == 5  # still day 6
    await trio.sleep(60)  # day 7: tier 2, and a new hour
    await send(limiter, 10)
    exc = await refused(limiter)
    assert (exc.over.kind, exc.over.limit, exc.over.window.tier.number) == ("domain-hourly", 10, 2)  # type: ignore[union-attr]
    assert "(day 7, tier 2)" in exc.message
    await trio.sleep(7 * DAY)  # day 14: warmed, the member's 100 per hour apply
    await limiter.acquire(DID, DOMAIN, 60)
    await limiter.acquire(DID, DOMAIN_2, 5)  # DOMAIN_2 is also warmed: same age
    exc = await refused(limiter, n=36)
    assert (exc.over.kind, exc.over.limit) == ("member-hourly", 100)
    await limiter.acquire(DID, DOMAIN, 35)


@pytest.mark.trio
async def test_relay_wide_per_minute(store: AsyncStore, autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(store, LimitsConfig(relay_per_minute=3), clock=trio_clock(T0 + 30))
    await limiter.load()
    await send(limiter, 2)
    await send(limiter, 1, did=DID_B, domain=DOMAIN_B)
    exc = await refused(limiter, did=DID_B, domain=DOMAIN_B)
    assert exc.over.kind == "relay-minute" and exc.retry_after == 30
    await trio.sleep(30)
    await send(limiter, 1, did=DID_B, domain=DOMAIN_B)


@pytest.mark.trio
async def test_release_gives_budget_back(store: AsyncStore, autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(store, LimitsConfig(), clock=trio_clock(T0))
    await limiter.load()
    grant = await limiter.acquire(DID, DOMAIN, 5)
    assert grant.headers["RateLimit-Remaining"] == "0"
    limiter.release(grant)
    assert (await limiter.headers(DID, DOMAIN))["RateLimit-Remaining"] == "5"
    await send(limiter, 5)


@pytest.mark.trio
async def test_counters_survive_a_restart(
    sync_store: SqliteStore, db_path: Path, thread_clock: trio.testing.MockClock
) -> None:
    clock = trio_clock(T0 + 60)
    limiter = RateLimiter(AsyncStore(sync_store), LimitsConfig(), clock=clock, flush_interval=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        await send(limiter, 3)
        await trio.sleep(1.5)  # one periodic flush
        await send(limiter, 1)  # written by the final flush at cancellation
        nursery.cancel_scope.cancel()
    sync_store.close()

    reopened = open_sync(db_path)
    try:
        assert sum(r.count for r in reopened.send_counts_since(0)) == 4
        assert reopened.member_totals(DID) == {"accepted": 4}
        again = RateLimiter(AsyncStore(reopened), LimitsConfig(), clock=clock)
        assert await again.load() == 1
        await send(again, 1)
        assert (await refused(again)).over.window.used == 5
    finally:
        reopened.close()
