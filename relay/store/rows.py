"""Typed rows of the store (DESIGN §4). Times are unix float seconds.

Rows (``Member``, ``Domain``, ``MessageRow``, ``Attempt``, ...) mirror one
table row each. ``MessageRow``, ``StatusUpdate`` and ``NewAttempt`` are also the
write ops (``WriteOp``) the relay hands to relay.store.writer.StatusWriter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

MemberStatus: TypeAlias = Literal["active", "suspended"]
DomainState: TypeAlias = Literal["pending", "verified"]
DkimState: TypeAlias = Literal["unverified", "verified"]
# 'held' is an operator hold (atmos admin queue hold); the others are DESIGN §5's statuses.
MessageStatus: TypeAlias = Literal["accepted", "deferred", "sent", "bounced", "held"]
Source: TypeAlias = Literal["smtp", "http"]
# Reputation counters (relay.reputation): hourly aggregates, not one row per event.
ReputationKind: TypeAlias = Literal["sent", "bounce", "complaint"]
TotalKind: TypeAlias = Literal["accepted", "sent", "bounce", "complaint"]

MESSAGE_STATUSES: tuple[MessageStatus, ...] = ("accepted", "deferred", "sent", "bounced", "held")
TERMINAL_STATUSES: tuple[MessageStatus, ...] = ("sent", "bounced")


@dataclass(frozen=True, slots=True)
class Member:
    did: str
    handle: str | None = None
    status: MemberStatus = "active"
    suspension_reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Domain:
    domain: str
    did: str
    selector: str  # base selector: DNS names are <selector>r / <selector>e
    # Encrypted (relay.mail.dkimkeys.SecretBox); kept out of repr so logs never carry key material.
    rsa_private: bytes = field(default=b"", repr=False)
    ed25519_private: bytes = field(default=b"", repr=False)
    verify_token: str = ""
    state: DomainState = "pending"
    dkim_state: DkimState = "unverified"
    forward_to: str | None = None
    created_at: float = 0.0
    verified_at: float | None = None  # first successful ownership check; kept across re-checks
    default_category: str = ""  # X-Atmos-Category for mail from this domain that names none
    forward_confirmed_at: float | None = None  # forward_to proved by the link mailed to it; None: replies refused
    claim: bool = False  # a competing pending claim (domain_claims), not the domain's own row


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRow:
    """One recipient of an accepted message (inserted by the accept path, read back by the API).

    ``id`` is the spool's recipient id, ``queue_id`` the spool's message id.
    Spool recovery re-inserts rows with their current state, hence status and
    counters are part of the insert.
    """

    id: int
    queue_id: int
    did: str
    from_domain: str
    mail_from: str
    recipient: str
    source: Source
    created_at: float
    updated_at: float
    subject: str | None = None
    category: str | None = None
    status: MessageStatus = "accepted"
    attempts: int = 0
    last_reply: str | None = None
    next_attempt_at: float | None = None
    tags: str = ""  # JSON array of the sender's tags (/v1/send), "" when none
    metadata: str = ""  # JSON object of the sender's metadata, "" when none


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """New status of one recipient row.

    ``attempts`` and ``last_reply`` left as None keep the stored value;
    ``next_attempt_at`` is always written (None once nothing is scheduled).
    Values are absolute, not increments, so replaying an update is harmless.
    """

    id: int
    status: MessageStatus
    at: float
    attempts: int | None = None
    last_reply: str | None = None
    next_attempt_at: float | None = None


@dataclass(frozen=True, slots=True)
class NewAttempt:
    message_id: int
    at: float
    mx_host: str | None  # None when no host was reached (DNS failure, null MX)
    reply: str
    tls: bool
    outcome: str  # 'sent' | 'deferred' | 'bounced' (free text kept for later kinds)


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    message_id: int
    at: float
    mx_host: str | None
    reply: str
    tls: bool
    outcome: str


@dataclass(frozen=True, slots=True)
class Suppression:
    did: str
    recipient: str
    reason: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Webhook:
    """A member's webhook endpoint (relay.members.webhooks); ``events`` are the event types it receives."""

    did: str
    url: str
    secret: str = field(repr=False)  # signs the POSTs; kept out of repr so logs never carry it
    events: tuple[str, ...]
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class IdempotentResponse:
    did: str
    key: str
    request_hash: str
    status_code: int
    response_json: str
    created_at: float


@dataclass(frozen=True, slots=True)
class SendCount:
    """Recipients accepted from ``did`` on ``domain`` in the hour starting at ``bucket_start``.

    As a write it is an increment (negative: a refund after a failed accept).
    """

    did: str
    domain: str
    bucket_start: int  # unix seconds, a multiple of 3600
    count: int


@dataclass(frozen=True, slots=True)
class ReputationCount:
    """Delivery outcomes per member, sending domain, hour, kind and class (an increment as a write).

    ``klass`` is the bounce class (hard, soft, policy, mailbox-full) for bounces, the ARF
    feedback type for complaints, and '' for sent.
    """

    did: str
    domain: str
    bucket_start: int
    kind: ReputationKind
    klass: str
    count: int


@dataclass(frozen=True, slots=True)
class MemberTotal:
    """Lifetime counter of one kind for a member (an increment as a write)."""

    did: str
    kind: TotalKind
    count: int



@dataclass(frozen=True, slots=True)
class WebSession:
    """A member-pages session (web.session); ``did`` is None until the OAuth sign-in completes."""

    id_hash: str
    csrf: str
    created_at: float
    expires_at: float
    did: str | None = None
    handle: str | None = None
    data: str = "{}"  # JSON: the pending sign-in's state, the domain being enrolled

@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A webhook event waiting in the store until the member's endpoint takes it (relay.members.webhooks).

    ``id`` is the event's stable id (also in ``body``): the same fact always gets the same id, so a
    receiver can de-duplicate, and adding it twice keeps one row.
    """

    id: str
    did: str
    body: str
    next_attempt_at: float
    created_at: float
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class SpoolMark:
    """How far the store has caught up with the spool log (relay.store.mirror): (segment, offset)."""

    segment: int
    offset: int
    at: float
    node: int = 1  # whose spool (relay.cluster: each node has its own)


# IdempotentResponse as a write: inserted if absent (the first response for a key wins).
# ReputationCount / MemberTotal as writes are increments (relay.store.mirror: a delivery outcome).
WriteOp: TypeAlias = (MessageRow | StatusUpdate | NewAttempt | IdempotentResponse | ReputationCount | MemberTotal
                      | SpoolMark)


@dataclass(frozen=True, slots=True)
class LabelRow:
    """A signed atproto label (relay.labeler); ``seq`` is assigned by the store (0 before insert)."""

    src: str
    uri: str
    val: str
    neg: bool
    cts: str
    sig: bytes
    exp: str | None = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class UnattributedReport:
    """A complaint or bounce the relay could not tie to a message it sent: the operator's to read."""

    id: int
    kind: str  # arf | dsn
    peer: str  # the SMTP client's address
    mail_from: str
    reason: str  # why it was not attributed (untrusted source, no VERP address, forged tag, ...)
    summary: str  # feedback type, reported Message-ID, ... (bounded)
    received_at: float


@dataclass(frozen=True, slots=True)
class TlsRptCount:
    """TLS sessions counted for one TLS report line (RFC 8460 §4.4): a policy, an MX host and an outcome
    (``result_type`` "" for successes). ``day`` is the UTC date, YYYY-MM-DD."""

    day: str
    policy_domain: str
    policy_type: str  # sts | tlsa | no-policy-found
    policy_strings: tuple[str, ...]
    mx_patterns: tuple[str, ...]
    mx_host: str
    result_type: str
    receiving_ip: str
    sessions: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InboundTlsReport:
    """A TLS report (RFC 8460) another sender sent about the operator domain."""

    organization: str
    report_id: str
    policy_domain: str
    start: str
    end: str
    successes: int
    failures: int
    received_at: float
    failure_types: str = ""  # "type=count, ..."
    report: str = ""  # the JSON, as received (bounded)
    id: int = 0


@dataclass(frozen=True, slots=True)
class StsPolicyRow:
    """An MTA-STS policy as fetched (relay.delivery.mtasts parses ``policy`` again when loading it)."""

    domain: str
    sts_id: str
    policy: str
    fetched_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One relay process in the registry (relay.cluster): ``number`` is its queue-id space and spool mark."""

    number: int
    name: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    stats: str = "{}"  # JSON: what the node last reported of itself (queue depth, counters)


@dataclass(frozen=True, slots=True)
class NodeCommand:
    """An operator action for the node that owns its target (relay.cluster.commands)."""

    id: int
    node: int
    action: str
    target: str
    created_at: float
    done_at: float | None = None
    ok: bool | None = None
    result: str | None = None


# Budget leases behind the rate caps (relay.reputation.limiter, issue 17). A scope is one window family:
# the relay's minute, a sending domain's hours, a member's hours.
LeaseScope: TypeAlias = Literal["relay", "domain", "member"]


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """Lease ``need`` or more units of ``(scope, subject)`` in ``bucket`` for one holder.

    ``caps``: (first bucket, limit) of each window of the scope; the window counts the buckets from its
    first to ``bucket``. ``used``: what the holder has spent of its lease on that bucket so far (its lease
    is first handed back down to that, then the new one granted on top).
    """

    scope: LeaseScope
    subject: str
    bucket: int
    caps: tuple[tuple[int, int], ...]
    used: int
    need: int


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """What ``Store.lease_budget`` answered for one ask: ``units`` leased (0 when refused: then nothing of
    the whole request was), and the scope's counted units per bucket after it (every holder's)."""

    scope: LeaseScope
    subject: str
    bucket: int
    units: int
    expires_at: float
    totals: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaseReport:
    """A holder's spent units on one lease; ``keep`` renews it, else its unused units go back."""

    scope: LeaseScope
    subject: str
    bucket: int
    used: int
    keep: bool


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """``Store.claim_idempotent``: ``state`` 'stored' (``response`` is the stored answer), 'mine' (the caller
    holds the claim and sends), or 'busy' (another holder's live claim; ``request_hash`` is its body's)."""

    state: Literal["stored", "mine", "busy"]
    response: IdempotentResponse | None = None
    request_hash: str = ""
