"""Message status rows, attempts, suppressions, idempotency, retention."""

from __future__ import annotations

import pytest

from relay.store import InvalidRow
from relay.store.base import MESSAGE_RETENTION, Store
from relay.store.rows import NewAttempt, StatusUpdate

from .conftest import DID_A, DID_B, FakeClock, new_message

T0 = 1_700_000_000.0


def test_insert_and_get(store: Store) -> None:
    assert store.insert_messages([new_message(1), new_message(2, category="login-link", source="http")]) == 2
    m = store.get_message(2)
    assert m is not None
    assert (m.id, m.queue_id, m.did, m.recipient, m.source) == (2, 0, DID_A, "user2@dest.example", "http")
    assert (m.status, m.attempts, m.last_reply, m.next_attempt_at) == ("accepted", 0, None, None)
    assert m.category == "login-link" and m.subject == "hello 2"
    assert m.created_at == m.updated_at == T0
    assert store.get_message(99) is None


def test_replayed_inserts_are_harmless(store: Store) -> None:
    store.insert_messages([new_message(1)])
    store.update_statuses([StatusUpdate(1, "sent", at=T0 + 5, attempts=1, last_reply="250 ok")])
    assert store.insert_messages([new_message(1), new_message(2)]) == 1  # spool recovery replay
    m = store.get_message(1)
    assert m is not None and m.status == "sent"


def test_invalid_rows_are_refused_not_ignored(store: Store) -> None:
    with pytest.raises(InvalidRow):
        store.insert_messages([new_message(1), new_message(2, status="lost")])
    assert store.get_message(1) is None  # the whole transaction rolled back


def test_update_statuses(store: Store) -> None:
    store.insert_messages([new_message(1), new_message(2)])
    n = store.update_statuses(
        [
            StatusUpdate(
                1, "deferred", at=T0 + 60, attempts=1, last_reply="451 try later", next_attempt_at=T0 + 120
            ),
            StatusUpdate(2, "sent", at=T0 + 61, attempts=1, last_reply="250 2.0.0 ok"),
            StatusUpdate(3, "sent", at=T0 + 62),  # unknown row: no-op, recovery re-derives it
        ]
    )
    assert n == 2
    m1 = store.get_message(1)
    assert m1 is not None
    assert (m1.status, m1.attempts, m1.last_reply, m1.next_attempt_at, m1.updated_at) == (
        "deferred", 1, "451 try later", T0 + 120, T0 + 60,
    )  # fmt: skip
    # None keeps attempts and last_reply; next_attempt_at is always written.
    store.update_statuses([StatusUpdate(1, "held", at=T0 + 70)])
    m1 = store.get_message(1)
    assert m1 is not None
    assert (m1.status, m1.attempts, m1.last_reply, m1.next_attempt_at) == ("held", 1, "451 try later", None)


def test_list_messages_filters_and_pages(store: Store) -> None:
    store.insert_messages([new_message(i, did=DID_A if i % 2 else DID_B) for i in range(1, 11)])
    store.update_statuses([StatusUpdate(i, "sent", at=T0 + 1) for i in (1, 2, 3)])
    assert [m.id for m in store.list_messages()] == list(range(10, 0, -1))
    assert [m.id for m in store.list_messages(did=DID_A)] == [9, 7, 5, 3, 1]
    assert [m.id for m in store.list_messages(status="sent")] == [3, 2, 1]
    assert [m.id for m in store.list_messages(DID_A, "sent")] == [3, 1]
    page1 = store.list_messages(limit=4)
    page2 = store.list_messages(limit=4, before_id=page1[-1].id)
    assert [m.id for m in page1] == [10, 9, 8, 7]
    assert [m.id for m in page2] == [6, 5, 4, 3]


def test_counts_by_status_lists_every_status(store: Store) -> None:
    assert store.counts_by_status() == {"accepted": 0, "deferred": 0, "sent": 0, "bounced": 0, "held": 0}
    store.insert_messages([new_message(i) for i in range(5)])
    store.update_statuses([StatusUpdate(0, "bounced", at=T0), StatusUpdate(1, "sent", at=T0)])
    assert store.counts_by_status() == {"accepted": 3, "deferred": 0, "sent": 1, "bounced": 1, "held": 0}


def test_attempts(store: Store) -> None:
    store.insert_messages([new_message(1)])
    store.add_attempts(
        [
            NewAttempt(1, at=T0 + 60, mx_host="mx1.dest.example", reply="451 4.7.1 greylisted", tls=True,
                       outcome="deferred"),
            NewAttempt(1, at=T0 + 360, mx_host="mx1.dest.example", reply="250 2.0.0 ok", tls=False,
                       outcome="sent"),
            NewAttempt(2, at=T0, mx_host=None, reply="no MX", tls=False, outcome="deferred"),
        ]
    )  # fmt: skip
    timeline = store.attempts_for(1)
    assert [(a.outcome, a.tls) for a in timeline] == [("deferred", True), ("sent", False)]
    assert timeline[0].id < timeline[1].id and timeline[0].message_id == 1
    assert store.attempts_for(2)[0].mx_host is None


def test_apply_batch_mixes_ops_in_one_transaction(store: Store) -> None:
    store.apply_batch(
        [
            new_message(1),
            StatusUpdate(1, "sent", at=T0 + 1, attempts=1, last_reply="250 ok"),
            NewAttempt(1, at=T0 + 1, mx_host="mx", reply="250 ok", tls=True, outcome="sent"),
            new_message(2),
        ]
    )
    m = store.get_message(1)
    assert m is not None and m.status == "sent"
    assert len(store.attempts_for(1)) == 1
    with pytest.raises(InvalidRow):
        store.apply_batch([new_message(3), StatusUpdate(2, "vanished", at=T0)])  # type: ignore[arg-type]
    assert store.get_message(3) is None


def test_purge_drops_old_terminal_rows_and_their_attempts(store: Store) -> None:
    now = T0 + MESSAGE_RETENTION + 1000
    store.insert_messages([new_message(i) for i in range(1, 6)])
    store.update_statuses(
        [
            StatusUpdate(1, "sent", at=T0 + 10),  # old, terminal: purged
            StatusUpdate(2, "bounced", at=T0 + 10),  # old, terminal: purged
            StatusUpdate(3, "sent", at=now - 10),  # recent: kept
            StatusUpdate(4, "deferred", at=T0 + 10),  # not terminal: kept
        ]
    )  # 5 stays 'accepted' (old but not terminal): kept
    store.add_attempts(
        [NewAttempt(i, at=T0, mx_host="mx", reply="x", tls=False, outcome="x") for i in (1, 3)]
    )
    assert store.purge(now) == 2
    assert [m.id for m in store.list_messages()] == [5, 4, 3]
    assert store.attempts_for(1) == [] and len(store.attempts_for(3)) == 1
    assert store.purge(now) == 0


# -- suppressions -----------------------------------------------------------------------------


def test_suppressions(store: Store, clock: FakeClock) -> None:
    assert store.add_suppression(DID_A, "User@Dest.Example", "unsubscribe") is True
    clock.advance(1)
    assert store.add_suppression(DID_A, "user@dest.example", "hard-bounce") is False  # first reason kept
    store.add_suppression(DID_A, "other@dest.example", "hard-bounce")
    assert store.is_suppressed(DID_A, "USER@dest.example")
    assert not store.is_suppressed(DID_B, "user@dest.example")  # per DID
    listed = store.list_suppressions(DID_A)
    assert [(s.recipient, s.reason) for s in listed] == [
        ("other@dest.example", "hard-bounce"),
        ("user@dest.example", "unsubscribe"),
    ]
    assert store.remove_suppression(DID_A, "user@DEST.example") is True
    assert store.remove_suppression(DID_A, "user@dest.example") is False
    assert not store.is_suppressed(DID_A, "user@dest.example")


# -- idempotency ------------------------------------------------------------------------------


def test_idempotency_accepts_an_explicit_time(store: Store) -> None:
    assert store.put_idempotent(DID_A, "k", "h", 200, "{}", 123.0)
    stored = store.get_idempotent(DID_A, "k")
    assert stored is not None and stored.created_at == 123.0


def test_idempotency_first_response_wins_and_purges(store: Store, clock: FakeClock) -> None:
    assert store.get_idempotent(DID_A, "k1") is None
    assert store.put_idempotent(DID_A, "k1", request_hash="h1", status_code=200, response_json='{"a":1}')
    assert not store.put_idempotent(DID_A, "k1", request_hash="h2", status_code=500, response_json="{}")
    stored = store.get_idempotent(DID_A, "k1")
    assert stored is not None
    assert (stored.request_hash, stored.status_code, stored.response_json, stored.created_at) == (
        "h1", 200, '{"a":1}', clock.now,
    )  # fmt: skip
    assert store.get_idempotent(DID_B, "k1") is None  # keys are per DID
    clock.advance(86400)
    store.put_idempotent(DID_A, "k2", request_hash="h", status_code=200, response_json="{}")
    assert store.purge_idempotent(older_than=clock.now - 3600) == 1
    assert store.get_idempotent(DID_A, "k1") is None
    assert store.get_idempotent(DID_A, "k2") is not None


def test_an_id_beyond_64_bit_integers_is_no_message(store: Store) -> None:
    """An id from a URL (``/v1/messages/99999999999999999999999``) is no row, not an OverflowError (a 500)."""
    assert store.get_message(10**23) is None and store.attempts_for(-(10**23)) == []
