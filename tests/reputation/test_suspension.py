"""Automatic suspension: thresholds, minimum volume, the reason, the is_suspended view, suppression."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.config import LimitsConfig, SuspensionConfig
from relay.reputation import DeliveryEvents, Reputation, classify_status
from relay.reputation.policy import HOUR
from relay.reputation.suspension import evaluate, normalize_class
from relay.store.aio import AsyncStore
from relay.store.rows import Member, MessageRow
from relay.store.sqlite import SqliteStore
from tests.reputation.conftest import DID, DID_B, DOMAIN, DOMAIN_2, T0, trio_clock

CFG = SuspensionConfig()
BIG = LimitsConfig(hourly=10_000, daily=100_000, relay_per_minute=100_000, warming_tiers=())


@pytest.mark.parametrize(
    ("sends", "bounces", "complaints", "reason"),
    [
        (19, 19, 5, None),  # below the minimum volume nothing is judged
        (20, 1, 0, None),  # exactly 5 % is not over 5 %
        (40, 2, 0, None),
        (40, 7, 0, "automatic: 7 bounces in 24 h of 40 sends (17.5% > 5%)"),
        (20, 2, 0, "automatic: 2 bounces in 24 h of 20 sends (10% > 5%)"),
        (20, 0, 1, None),  # one complaint never suspends alone (suspension.min_complaints = 3)
        (20, 0, 2, None),
        (20, 0, 3, "automatic: 3 complaints in 24 h of 20 sends (15% > 0.08%)"),
        (5000, 0, 4, None),  # 0.08 % exactly
        (5000, 0, 5, "automatic: 5 complaints in 24 h of 5000 sends (0.1% > 0.08%)"),
        (0, 3, 3, None),
    ],
)
def test_thresholds_and_reason(sends: int, bounces: int, complaints: int, reason: str | None) -> None:
    verdict = evaluate(sends=sends, bounces=bounces, complaints=complaints, cfg=CFG)
    assert (verdict.reason if verdict else None) == reason


def test_configured_thresholds() -> None:
    cfg = SuspensionConfig(window=6 * HOUR, max_bounce_rate=0.5, min_sends=2)
    verdict = evaluate(sends=2, bounces=2, complaints=0, cfg=cfg)
    assert verdict is not None and verdict.reason == "automatic: 2 bounces in 6 h of 2 sends (100% > 50%)"


@pytest.mark.parametrize(("status", "klass"), [("5.1.1", "hard"), ("5.2.2", "mailbox-full"), ("4.2.2", "mailbox-full"),
                                               ("5.7.1", "policy"), ("4.7.0", "policy"), ("4.4.1", "soft"),
                                               ("5.4.4", "hard"), ("5.0.0", "hard")])
def test_classify_status(status: str, klass: str) -> None:
    assert classify_status(status) == klass


def test_normalize_class() -> None:
    assert [normalize_class(k) for k in ("HARD", "policy-block", "mailbox_full", "", "weird")] == \
        ["hard", "policy", "mailbox-full", "hard", "weird"]


def rep_for(store: AsyncStore, **cfg: object) -> Reputation:
    return Reputation(store, BIG, SuspensionConfig(**cfg), clock=trio_clock(T0 + 600))  # type: ignore[arg-type]


@pytest.mark.trio
async def test_bounces_over_the_rate_suspend_the_member(store: AsyncStore, sync_store: SqliteStore) -> None:
    rep = rep_for(store)
    await rep.load()
    seen: list[tuple[str, str]] = []
    rep.on_suspended = lambda did, reason: seen.append((did, reason))
    rep.consume(DID, DOMAIN, 30)
    rep.consume(DID, DOMAIN_2, 10)
    for i in range(2):
        await rep.bounce(DID, 100 + i, f"u{i}@dest.example", "hard", "550 5.1.1 no such user", domain=DOMAIN)
    await rep.bounce(DID, 100, "u0@dest.example", "hard", "duplicate report", domain=DOMAIN)  # ignored
    assert not rep.is_suspended(DID) and rep.standing(DID) == (40, 2, 0)
    await rep.bounce(DID, 102, "u2@dest.example", "policy", "554 5.7.1 blocked", domain=DOMAIN_2)
    reason = "automatic: 3 bounces in 24 h of 40 sends (7.5% > 5%)"
    assert rep.is_suspended(DID) and rep.suspension_reason(DID) == reason
    member = sync_store.get_member(DID)
    assert member is not None and (member.status, member.suspension_reason) == ("suspended", reason)
    assert seen == [(DID, reason)]
    assert not rep.is_suspended(DID_B)


@pytest.mark.trio
async def test_minimum_volume(store: AsyncStore, sync_store: SqliteStore) -> None:
    rep = rep_for(store)
    await rep.load()
    rep.consume(DID, DOMAIN, 19)
    for i in range(10):
        await rep.bounce(DID, i, f"u{i}@dest.example", "hard", "550", domain=DOMAIN)
    assert not rep.is_suspended(DID)
    rep.consume(DID, DOMAIN, 1)  # the 20th send: the next event is judged on 20 sends
    await rep.complaint(DID, "", "abuse", "")
    assert rep.suspension_reason(DID) == "automatic: 10 bounces in 24 h of 20 sends (50% > 5%)"


@pytest.mark.trio
async def test_one_complaint_in_twenty_sends(store: AsyncStore, sync_store: SqliteStore) -> None:
    rep = rep_for(store, min_complaints=1)  # an operator who wants the bare rate
    await rep.load()
    complaints: list[str] = []
    rep.on_complaint = lambda did, kind: complaints.append(kind)
    rep.consume(DID, DOMAIN, 20)
    await rep.complaint(DID, "x@dest.example", "Abuse", "<abc@news.example.com>")
    assert rep.suspension_reason(DID) == "automatic: 1 complaint in 24 h of 20 sends (5% > 0.08%)"
    assert complaints == ["abuse"]
    await rep.flush()
    rows = sync_store.reputation_counts_since(0, DID)
    assert [(r.domain, r.kind, r.klass, r.count) for r in rows] == [(DOMAIN_2, "complaint", "abuse", 1)]


@pytest.mark.trio
async def test_old_events_leave_the_window(store: AsyncStore, autojump_clock: trio.testing.MockClock) -> None:
    rep = rep_for(store)
    await rep.load()
    rep.consume(DID, DOMAIN, 40)
    await rep.bounce(DID, 1, "a@dest.example", "hard", "550", domain=DOMAIN)
    await rep.bounce(DID, 2, "b@dest.example", "hard", "550", domain=DOMAIN)
    await trio.sleep(24 * HOUR)  # those sends and bounces are now outside the 24 h window
    rep.consume(DID, DOMAIN, 20)
    await rep.bounce(DID, 3, "c@dest.example", "hard", "550", domain=DOMAIN)
    assert rep.standing(DID) == (20, 1, 0) and not rep.is_suspended(DID)


@pytest.mark.trio
async def test_is_suspended_follows_the_store_and_a_lift_forgives_old_events(
    store: AsyncStore, sync_store: SqliteStore, autojump_clock: trio.testing.MockClock
) -> None:
    rep = rep_for(store)
    await rep.load()
    sync_store.set_member_status(DID_B, "suspended", "operator: spam")  # another process (atmos admin)
    assert not rep.is_suspended(DID_B)
    await rep.refresh()
    assert rep.is_suspended(DID_B) and rep.suspension_reason(DID_B) == "operator: spam"

    rep.consume(DID, DOMAIN, 20)
    for i in range(3):
        await rep.bounce(DID, i, f"u{i}@dest.example", "hard", "550", domain=DOMAIN)
    assert rep.is_suspended(DID)
    sync_store.set_member_status(DID, "active")  # the operator reviews and lifts it
    await rep.refresh()
    assert not rep.is_suspended(DID)
    await rep.bounce(DID, 9, "u9@dest.example", "hard", "550", domain=DOMAIN)
    assert not rep.is_suspended(DID)  # the old bounces (and this hour) no longer count
    await trio.sleep(HOUR)
    rep.consume(DID, DOMAIN, 20)
    await rep.bounce(DID, 10, "u10@dest.example", "hard", "550", domain=DOMAIN)
    assert not rep.is_suspended(DID)
    await rep.bounce(DID, 11, "u11@dest.example", "hard", "550", domain=DOMAIN)
    assert rep.suspension_reason(DID) == "automatic: 2 bounces in 24 h of 20 sends (10% > 5%)"
    rep.note_member_status(DID, "active")  # e.g. a successful AUTH read it from the store
    assert not rep.is_suspended(DID)


@pytest.mark.trio
async def test_delivery_events_are_sync_and_hard_bounces_suppressed(store: AsyncStore, sync_store: SqliteStore) -> None:
    # Real clock: the service's follow-ups wait on store threads, which a mock clock would race past.
    rep = rep_for(store, suppress_hard_bounces=True)
    events: DeliveryEvents = rep
    suspended = trio.Event()
    rep.on_suspended = lambda did, reason: suspended.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(rep.run)
        rep.consume(DID, DOMAIN, 20)
        for i in range(18):
            events.sent(DID, DOMAIN, i)
        events.bounced(DID, DOMAIN, 50, "gone@dest.example", "hard", "550 5.1.1 user unknown")
        events.bounced(DID, DOMAIN, 51, "full@dest.example", "mailbox-full", "552 5.2.2 mailbox full")
        with trio.fail_after(5):  # the follow-ups (suppression, judging) run in the service's own task
            await suspended.wait()
        assert sync_store.is_suppressed(DID, "gone@dest.example")
        assert not sync_store.is_suppressed(DID, "full@dest.example")
        assert rep.suspension_reason(DID) == "automatic: 2 bounces in 24 h of 20 sends (10% > 5%)"
        await rep.refresh()  # the store agrees: still suspended
        assert rep.is_suspended(DID)
        await rep.flush()
        assert sync_store.member_totals(DID) == {"accepted": 20, "sent": 18, "bounce": 2}
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_bounce_finds_the_sending_domain(store: AsyncStore, sync_store: SqliteStore) -> None:
    sync_store.insert_messages([MessageRow(id=77, queue_id=7, did=DID, from_domain=DOMAIN_2, mail_from=f"a@{DOMAIN_2}",
                                           recipient="r@dest.example", source="http", created_at=T0, updated_at=T0)])
    rep = rep_for(store)
    await rep.load()
    await rep.bounce(DID, 77, "r@dest.example", "Soft", "4.4.1 timeout")
    await rep.bounce(DID_B, 78, "s@dest.example", "hard", "no row for this id")
    await rep.flush()
    rows = sync_store.reputation_counts_since(0)
    assert sorted((r.did, r.domain, r.klass) for r in rows) == [(DID, DOMAIN_2, "soft"), (DID_B, "", "hard")]


class SlowStore(AsyncStore):
    """suspended_members() answers with what was true when it was asked, once released."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__(store)
        self.asked = trio.Event()
        self.release = trio.Event()

    async def suspended_members(self) -> list[Member]:
        answer = await super().suspended_members()
        self.asked.set()
        await self.release.wait()
        return answer


@pytest.mark.trio
async def test_a_slow_refresh_does_not_undo_a_newer_local_change(sync_store: SqliteStore) -> None:
    slow = SlowStore(sync_store)
    rep = Reputation(slow, BIG, SuspensionConfig(), clock=trio_clock(T0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rep.refresh)
        await slow.asked.wait()
        sync_store.set_member_status(DID, "suspended", "automatic: x")
        rep.note_member_status(DID, "suspended", "automatic: x")  # what _judge does after its store write
        slow.release.set()
    assert rep.is_suspended(DID)
    await rep.refresh()  # a fresh read agrees
    assert rep.suspension_reason(DID) == "automatic: x"


@pytest.mark.trio
async def test_inbound_events_protocol(store: AsyncStore, sync_store: SqliteStore) -> None:
    from relay.inbound import InboundEvents

    rep = rep_for(store)
    await rep.load()
    events: InboundEvents = rep
    rep.consume(DID, DOMAIN, 100)
    await events.bounce(DID, 5, "a@dest.example", "hard", "550 5.1.1")
    await events.complaint(DID, "c@dest.example", "abuse", "abc@news.example.com")
    await events.complaint(DID, "", "other", "")
    assert rep.standing(DID) == (100, 1, 2)
    assert sync_store.is_suppressed(DID, "c@dest.example")  # a complainer is not mailed again
    assert not rep.is_suspended(DID)  # two complaints, under suspension.min_complaints (3)
    await events.complaint(DID, "d@dest.example", "abuse", "")
    assert rep.suspension_reason(DID) == "automatic: 3 complaints in 24 h of 100 sends (3% > 0.08%)"
    await rep.flush()
    got = sorted((r.domain, r.kind, r.klass) for r in sync_store.reputation_counts_since(0, DID))
    # no message row for rcpt 5, and two domains with no Message-ID to tell: the domain is unknown ("")
    assert got == [("", "bounce", "hard"), ("", "complaint", "abuse"), ("", "complaint", "other"),
                   (DOMAIN_2, "complaint", "abuse")]


@pytest.mark.trio
async def test_a_failed_delivery_and_its_dsn_count_as_one_bounce(store: AsyncStore, sync_store: SqliteStore) -> None:
    """The scheduler's ``bounced`` and the inbound ``bounce`` of the same recipient id are one event."""
    rep = rep_for(store)
    await rep.load()
    rep.consume(DID, DOMAIN, 100)
    rep.bounced(DID, DOMAIN, 7, "a@dest.example", "hard", "550 5.1.1 (delivery)")
    await rep.bounce(DID, 7, "a@dest.example", "hard", "550 5.1.1 (the DSN)", domain=DOMAIN)
    await rep.bounce(DID, 8, "b@dest.example", "soft", "451 4.4.1", domain=DOMAIN)
    rep.bounced(DID, DOMAIN, 8, "b@dest.example", "soft", "451 4.4.1 (again)")
    assert rep.standing(DID) == (100, 2, 0)
    await rep.flush()
    assert sync_store.member_totals(DID)["bounce"] == 2
