"""Rate caps, Idempotency-Key and suspension across nodes sharing one store (issue 17), over two connections
on both backends: budget leases never exceed a limit, a key is claimed once, a status change is counted."""

from __future__ import annotations

from relay.reputation.policy import lease_size
from relay.store.rows import LeaseAsk, LeaseReport

from .conftest import DID_A, Opener

HOUR = 3600
H = 1_700_002_800  # an hour bucket
NOW = H + 60.0


def ask(used: int, need: int = 1, *, caps: tuple[tuple[int, int], ...] = ((H, 5),)) -> LeaseAsk:
    return LeaseAsk("domain", "new.example", H, caps, used, need)


def test_leases_of_two_holders_never_exceed_the_limit(open_backend: Opener) -> None:
    a, b = open_backend(), open_backend()
    used = {"a": 0, "b": 0}
    admitted = 0
    for i in range(10):  # alternating; each holder always asks for the one unit it needs
        name, store = ("a", a) if i % 2 == 0 else ("b", b)
        [grant] = store.lease_budget(name, [ask(used[name])], NOW, 10.0, lease_size)
        if grant.units:
            assert grant.units == 1  # 1/8 of at most 5 left: the need itself
            used[name] += 1
            admitted += 1
    assert admitted == 5 and used == {"a": 3, "b": 2}
    assert a.lease_totals([("domain", "new.example", H, H)], NOW) == [{H: 5}]


def test_a_lease_is_sized_by_what_is_left_and_counts_the_daily_window(open_backend: Opener) -> None:
    a, b = open_backend(), open_backend()
    caps = ((H, 100), (H - 23 * HOUR, 120))  # hourly 100, daily 120
    # 40 spent an hour ago by holder b (reported: its lease is returned down to them).
    b.report_leases("b", [LeaseReport("domain", "new.example", H - HOUR, 40, False)], NOW, 10.0)
    [grant] = a.lease_budget("a", [ask(0, caps=caps)], NOW, 10.0, lease_size)
    assert grant.units == 10  # 80 left in the day: 1/8 of them
    assert grant.totals == {H - HOUR: 40, H: 10}
    [refused] = b.lease_budget("b", [ask(0, 71, caps=caps)], NOW, 10.0, lease_size)
    assert refused.units == 0  # 40 + 10 + 71 > 120
    [grant] = b.lease_budget("b", [ask(0, 70, caps=caps)], NOW, 10.0, lease_size)
    assert grant.units == 70


def test_all_or_nothing_and_an_expired_lease_counts_only_what_was_spent(open_backend: Opener) -> None:
    a, b = open_backend(), open_backend()
    member = LeaseAsk("member", DID_A, H, ((H, 100),), 0, 1)
    grants = a.lease_budget("a", [ask(0), member], NOW, 10.0, lease_size)
    assert [g.units for g in grants] == [1, 12]  # 1 of the domain's 5, 12 of the member's 100
    # b wants 5 of the domain: only 4 are left, so b gets none of the member's budget either
    grants = b.lease_budget("b", [ask(0, 5), LeaseAsk("member", DID_A, H, ((H, 100),), 0, 5)], NOW, 10.0,
                            lease_size)
    assert [g.units for g in grants] == [0, 0]
    # a dies: after its TTL its 11 unused member units are free again, the 1 it spent still counts
    [grant] = b.lease_budget("b", [LeaseAsk("member", DID_A, H, ((H, 100),), 0, 99)], NOW + 10.0, 10.0, lease_size)
    assert grant.units == 99 and grant.totals == {H: 100}
    # a renewing after that revives nothing: the expired lease keeps counting its spent units only
    assert a.report_leases("a", [LeaseReport("member", DID_A, H, 1, True)], NOW + 11, 10.0) == [False]
    assert b.lease_totals([("member", DID_A, H, H)], NOW + 11) == [{H: 100}]


def test_one_claim_wins_and_the_other_gets_its_answer(open_backend: Opener) -> None:
    a, b = open_backend(), open_backend()
    a.create_member(DID_A)
    assert a.claim_idempotent(DID_A, "k1", "node-a", "h1", NOW, 30.0, 0.0).state == "mine"
    busy = b.claim_idempotent(DID_A, "k1", "node-b", "h1", NOW, 30.0, 0.0)
    assert (busy.state, busy.request_hash) == ("busy", "h1")
    assert a.put_idempotent(DID_A, "k1", "h1", 200, '{"ok": 1}', NOW)
    assert a.release_idempotent(DID_A, "k1", "node-a")
    stored = b.claim_idempotent(DID_A, "k1", "node-b", "h1", NOW + 1, 30.0, 0.0)
    assert stored.state == "stored" and stored.response is not None
    assert (stored.response.status_code, stored.response.response_json) == (200, '{"ok": 1}')
    # an answer older than ``stored_after`` is no answer: the key is claimed afresh
    assert b.claim_idempotent(DID_A, "k1", "node-b", "h1", NOW + 1, 30.0, NOW + 0.5).state == "mine"


def test_a_dead_nodes_claim_is_taken_over_after_its_ttl(open_backend: Opener) -> None:
    a, b = open_backend(), open_backend()
    assert a.claim_idempotent(DID_A, "k2", "node-a", "h1", NOW, 30.0, 0.0).state == "mine"
    assert b.claim_idempotent(DID_A, "k2", "node-b", "h1", NOW + 29, 30.0, 0.0).state == "busy"
    assert b.claim_idempotent(DID_A, "k2", "node-b", "h1", NOW + 30, 30.0, 0.0).state == "mine"
    assert not a.release_idempotent(DID_A, "k2", "node-a")  # no longer a's to release
    assert a.claim_idempotent(DID_A, "k2", "node-a", "h1", NOW + 31, 30.0, 0.0).state == "busy"


def test_a_status_change_moves_the_change_counter_for_every_connection(open_backend: Opener) -> None:
    a, b = open_backend(), open_backend()
    a.create_member(DID_A)
    before = b.change_seq("member_status")
    a.set_member_status(DID_A, "suspended", "automatic: test")
    assert b.change_seq("member_status") == before + 1
    assert [m.did for m in b.suspended_members()] == [DID_A]
