"""The console's reducer (tui/state.py): pure, table-driven, no Textual."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from relay.events import (
    Command,
    CommandResult,
    ComplaintReceived,
    Delivery,
    DomainWarming,
    Event,
    Heartbeat,
    MemberSuspended,
    MemberUnsuspended,
    MessageAccepted,
    NodeInfo,
    Nodes,
    QueueChanged,
    QueueDepth,
    Snapshot,
    Throughput,
    TlsReportReceived,
    Warming,
    decode,
    encode,
)
from tests.tui.fixtures import ALICE, GREYLIST, NOW, SNAPSHOT, SPAMMY, item
from tui import state as st
from tui.state import State


def base() -> State:
    return State().apply(SNAPSHOT, NOW)


def delivery(rcpt_id: int, state: str, *, queue_id: int = 101, recipient: str = "carol@example.com",
             attempts: int = 1, reply: str = "250 ok", next_at: float | None = None) -> Delivery:
    return Delivery(queue_id=queue_id, rcpt_id=rcpt_id, did=ALICE, recipient=recipient,
                    domain=recipient.rpartition("@")[2], state=state, attempts=attempts, mx_host="mx.example.com",
                    reply=reply, tls=True, next_attempt_at=next_at)


@dataclass
class Case:
    name: str
    events: list[Event]
    check: Callable[[State], object]


CASES = [
    Case("snapshot fills everything", [],
         lambda s: (s.has_snapshot and len(s.queue) == 6 and s.queue_total == 6 and s.in_flight == 2
                    and len(s.warming) == 3 and [m.did for m in s.suspended] == [SPAMMY]
                    and s.delivered_history == (1.2,) and s.accepted_history == (1.5,))),
    Case("accepted message adds one row per recipient, counted in the gauges",
         [MessageAccepted(queue_id=200, rcpt_ids=(2001, 2002), did=ALICE, sender="a@alice.example",
                          recipients=("x@new.example", "y@NEW.example"), size=100, source="http")],
         lambda s: (s.queue[2001].state == "accepted" and s.queue[2002].domain == "new.example"
                    and s.queue[2001].arrival == NOW and s.queue_by_state["accepted"] == 4
                    and s.queue_by_destination["new.example"] == 2 and s.counters == {"accepted": 1}
                    and s.log[-1].kind == "accepted" and "2 recipients" in s.log[-1].detail)),
    Case("sent removes the row and moves the gauges",
         [delivery(1001, "sent")],
         lambda s: (1001 not in s.queue and s.queue_by_state["accepted"] == 1
                    and "example.com" not in s.queue_by_destination and s.counters == {"sent": 1}
                    and s.log[-1].kind == "sent" and s.log[-1].detail == "mx.example.com TLS: 250 ok")),
    Case("bounced removes the row and its timeline",
         [delivery(1003, "deferred", queue_id=102, recipient="erin@gmail.com", reply="451 later"),
          delivery(1003, "bounced", queue_id=102, recipient="erin@gmail.com", reply="550 no")],
         lambda s: (1003 not in s.queue and 1003 not in s.attempts
                    and s.counters == {"deferred": 1, "bounced": 1} and s.queue_by_state["deferred"] == 2)),
    Case("deferred updates the row in place and records the attempt",
         [delivery(1001, "deferred", attempts=1, reply="451 4.7.1 try later", next_at=NOW + 300)],
         lambda s: (s.queue[1001].state == "deferred" and s.queue[1001].attempts == 1
                    and s.queue[1001].next_attempt_at == NOW + 300 and s.queue[1001].sender == "news@alice.example"
                    and s.queue[1001].last_reply == "451 4.7.1 try later" and len(s.attempts[1001]) == 1
                    and s.queue_by_state == {"accepted": 1, "deferred": 4, "held": 1})),
    Case("a deferral for a recipient beyond the snapshot's list adds it, gauges untouched",
         [delivery(9999, "deferred", queue_id=999, recipient="z@far.example")],
         lambda s: s.queue[9999].state == "deferred" and s.queue_total == 6),
    Case("a final delivery for an unknown recipient leaves the gauges for QueueDepth",
         [delivery(9999, "sent", queue_id=999, recipient="z@far.example")],
         lambda s: s.queue_total == 6 and s.counters == {"sent": 1}),
    Case("hold marks every recipient of the message",
         [MessageAccepted(queue_id=101, rcpt_ids=(1009,), did=ALICE, sender="s@alice.example",
                          recipients=("k@example.com",), size=1, source="smtp"),
          QueueChanged(queue_id=101, action="hold", changed=3)],
         lambda s: ({i.state for i in s.messages_by_id(101)} == {"held"} and s.queue_by_state["held"] == 4
                    and s.log[-1].detail == "hold: 3 recipients")),
    Case("release makes held recipients accepted again, due now (the server's wire state)",
         [QueueChanged(queue_id=105, action="release", changed=1)],
         lambda s: s.queue[1006].state == "accepted" and s.queue[1006].next_attempt_at == NOW
         and s.queue_by_state["held"] == 0 and s.queue_by_state["accepted"] == 3),
    Case("release leaves recipients that were not held alone",
         [QueueChanged(queue_id=102, action="release", changed=0)],
         lambda s: s.queue[1003].state == "deferred" and s.queue[1003].next_attempt_at == NOW + 540),
    Case("retry makes deferred recipients due now",
         [QueueChanged(queue_id=102, action="retry", changed=1)],
         lambda s: s.queue[1003].next_attempt_at == NOW and s.queue[1003].state == "deferred"),
    Case("pause and resume a destination",
         [QueueChanged(queue_id=0, action="pause", changed=1, destination="Gmail.com"),
          QueueChanged(queue_id=0, action="pause", changed=1, destination="aol.com"),
          QueueChanged(queue_id=0, action="resume", changed=1, destination="aol.com")],
         lambda s: (s.paused_destinations == ("gmail.com",) and len(s.queue) == 6
                    and [e.detail for e in s.log] == ["delivery paused", "delivery paused", "delivery resumed"])),
    Case("delete removes the message's rows",
         [QueueChanged(queue_id=101, action="delete", changed=2)],
         lambda s: not s.messages_by_id(101) and s.queue_by_state["accepted"] == 0),
    Case("queue depth replaces the gauges",
         [QueueDepth(by_state={"deferred": 40}, by_destination={"gmail.com": 40}, in_flight=7, oldest_deferred=5.0)],
         lambda s: (s.queue_by_state == {"deferred": 40} and s.queue_total == 40 and s.in_flight == 7
                    and s.oldest_deferred == 5.0 and len(s.queue) == 6)),
    Case("warming replaces the domains",
         [Warming(domains=(DomainWarming("z.example", ALICE, 0, "day 0-6", 1, 20, 1, 50),))],
         lambda s: [w.domain for w in s.warming] == ["z.example"]),
    Case("suspension is added once, reason updated, since kept",
         [MemberSuspended(did=ALICE, reason="bounce rate", automatic=True),
          MemberSuspended(did=ALICE, reason="bounce rate 12%", automatic=False)],
         lambda s: ([m.did for m in s.suspended] == [SPAMMY, ALICE] and s.suspended[1].reason == "bounce rate 12%"
                    and s.log[-1].detail == "suspended by an operator: bounce rate 12%")),
    Case("unsuspension lifts", [MemberUnsuspended(did=SPAMMY)],
         lambda s: s.suspended == () and s.log[-1].kind == "unsuspended"),
    Case("complaint is counted and logged",
         [ComplaintReceived(did=SPAMMY, recipient=None, feedback_type="abuse")],
         lambda s: s.counters == {"complaints": 1} and s.log[-1].detail == "abuse from ?"),
    Case("a TLS report is counted and logged with its failures",
         [TlsReportReceived(organization="Big Mail", report_id="r1", policy_domain="relay.test", successes=40,
                            failures=2, failure_types="certificate-expired=2")],
         lambda s: s.counters == {"tls_reports": 1} and s.log[-1].kind == "tls-report"
         and s.log[-1].detail == "TLS to relay.test: 40 sessions ok, 2 failed (certificate-expired=2)"),
    Case("throughput appends to the history",
         [Throughput(accepted_per_s=3.0, delivered_per_s=2.0, window=5.0)],
         lambda s: s.delivered_history == (1.2, 2.0) and s.accepted_history == (1.5, 3.0) and s.delivered_per_s == 2),
    Case("nodes replace the node list (and survive the wire)",
         [decode(encode(Nodes(nodes=(NodeInfo("mx1-1", "running", True, 0.4, queue_messages=3),
                                     NodeInfo("mx1-2", "silent", False, 40.0)))))[0]],
         lambda s: [(n.node, n.state, n.jobs, n.queue_messages) for n in s.nodes]
         == [("mx1-1", "running", True, 3), ("mx1-2", "silent", False, 0)]),
    Case("heartbeat records dropped subscribers", [Heartbeat(dropped_subscribers=3)],
         lambda s: s.dropped_subscribers == 3 and s.last_heartbeat == NOW),
    Case("commands, results and unknown frames change nothing",
         [Command(id="1", action="hold", target="1"), CommandResult(id="1", ok=True, message="ok")],
         lambda s: s == base()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reducer(case: Case) -> None:
    s = base()
    before = s
    for ev in case.events:
        s = s.apply(ev, NOW)
    assert case.check(s), s
    assert before == base(), "apply must not mutate the previous state"


def test_unknown_event_is_ignored() -> None:
    s = base()
    assert s.apply(None, NOW + 1).queue is s.queue


def test_snapshot_replaces_server_state_but_keeps_the_consoles_memory() -> None:
    s = base().apply(delivery(1001, "sent"), NOW).apply(delivery(1003, "deferred", queue_id=102), NOW)
    again = s.apply(Snapshot(queue=(item(102, 1003, "erin@gmail.com", "deferred"),), in_flight=0), NOW + 60)
    assert list(again.queue) == [1003] and again.suspended == () and again.warming == ()
    assert again.counters == {"sent": 1, "deferred": 1}
    assert [e.kind for e in again.log] == ["sent", "deferred"]
    assert 1003 in again.attempts  # still queued: its timeline stays
    assert again.now == NOW + 60 and again.delivered_history == (1.2, 0.0)


@pytest.mark.parametrize(("limit", "events", "check"), [
    ("HISTORY", [Throughput(accepted_per_s=float(i), delivered_per_s=float(i), window=1) for i in range(100)],
     lambda s: len(s.delivered_history) == st.HISTORY and s.delivered_history[-1] == 99.0),
    ("LOG_LIMIT", [delivery(1, "sent") for _ in range(st.LOG_LIMIT + 50)],
     lambda s: len(s.log) == st.LOG_LIMIT and s.log[-1].seq == st.LOG_LIMIT + 50),
    ("ATTEMPT_LIMIT", [delivery(1001, "deferred", attempts=i) for i in range(st.ATTEMPT_LIMIT + 5)],
     lambda s: len(s.attempts[1001]) == st.ATTEMPT_LIMIT and s.attempts[1001][-1].state == "deferred"),
])
def test_memory_is_bounded(limit: str, events: list[Event], check: Callable[[State], bool]) -> None:
    s = base()
    for ev in events:
        s = s.apply(ev, NOW)
    assert check(s), limit


def test_queue_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "QUEUE_LIMIT", 8)
    s = base()
    for n in range(4):
        s = s.apply(MessageAccepted(queue_id=300 + n, rcpt_ids=(3000 + n,), did=ALICE, sender="s@a.example",
                                    recipients=(f"r{n}@x.example",), size=1, source="smtp"), NOW + n)
    assert len(s.queue) == 8
    assert 1005 not in s.queue and 1003 not in s.queue  # the two oldest arrivals went first
    assert 3003 in s.queue


@pytest.mark.parametrize(("query", "expected"), [
    ("", [1001, 1002, 1003, 1004, 1005, 1006]),
    ("outlook", [1004, 1005]),
    ("DEFERRED greylisted", [1004, 1005]),
    ("102", [1003]),
    ("did:plc:spam", [1006]),
    ("nothing-matches", []),
])
def test_queue_filter(query: str, expected: list[int]) -> None:
    assert [i.rcpt_id for i in base().queue_items(query)] == expected


def test_top_deferral_reasons_and_destinations() -> None:
    s = base()
    assert s.top_deferral_reasons(1) == [(GREYLIST, 2)]
    assert [r for r, _ in s.top_deferral_reasons()] == [GREYLIST, st._reason_key(s.queue[1003].last_reply)]
    assert s.top_destinations(2) == [("outlook.com", 2), ("example.com", 1)]


def test_log_since_filters_by_kind() -> None:
    s = base().apply(delivery(1001, "sent"), NOW).apply(ComplaintReceived(did=ALICE, recipient="x@y",
                                                                          feedback_type="abuse"), NOW)
    assert [e.kind for e in s.log_since(0, st.DELIVERY_KINDS)] == ["sent"]
    assert [e.kind for e in s.log_since(1)] == ["complaint"]


def test_events_survive_the_wire_before_the_reducer() -> None:
    """What the console applies is what ``decode`` builds from the server's ``encode``."""
    event, ts = decode(encode(SNAPSHOT, ts=NOW))
    assert ts == NOW and State().apply(event, ts) == base()
