"""The store interface every backend implements (one backend: SQLite; see UnsupportedStore).

Errors::

    StoreError
    ├── StoreUnavailable     database locked past busy_timeout, disk full, I/O error
    ├── UnsupportedStore     a store URL this build cannot open (postgresql://: the config accepts it,
    │                        no PostgreSQL backend exists)
    ├── SchemaTooNew         the database was migrated by a newer build
    ├── NotFound             a mutator named a row that does not exist (getters return None)
    ├── InvalidRow           a value broke a constraint (unknown status, ...)
    ├── DomainLimitReached   a DID already has MAX_DOMAINS_PER_DID domains
    └── DomainTaken          the domain is enrolled under another DID

The relay maps StoreUnavailable to ``451 4.4.2`` / 503 (relay.errors.QueueUnavailable).
Methods are synchronous; the relay uses them through relay.store.aio.AsyncStore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from relay.store.rows import (
    Attempt,
    DkimState,
    Domain,
    DomainState,
    IdempotentResponse,
    InboundTlsReport,
    LabelRow,
    Member,
    MemberStatus,
    MemberTotal,
    MessageRow,
    MessageStatus,
    NewAttempt,
    OutboxEvent,
    ReputationCount,
    SendCount,
    StatusUpdate,
    StsPolicyRow,
    Suppression,
    TlsRptCount,
    UnattributedReport,
    Webhook,
    WebSession,
    WriteOp,
)

__all__ = [
    "MAX_DOMAINS_PER_DID",
    "MESSAGE_RETENTION",
    "REPUTATION_RETENTION",
    "SEND_COUNTER_RETENTION",
    "Attempt",
    "DkimState",
    "Domain",
    "DomainLimitReached",
    "DomainState",
    "DomainTaken",
    "IdempotentResponse",
    "InvalidRow",
    "Member",
    "MemberStatus",
    "MemberTotal",
    "MessageRow",
    "MessageStatus",
    "NewAttempt",
    "NotFound",
    "ReputationCount",
    "SchemaTooNew",
    "SendCount",
    "StatusUpdate",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Suppression",
    "UnsupportedStore",
    "Webhook",
    "WriteOp",
]  # row types are re-exported: callers may take everything from relay.store.base

MAX_DOMAINS_PER_DID = 2
MESSAGE_RETENTION = 30 * 86400.0  # DESIGN §4: terminal message rows are kept 30 days
SEND_COUNTER_RETENTION = 48 * 3600  # DESIGN §4: rate counters 48 h
REPUTATION_RETENTION = 15 * 86400  # /member/deliverability shows 14 days (plus today's partial day)


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    pass


class UnsupportedStore(StoreError):
    pass


class SchemaTooNew(StoreError):
    pass


class NotFound(StoreError, LookupError):
    pass


class InvalidRow(StoreError, ValueError):
    pass


class DomainLimitReached(StoreError):
    def __init__(self, did: str, limit: int = MAX_DOMAINS_PER_DID) -> None:
        super().__init__(f"{did} already has {limit} domains (the maximum)")
        self.did = did
        self.limit = limit


class DomainTaken(StoreError):
    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain} is already enrolled by another member")
        self.domain = domain


class Store(Protocol):
    def close(self) -> None: ...
    def schema_version(self) -> int: ...

    # members
    def create_member(self, did: str, handle: str | None = None) -> Member: ...
    def get_member(self, did: str) -> Member | None: ...
    def get_member_by_handle(self, handle: str) -> Member | None: ...
    def list_members(self) -> list[Member]: ...
    def set_member_status(self, did: str, status: MemberStatus, reason: str | None = None) -> Member: ...

    # domains
    def add_domain(
        self,
        did: str,
        domain: str,
        *,
        selector: str,
        rsa_private: bytes,
        ed25519_private: bytes,
        verify_token: str,
        state: DomainState = "pending",
        claim_ttl: float | None = None,
    ) -> Domain: ...
    def get_domain(self, domain: str) -> Domain | None: ...
    def domains_for(self, did: str) -> list[Domain]: ...
    def set_domain_state(
        self, domain: str, state: DomainState | None = None, dkim_state: DkimState | None = None
    ) -> Domain: ...
    def set_forward_to(self, domain: str, forward_to: str | None) -> Domain: ...
    def set_default_category(self, domain: str, category: str) -> Domain: ...
    def confirm_forward_to(self, domain: str, forward_to: str, at: float) -> Domain | None: ...

    # abuse resistance
    def record_complaint(self, rcpt_id: int, did: str, recipient: str, feedback_type: str, source: str) -> bool: ...
    def add_unattributed(self, kind: str, peer: str, mail_from: str, reason: str, summary: str) -> int: ...
    def list_unattributed(self, limit: int = 100) -> list[UnattributedReport]: ...
    def take_daily(self, scope: str, key: str, day: int, cap: int) -> bool: ...

    # competing pending domain claims
    def promote_claim(self, domain: str, did: str) -> Domain: ...
    def release_domain(self, domain: str) -> int: ...
    def expire_claims(self, ttl: float) -> list[tuple[str, str]]: ...

    # API keys
    def set_api_key_hash(self, did: str, key_hash: str) -> None: ...
    def get_api_key_hash(self, did: str) -> str | None: ...

    # messages and attempts
    def insert_messages(self, rows: Sequence[MessageRow]) -> int: ...
    def update_statuses(self, updates: Sequence[StatusUpdate]) -> int: ...
    def add_attempts(self, rows: Sequence[NewAttempt]) -> None: ...
    def apply_batch(self, ops: Sequence[WriteOp]) -> None: ...
    def get_message(self, message_id: int) -> MessageRow | None: ...
    def list_messages(
        self,
        did: str | None = None,
        status: MessageStatus | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[MessageRow]: ...
    def counts_by_status(self) -> dict[MessageStatus, int]: ...
    def attempts_for(self, message_id: int) -> list[Attempt]: ...

    # suppressions
    def add_suppression(self, did: str, recipient: str, reason: str) -> bool: ...
    def remove_suppression(self, did: str, recipient: str) -> bool: ...
    def list_suppressions(self, did: str) -> list[Suppression]: ...
    def is_suppressed(self, did: str, recipient: str) -> bool: ...

    # webhooks (relay.webhooks): at most one endpoint per member
    def set_webhook(self, hook: Webhook) -> Webhook: ...
    def get_webhook(self, did: str) -> Webhook | None: ...
    def delete_webhook(self, did: str) -> bool: ...
    def list_webhooks(self) -> list[Webhook]: ...

    # the webhook outbox (relay.webhooks): events survive restarts until the endpoint took them
    def outbox_add(self, events: Sequence[OutboxEvent]) -> int: ...
    def outbox_members_due(self, now: float, limit: int = 1000) -> list[str]: ...
    def outbox_due(self, did: str, now: float, limit: int = 20) -> list[OutboxEvent]: ...
    def outbox_next_due(self) -> float | None: ...
    def outbox_done(self, event_id: str) -> None: ...
    def outbox_retry(self, event_id: str, attempts: int, next_attempt_at: float) -> None: ...
    def outbox_drop_member(self, did: str) -> int: ...

    # OAuth sign-ins in progress (relay.oauth.client): survive a restart between redirect and callback
    def put_oauth_pending(self, state: str, data: str, created_at: float) -> None: ...
    def take_oauth_pending(self, state: str) -> tuple[str, float] | None: ...
    def purge_oauth_pending(self, older_than: float) -> int: ...

    # the spool mirror (relay.store.mirror): how far apply_batch has caught up with the spool log
    def spool_mark(self) -> tuple[int, int] | None: ...

    # idempotency (HTTP Idempotency-Key, 24 h replay)
    def get_idempotent(self, did: str, key: str) -> IdempotentResponse | None: ...
    def put_idempotent(
        self,
        did: str,
        key: str,
        request_hash: str,
        status_code: int,
        response_json: str,
        created_at: float | None = None,
    ) -> bool: ...
    def purge_idempotent(self, older_than: float) -> int: ...

    # retention
    def purge(self, now: float) -> int: ...

    # reputation (relay.reputation): hourly aggregate counters, written as increments in batches
    def add_counts(
        self,
        sends: Sequence[SendCount] = (),
        events: Sequence[ReputationCount] = (),
        totals: Sequence[MemberTotal] = (),
    ) -> None: ...
    def send_counts_since(self, bucket_start: int) -> list[SendCount]: ...
    def reputation_counts_since(self, bucket_start: int, did: str | None = None) -> list[ReputationCount]: ...
    def member_totals(self, did: str) -> dict[str, int]: ...
    def message_counts_for(self, did: str) -> dict[MessageStatus, int]: ...
    def suspended_members(self) -> list[Member]: ...
    def purge_counters(self, now: float) -> int: ...

    # web sessions (web.session)
    def put_web_session(self, session: WebSession) -> None: ...
    def get_web_session(self, id_hash: str, now: float) -> WebSession | None: ...
    def delete_web_session(self, id_hash: str) -> bool: ...
    def purge_web_sessions(self, now: float) -> int: ...

    # labels (relay.labeler): append-only, seq ascending
    # -- TLS reports (RFC 8460, relay.delivery.tlsrpt) --
    def add_tlsrpt_counts(self, rows: Sequence[TlsRptCount]) -> None: ...
    def tlsrpt_counts(self, day: str) -> list[TlsRptCount]: ...
    def claim_tlsrpt_report(self, day: str, policy_domain: str, now: float) -> bool: ...
    def add_tlsrpt_inbound(self, report: InboundTlsReport) -> bool: ...
    def list_tlsrpt_inbound(self, limit: int) -> list[InboundTlsReport]: ...
    def purge_tlsrpt(self, before_day: str) -> int: ...

    def put_sts_policy(self, row: StsPolicyRow) -> None: ...
    def sts_policies(self, now: float, limit: int) -> list[StsPolicyRow]: ...
    def purge_sts_policies(self, now: float) -> int: ...
    def get_firehose_cursor(self, url: str) -> int | None: ...
    def set_firehose_cursor(self, url: str, cursor: int, now: float) -> None: ...

    def add_labels(self, labels: Sequence[LabelRow]) -> list[LabelRow]: ...
    def labels_after(self, cursor: int, limit: int) -> list[LabelRow]: ...
    def query_labels(
        self, uri_patterns: Sequence[str], sources: Sequence[str], cursor: int, limit: int
    ) -> list[LabelRow]: ...
    def label_seq_bounds(self) -> tuple[int, int]: ...
