"""relay.webhooks.verify_signature: the helper members copy into their receivers."""

from __future__ import annotations

import hashlib
import hmac

from relay.webhooks import new_secret, sign, verify_signature

BODY = b'{"type":"delivered","id":"evt_1","created":1790000000,"data":{}}'
NOW = 1_790_000_000


def test_round_trip() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 43
    header = sign(secret, BODY, NOW)
    assert header.startswith(f"t={NOW},v1=")
    expected = hmac.new(secret.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify_signature(secret, header, BODY, now=NOW)
    assert verify_signature(secret, header, BODY.decode(), now=NOW + 299)


def test_tampering_is_refused() -> None:
    secret = new_secret()
    header = sign(secret, BODY, NOW)
    assert not verify_signature(secret, header, BODY.replace(b"delivered", b"bounced"), now=NOW)
    assert not verify_signature(new_secret(), header, BODY, now=NOW)
    forged_t = header.replace(f"t={NOW}", f"t={NOW + 1}")
    assert not verify_signature(secret, forged_t, BODY, now=NOW)
    assert not verify_signature(secret, f"t={NOW},v1=" + "0" * 64, BODY, now=NOW)
    for junk in ("", "garbage", f"t={NOW}", "v1=abc", f"t=x,v1={'0' * 64}"):
        assert not verify_signature(secret, junk, BODY, now=NOW)
    # several v1 entries (secret rotation): any valid one is enough
    assert verify_signature(secret, f"t={NOW},v1={'0' * 64},{header.split(',')[1]}", BODY, now=NOW)


def test_stale_timestamp_is_refused() -> None:
    secret = new_secret()
    header = sign(secret, BODY, NOW)
    assert not verify_signature(secret, header, BODY, now=NOW + 301)
    assert not verify_signature(secret, header, BODY, now=NOW - 301)  # from the future
    assert verify_signature(secret, header, BODY, tolerance=3600, now=NOW + 301)


def test_accepted_and_delivery_events_carry_tags_and_metadata() -> None:
    from relay.events import Delivery, MessageAccepted
    from relay.webhooks import to_webhook_events

    accepted = MessageAccepted(queue_id=1, rcpt_ids=(11,), did="did:plc:x", sender="a@x.org", recipients=("r@y.org",),
                               size=10, source="http", tags=("welcome",), metadata={"user_id": "42"})
    ((_, kind, data),) = to_webhook_events(accepted)
    assert kind == "accepted" and data["tags"] == ["welcome"] and data["metadata"] == {"user_id": "42"}
    delivery = Delivery(queue_id=1, rcpt_id=11, did="did:plc:x", recipient="r@y.org", domain="y.org", state="sent",
                        attempts=1, mx_host="mx", reply="250 ok", tls=True, tags=("welcome",), metadata={"k": "v"})
    ((_, kind, data),) = to_webhook_events(delivery)
    assert kind == "delivered" and data["tags"] == ["welcome"] and data["metadata"] == {"k": "v"}
