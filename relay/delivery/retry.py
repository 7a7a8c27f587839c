"""The retry policy for outbound delivery, as a pure function (DESIGN §5).

Pure: no I/O, no clock, no randomness. The scheduler feeds in what happened to
one recipient on one attempt and gets back what to do next; the same inputs
always give the same answer (no jitter), so tests need no fake clock.

The schedule
------------
The public promise (seed docs, "Retries") reads: "Backoff: 1 minute, then 5,
15, 30, 60 minutes. Maximum 5 attempts before the message bounces back as a
DSN". We read "maximum 5 attempts" as five *retries* after the first attempt,
six attempts in all: the backoff list has five delays, and a delay only exists
between two attempts, so with five attempts in total the 60-minute delay would
never be used. With the default schedule ``(60, 300, 900, 1800, 3600)``::

    attempt 1 fails temporarily -> attempt 2 60 s later
    attempt 2 fails temporarily -> attempt 3 5 min later
    attempt 3 fails temporarily -> attempt 4 15 min later
    attempt 4 fails temporarily -> attempt 5 30 min later
    attempt 5 fails temporarily -> attempt 6 60 min later
    attempt 6 fails temporarily -> bounced (a DSN goes to the sender)

Each delay counts from the moment the failed attempt ended (``now``), not from
arrival, so a slow attempt never eats into the next wait. A permanent failure
bounces at once, whatever the attempt number (RFC 5321 §4.2.1: 5yz is a
"Permanent Negative Completion reply"; the client should not repeat the same
request).

An optional queue lifetime caps the whole thing: the next attempt is never
planned after ``arrival + max_lifetime``, and a temporary failure at or after
that moment bounces. By default there is no cap beyond the schedule itself.

Classifying replies
-------------------
Only the reply code decides (RFC 5321 §4.2: "the three digits contain enough
encoded information that the SMTP client need not examine the text"); the text
is kept verbatim for the member and for the DSN, never interpreted. The one
exception is 552 in answer to RCPT, which RFC 5321 §4.5.3.1.10 says is really
452 "too many recipients" ("Clients SHOULD treat a 552 code in this case as a
temporary, rather than permanent, failure"); a client cannot tell that case
from a full mailbox (552 5.2.2, itself a transient condition per RFC 3463
§3.3), so every 552 to RCPT is retried, as Postfix does. A 552 after the
message data (message too large, 5.3.4) stays permanent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from relay.smtp.reply import Reply

DEFAULT_SCHEDULE: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0)

DeliveryState = Literal["sent", "deferred", "bounced"]

# RFC 3463 §2: class "." subject "." detail, class in {2, 4, 5}.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z", re.ASCII)


class OutcomeKind(StrEnum):
    """What one delivery attempt for one recipient came to."""

    DELIVERED = "delivered"  # 2yz to the end of data (RFC 5321 §4.2.1)
    TEMPORARY = "temporary"  # 4yz reply: Transient Negative Completion
    PERMANENT = "permanent"  # 5yz reply: Permanent Negative Completion
    CONNECTION_FAILED = "connection_failed"  # refused, reset, unreachable: retried
    TIMEOUT = "timeout"  # RFC 5321 §4.5.3.2 timeouts: retried
    TLS_FAILED = "tls_failed"  # STARTTLS handshake failed: retried
    DNS_TEMPORARY = "dns_temporary"  # SERVFAIL, resolver timeout: retried
    DNS_PERMANENT = "dns_permanent"  # NXDOMAIN, null MX (RFC 7505): bounced at once

    @property
    def is_temporary(self) -> bool:
        return self in _TEMPORARY_KINDS

    @property
    def is_permanent(self) -> bool:
        return self in (OutcomeKind.PERMANENT, OutcomeKind.DNS_PERMANENT)


_TEMPORARY_KINDS = frozenset(
    {
        OutcomeKind.TEMPORARY,
        OutcomeKind.CONNECTION_FAILED,
        OutcomeKind.TIMEOUT,
        OutcomeKind.TLS_FAILED,
        OutcomeKind.DNS_TEMPORARY,
    }
)

# RFC 3463 status for outcomes that carry no enhanced code of their own.
_DEFAULT_STATUS: dict[OutcomeKind, str] = {
    OutcomeKind.DELIVERED: "2.0.0",
    OutcomeKind.TEMPORARY: "4.0.0",
    OutcomeKind.PERMANENT: "5.0.0",
    OutcomeKind.CONNECTION_FAILED: "4.4.1",  # X.4.1 No answer from host
    OutcomeKind.TIMEOUT: "4.4.2",  # X.4.2 Bad connection (time-out)
    OutcomeKind.TLS_FAILED: "4.7.5",  # X.7.5 Cryptographic failure
    OutcomeKind.DNS_TEMPORARY: "4.4.3",  # X.4.3 Directory server failure
    OutcomeKind.DNS_PERMANENT: "5.4.4",  # X.4.4 Unable to route
}


def classify_reply(code: int, enhanced: str | None, text: str, *, command: str | None = None) -> OutcomeKind:
    """Classify a final SMTP reply by its code (RFC 5321 §4.2.1).

    2yz -> DELIVERED (for RCPT/MAIL this only means "that step succeeded"),
    4yz (421, 450, 451, 452, ...) -> TEMPORARY, 5yz -> PERMANENT, except 552 to
    ``command="RCPT"``, which is TEMPORARY (RFC 5321 §4.5.3.1.10). A code
    outside 2yz/4yz/5yz where a final reply was due is a protocol error on the
    remote side, retried as TEMPORARY rather than held against the recipient.
    ``enhanced`` and ``text`` are accepted for the record but never change the
    answer (RFC 5321 §4.2: clients act on the code, not on the text).
    """
    del enhanced, text  # deliberately not interpreted; see the docstring
    if 200 <= code <= 299:
        return OutcomeKind.DELIVERED
    if 500 <= code <= 599:
        if code == 552 and command is not None and command.strip().upper() == "RCPT":
            return OutcomeKind.TEMPORARY  # RFC 5321 §4.5.3.1.10
        return OutcomeKind.PERMANENT
    return OutcomeKind.TEMPORARY


def reply_verbatim(reply: Reply) -> str:
    """The reply as one line, code first: ``550 5.1.1 <x@y>: user unknown``.

    The lines of a multi-line reply (RFC 5321 §4.2.1) are joined with spaces.
    """
    parts = [str(reply.code)]
    if reply.enhanced:
        parts.append(reply.enhanced)
    parts.extend(line for line in (reply.text, *reply.lines) if line)
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt at one recipient.

    ``text`` is the remote reply verbatim, code included (``"550 5.1.1 <x@y>:
    user unknown"``), or, when there was no reply, a short account of what went
    wrong (``"connection refused by 192.0.2.1:25"``). It goes unchanged into
    ``Decision.reason`` and the DSN's Diagnostic-Code. ``enhanced`` is the
    RFC 3463 code if the reply had one (RFC 2034), or one the caller chose for
    a local failure (``"5.1.10"`` for a null MX, RFC 7505 §4.2). ``code`` is the
    basic reply code when the remote answered.
    """

    kind: OutcomeKind
    text: str = ""
    enhanced: str | None = None
    code: int | None = None

    @classmethod
    def from_reply(cls, reply: Reply, *, command: str | None = None) -> Outcome:
        kind = classify_reply(reply.code, reply.enhanced, reply.text, command=command)
        return cls(kind, reply_verbatim(reply), reply.enhanced, reply.code)

    @property
    def status(self) -> str:
        """The RFC 3463 status code for this outcome, its class agreeing with ``kind``.

        A well-formed enhanced code is kept with its class digit set from the
        kind (a 552 5.2.2 to RCPT that we retry reads 4.2.2, as in Postfix);
        otherwise a default per kind (RFC 3463 §3.5: X.4.1, X.4.2, X.4.3, X.4.4;
        §3.8: X.7.5).
        """
        default = _DEFAULT_STATUS[self.kind]
        if self.enhanced is None or _STATUS.match(self.enhanced) is None:
            return default
        return default[0] + self.enhanced[1:]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep trying. ``schedule[i]`` is the wait after the (i+1)-th failed attempt."""

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    max_lifetime: float | None = None  # seconds after arrival; None: only the schedule limits

    def __post_init__(self) -> None:
        for delay in self.schedule:
            if not (math.isfinite(delay) and delay > 0):
                raise ValueError(f"retry delays must be positive and finite, got {delay!r}")
        if self.max_lifetime is not None and not (math.isfinite(self.max_lifetime) and self.max_lifetime > 0):
            raise ValueError(f"max_lifetime must be positive and finite, got {self.max_lifetime!r}")

    @property
    def max_attempts(self) -> int:
        """Attempts in all before a temporary failure turns into a bounce (6 by default)."""
        return len(self.schedule) + 1


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one recipient after an attempt.

    ``next_attempt_at`` is set only when ``state == "deferred"``. ``reason`` is
    a one-line account for the member (the remote's words included verbatim).
    ``status`` is the RFC 3463 code for the DSN's Status field; a bounce after
    retries ran out keeps the last temporary status (4.x.x), as Postfix does.
    """

    state: DeliveryState
    next_attempt_at: float | None
    reason: str
    status: str


def decide(
    outcome: Outcome,
    *,
    attempts: int,
    now: float,
    arrival: float,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> Decision:
    """Decide a recipient's fate after its ``attempts``-th attempt (counting this one) ended at ``now``.

    Deterministic: no jitter. For a run of temporary failures where each
    attempt starts no earlier than the ``next_attempt_at`` planned for it, the
    planned times strictly increase and the recipient bounces after at most
    ``policy.max_attempts`` attempts.
    """
    if attempts < 1:
        raise ValueError(f"attempts counts this attempt too, so it is at least 1, got {attempts}")
    if not (math.isfinite(now) and math.isfinite(arrival)):
        raise ValueError("now and arrival must be finite timestamps")
    what = outcome.text or outcome.kind.value.replace("_", " ")
    status = outcome.status

    if outcome.kind is OutcomeKind.DELIVERED:
        return Decision("sent", None, f"delivered: {what}", status)
    if outcome.kind.is_permanent:
        return Decision("bounced", None, f"permanent failure: {what}", status)

    if attempts > len(policy.schedule):
        return Decision("bounced", None, f"gave up after {attempts} attempts; last temporary failure: {what}", status)
    next_at = now + policy.schedule[attempts - 1]
    if policy.max_lifetime is not None:
        deadline = arrival + policy.max_lifetime
        if now >= deadline:
            reason = f"gave up: queued longer than {_duration(policy.max_lifetime)}; last temporary failure: {what}"
            return Decision("bounced", None, reason, status)
        next_at = min(next_at, deadline)
    reason = (
        f"temporary failure on attempt {attempts} of {policy.max_attempts}: {what}; "
        f"next attempt in {_duration(next_at - now)}"
    )
    return Decision("deferred", next_at, reason, status)


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour" + ("s" if hours != 1 else "")
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute" + ("s" if minutes != 1 else "")
    return f"{seconds:g} seconds"
