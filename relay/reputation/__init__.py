"""Reputation: warming and rate limits, delivery outcomes, complaints, automatic suspension (DESIGN §6).

    policy       pure rate policy: tiers, windows, decisions, RateLimit-* headers
    limiter      RateLimiter: in-memory send counters, batched to the store, survive restarts
    suspension   pure suspension verdicts and bounce classes
    report       JSON shapes of /member/status and /member/deliverability
    service      Reputation: the facade the relay wires in (implements DeliveryEvents)
"""

from __future__ import annotations

from typing import Protocol

from relay.reputation.limiter import Grant, RateLimiter
from relay.reputation.policy import RateLimitExceeded
from relay.reputation.service import Reputation
from relay.reputation.suspension import BOUNCE_CLASSES, BounceClass, classify_status


class DeliveryEvents(Protocol):
    """What the delivery scheduler reports; synchronous and never blocking (work is queued inside).

    ``domain`` is the SENDING domain (the envelope sender's), not the recipient's; ``klass`` one of
    ``BOUNCE_CLASSES`` (``classify_status(enhanced_code)`` maps an RFC 3463 code). Relay-generated DSNs
    (null reverse-path) are not a member's sends and should not be reported.
    """

    def sent(self, did: str, domain: str, rcpt_id: int) -> None: ...

    def bounced(self, did: str, domain: str, rcpt_id: int, recipient: str, klass: str, diagnostic: str) -> None: ...


__all__ = [
    "BOUNCE_CLASSES",
    "BounceClass",
    "DeliveryEvents",
    "Grant",
    "RateLimitExceeded",
    "RateLimiter",
    "Reputation",
    "classify_status",
]
