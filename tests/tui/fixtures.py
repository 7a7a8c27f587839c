"""Fixed data for the console tests: one snapshot of a small relay, frozen at NOW."""

from __future__ import annotations

from relay.events import (
    ComplaintReceived,
    Delivery,
    DomainWarming,
    Event,
    MessageAccepted,
    QueuedItem,
    Snapshot,
    SuspendedMember,
    Throughput,
)

NOW = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC
ALICE = "did:plc:alice2wqkz7vxq4lmb3n5pdy"
BOB = "did:plc:bob7hjw3y2kqzt6mxe4ffuvc"
SPAMMY = "did:plc:spam5rq8x3nzdc7wjq2hmkle"


def item(queue_id: int, rcpt_id: int, recipient: str, state: str = "accepted", *, attempts: int = 0,
         reply: str = "", did: str = ALICE, sender: str = "news@alice.example", age: float = 60.0,
         next_in: float | None = 0.0) -> QueuedItem:
    return QueuedItem(queue_id=queue_id, rcpt_id=rcpt_id, did=did, sender=sender, recipient=recipient,
                      domain=recipient.rpartition("@")[2], state=state, attempts=attempts,
                      next_attempt_at=None if next_in is None else NOW + next_in, last_reply=reply, arrival=NOW - age)


GREYLIST = "451 4.7.1 Greylisted, please try again in 300 seconds"
RATE = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"

QUEUE = (
    item(101, 1001, "carol@example.com"),
    item(101, 1002, "dave@example.net"),
    item(102, 1003, "erin@gmail.com", "deferred", attempts=2, reply=RATE, age=3600, next_in=540),
    item(103, 1004, "frank@outlook.com", "deferred", attempts=1, reply=GREYLIST, age=900, next_in=120),
    item(104, 1005, "grace@outlook.com", "deferred", attempts=3, reply=GREYLIST, age=7200, next_in=1500,
         did=BOB, sender="hello@bob.example"),
    item(105, 1006, "heidi@example.org", "held", attempts=1, reply="550 5.1.1 user unknown?", did=SPAMMY,
         sender="promo@spam.example", age=300, next_in=None),
)

SNAPSHOT = Snapshot(
    queue_by_state={"accepted": 2, "deferred": 3, "held": 1},
    queue_by_destination={"outlook.com": 2, "gmail.com": 1, "example.com": 1, "example.net": 1, "example.org": 1},
    oldest_deferred=NOW - 7200,
    in_flight=2,
    queue=QUEUE,
    warming=(
        DomainWarming(domain="alice.example", did=ALICE, day=3, tier="day 0-6", hourly_used=18, hourly_limit=20,
                      daily_used=40, daily_limit=100),
        DomainWarming(domain="bob.example", did=BOB, day=9, tier="day 7-13", hourly_used=12, hourly_limit=100,
                      daily_used=310, daily_limit=500),
        DomainWarming(domain="news.carol.example", did=BOB, day=45, tier="warm", hourly_used=250, hourly_limit=1000,
                      daily_used=2400, daily_limit=10000),
    ),
    suspended=(
        SuspendedMember(did=SPAMMY, handle="spam.example", reason="complaint rate 2.1% over 14 days",
                        since=NOW - 5400),
    ),
    paused_destinations=(),
    accepted_per_s=1.5,
    delivered_per_s=1.2,
)

RATES = (0.2, 0.5, 0.9, 1.4, 2.2, 3.1, 2.7, 1.9, 1.1, 0.8, 1.6, 2.4, 3.3, 2.9, 2.0, 1.2)


def script() -> list[tuple[Event, float]]:
    """The fixed session the snapshot tests show: a snapshot, some throughput, a few deliveries."""
    frames: list[tuple[Event, float]] = [(SNAPSHOT, NOW - 120)]
    for i, r in enumerate(RATES):
        frames.append((Throughput(accepted_per_s=r * 1.1, delivered_per_s=r, window=5.0), NOW - 100 + i * 5))
    frames += [
        (MessageAccepted(queue_id=106, rcpt_ids=(1007,), did=ALICE, sender="news@alice.example",
                         recipients=("ivan@example.com",), size=4210, source="smtp"), NOW - 20),
        (Delivery(queue_id=100, rcpt_id=1000, did=ALICE, recipient="judy@example.com", domain="example.com",
                  state="sent", attempts=1, mx_host="mx1.example.com", reply="250 2.0.0 Ok: queued as 4Xa1",
                  tls=True), NOW - 15),
        (Delivery(queue_id=103, rcpt_id=1004, did=ALICE, recipient="frank@outlook.com", domain="outlook.com",
                  state="deferred", attempts=2, mx_host="outlook-com.olc.protection.outlook.com",
                  reply=GREYLIST, tls=True, next_attempt_at=NOW + 600), NOW - 10),
        (Delivery(queue_id=99, rcpt_id=999, did=BOB, recipient="nobody@example.net", domain="example.net",
                  state="bounced", attempts=1, mx_host="mx.example.net", reply="550 5.1.1 user unknown",
                  tls=False), NOW - 5),
        (ComplaintReceived(did=SPAMMY, recipient="oscar@example.com", feedback_type="abuse"), NOW - 2),
    ]
    return frames
