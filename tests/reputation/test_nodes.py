"""Two nodes, one relay (issue 17): two RateLimiter / Reputation instances, each over its own store
connection to one database (an SQLite file, a real PostgreSQL server), hold the caps exactly together."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from relay.config import LimitsConfig, SuspensionConfig
from relay.reputation import RateLimiter, RateLimitExceeded, Reputation
from relay.reputation.policy import DAY, HOUR
from relay.store.aio import AsyncStore
from relay.store.base import Store
from tests.reputation.conftest import DID, DID_B, DOMAIN, DOMAIN_B, T0, trio_clock
from tests.store.conftest import FakeClock, Opener

# ``open_backend`` (tests/store/conftest.py, registered in tests/reputation/conftest.py): each call is one
# more connection to the test's database, run once on an SQLite file and once on a real PostgreSQL server.


def enroll(store: Store) -> None:
    """Two members with a verified domain each, verified at the store's clock (warming starts then)."""
    for did, domain in ((DID, DOMAIN), (DID_B, DOMAIN_B)):
        store.create_member(did)
        store.add_domain(did, domain, selector="atmosabc", rsa_private=b"r", ed25519_private=b"e",
                         verify_token="tok", state="verified")


def nodes(open_backend: Opener, limits: LimitsConfig, clock: Callable[[], float], *, age: float = 0.0
          ) -> tuple[RateLimiter, RateLimiter]:  # fmt: skip
    a, b = open_backend(clock=lambda: T0 - age), open_backend()
    enroll(a)
    return (RateLimiter(AsyncStore(a), limits, clock=clock, node="a"),
            RateLimiter(AsyncStore(b), limits, clock=clock, node="b"))


async def alternate(a: RateLimiter, b: RateLimiter, times: int, *, did: str = DID, domain: str = DOMAIN,
                    others: bool = False) -> tuple[int, int]:  # fmt: skip
    """``times`` sends alternating between the nodes; (admitted by a, admitted by b)."""
    admitted = [0, 0]
    for i in range(times):
        who, (d, dom) = i % 2, ((DID_B, DOMAIN_B) if others and i % 4 >= 2 else (did, domain))
        try:
            await (a, b)[who].acquire(d, dom, 1)
            admitted[who] += 1
        except RateLimitExceeded:
            pass
    return admitted[0], admitted[1]


@pytest.mark.trio
async def test_a_fresh_domain_sends_exactly_five_an_hour_across_two_nodes(open_backend: Opener) -> None:
    clock = FakeClock(T0 + 60)
    a, b = nodes(open_backend, LimitsConfig(), clock)
    assert sum(await alternate(a, b, 10)) == 5
    with pytest.raises(RateLimitExceeded) as info:
        await b.acquire(DID, DOMAIN, 1)
    assert info.value.over.kind == "domain-hourly"
    assert "warming limit for mail.example.com (day 0, tier 1): 5 recipients per hour reached (5 used)" \
        in info.value.message
    assert (info.value.smtp_reply.code, info.value.smtp_reply.enhanced, info.value.http_status) == (451, "4.7.1", 429)
    clock.advance(HOUR)
    assert sum(await alternate(a, b, 10)) == 5  # the next hour, and 10 of the day's 20 are spent


@pytest.mark.trio
async def test_member_hourly_and_daily_caps_across_two_nodes(open_backend: Opener) -> None:
    clock = FakeClock(T0 + 60)
    a, b = nodes(open_backend, LimitsConfig(hourly=10, daily=25), clock, age=30 * DAY)
    assert sum(await alternate(a, b, 20)) == 10
    with pytest.raises(RateLimitExceeded) as info:
        await a.acquire(DID, DOMAIN, 1)
    assert info.value.over.kind == "member-hourly" and info.value.over.window.used == 10
    clock.advance(HOUR)
    assert sum(await alternate(a, b, 20)) == 10
    clock.advance(HOUR)
    assert sum(await alternate(a, b, 20)) == 5  # 25 a day
    with pytest.raises(RateLimitExceeded) as info:
        await b.acquire(DID, DOMAIN, 1)
    assert info.value.over.kind == "member-daily" and info.value.over.window.used == 25


@pytest.mark.trio
async def test_the_relay_wide_minute_across_two_nodes(open_backend: Opener) -> None:
    clock = FakeClock(T0 + 60)
    a, b = nodes(open_backend, LimitsConfig(relay_per_minute=7), clock, age=30 * DAY)
    assert sum(await alternate(a, b, 16, others=True)) == 7
    with pytest.raises(RateLimitExceeded) as info:
        await a.acquire(DID_B, DOMAIN_B, 1)
    assert info.value.over.kind == "relay-minute"
    clock.advance(60)
    assert sum(await alternate(a, b, 16, others=True)) == 7


@pytest.mark.trio
async def test_an_idle_nodes_unused_lease_goes_to_the_other(open_backend: Opener) -> None:
    clock = FakeClock(T0 + 60)
    a, b = nodes(open_backend, LimitsConfig(hourly=100, daily=1000), clock, age=30 * DAY)
    await a.acquire(DID, DOMAIN, 1)  # a leases 12 of the member's 100 and spends one
    with pytest.raises(RateLimitExceeded):
        await b.acquire(DID, DOMAIN, 99)  # 88 are free: a still holds 11
    assert await a.maintain() == 0  # in use a moment ago and all reported: nothing to write
    clock.advance(a.lease_idle)
    assert await a.maintain() > 0  # idle: the unused units go back
    await b.acquire(DID, DOMAIN, 99)
    with pytest.raises(RateLimitExceeded):
        await a.acquire(DID, DOMAIN, 1)  # exactly 100 across both
    await b.return_leases()


@pytest.mark.trio
async def test_a_crashed_nodes_lease_expires(open_backend: Opener) -> None:
    clock = FakeClock(T0 + 60)
    a, b = nodes(open_backend, LimitsConfig(hourly=100, daily=1000), clock, age=30 * DAY)
    await a.acquire(DID, DOMAIN, 1)  # then a dies: it never hands its lease back
    with pytest.raises(RateLimitExceeded):
        await b.acquire(DID, DOMAIN, 99)
    clock.advance(b.lease_ttl)
    await b.acquire(DID, DOMAIN, 99)  # the one a spent still counts (it was counted with its lease)
    with pytest.raises(RateLimitExceeded) as info:
        await b.acquire(DID, DOMAIN, 1)
    assert info.value.over.window.used == 100


@pytest.mark.trio
async def test_leases_are_kept_and_handed_back_by_the_running_service(
    open_backend: Opener, thread_clock: trio.testing.MockClock
) -> None:
    clock = trio_clock(T0 + 60)
    a, b = nodes(open_backend, LimitsConfig(hourly=100, daily=1000), clock, age=30 * DAY)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        for _ in range(30):  # a busy node renews its lease; it is never lost while in use
            await a.acquire(DID, DOMAIN, 1)
            await trio.sleep(1)
        await trio.sleep(2 * a.lease_idle + a.lease_interval)  # then idle: its unused units go back
        await b.acquire(DID, DOMAIN, 70)
        nursery.cancel_scope.cancel()
    with pytest.raises(RateLimitExceeded) as info:
        await b.acquire(DID, DOMAIN, 1)
    assert info.value.over.window.used == 100


@pytest.mark.trio
async def test_a_suspension_on_one_node_is_seen_by_the_other_within_a_second(
    open_backend: Opener, thread_clock: trio.testing.MockClock
) -> None:
    a, b = open_backend(clock=lambda: T0), open_backend()
    enroll(a)
    rep = Reputation(AsyncStore(b), LimitsConfig(), SuspensionConfig(), clock=trio_clock(T0), node="b")
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)
        await trio.sleep(5)
        assert not rep.is_suspended(DID)
        a.set_member_status(DID, "suspended", "operator: test")  # another node, or `atmos admin suspend`
        with trio.fail_after(1):  # virtual time (thread_clock): only the poll interval counts
            while not rep.is_suspended(DID):  # noqa: ASYNC110 (polling the view, no event to wait on)
                await trio.sleep(0.01)
        assert rep.suspension_reason(DID) == "operator: test"
        a.set_member_status(DID, "active")
        with trio.fail_after(1):
            while rep.is_suspended(DID):  # noqa: ASYNC110
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_bad_sender_spread_over_two_nodes_is_judged_on_the_cluster_wide_figures(
    open_backend: Opener,
) -> None:
    """30 sends and 2 hard bounces on each node: each node alone sees 2/30 (6.7 %), over the 5 % rate but
    its own sends would count only once the other node's are in the store. The figures judged are every
    node's: after a flush on each, a bounce on either node judges 60 sends and 5 bounces (8.3 %)."""
    clock = trio_clock(T0 + 600)
    a_store, b_store = open_backend(clock=lambda: T0), open_backend()
    enroll(a_store)
    cfg = SuspensionConfig(min_sends=50)  # neither node alone reaches it: 30 sends each
    big = LimitsConfig(hourly=10_000, daily=100_000, relay_per_minute=100_000)
    a = Reputation(AsyncStore(a_store), big, cfg, clock=clock, node="a")
    b = Reputation(AsyncStore(b_store), big, cfg, clock=clock, node="b")
    await a.load()
    await b.load()
    for i, rep in enumerate((a, b)):
        rep.consume(DID, DOMAIN, 30)
        for j in range(2):
            await rep.bounce(DID, 100 + 10 * i + j, f"u{i}{j}@dest.example", "hard", "550 5.1.1", domain=DOMAIN)
    assert not a.is_suspended(DID) and not b.is_suspended(DID)  # each node judged its own 30 sends: below 50
    assert a.standing(DID) == (30, 2, 0)
    await a.flush()
    await b.flush()
    assert await b.cluster_standing(DID) == (60, 4, 0)
    await b.bounce(DID, 200, "late@dest.example", "hard", "550 5.1.1", domain=DOMAIN)
    assert b.is_suspended(DID)
    assert b_store.get_member(DID).status == "suspended"  # type: ignore[union-attr]
    reason = b.suspension_reason(DID) or ""
    assert reason.startswith("automatic: 5 bounces in 24 h of 60 sends"), reason
    # The status page shows the cluster's figures too, once b has flushed its last bounce.
    await b.flush()
    standing = (await a.member_status(DID))["standing"]
    assert (standing["sends"], standing["bounces"]) == (60, 5)
