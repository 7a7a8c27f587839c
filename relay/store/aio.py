"""Async facade over a synchronous Store for the Trio relay.

Every call runs in a worker thread under one ``CapacityLimiter(1)``, so the
single sqlite3 connection is used by exactly one thread at a time (trio may
pick a different pooled thread per call; serial use is what sqlite3 needs)
and the event loop never blocks on disk. Calls are not abandoned on
cancellation: a transaction always finishes before the limiter is released.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from relay.store.base import Store
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
    ReputationCount,
    SendCount,
    StatusUpdate,
    StsPolicyRow,
    Suppression,
    TlsRptCount,
    Webhook,
    WebSession,
    WriteOp,
)

T = TypeVar("T")


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._limiter = trio.CapacityLimiter(1)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Several reads in one worker-thread hop (each hop costs the event loop a wake-up)."""
        return await self._run(functools.partial(fn, self._store))

    async def aclose(self) -> None:
        await self._run(self._store.close)

    async def schema_version(self) -> int:
        return await self._run(self._store.schema_version)

    # members
    async def create_member(self, did: str, handle: str | None = None) -> Member:
        return await self._run(functools.partial(self._store.create_member, did, handle))

    async def get_member(self, did: str) -> Member | None:
        return await self._run(functools.partial(self._store.get_member, did))

    async def get_member_by_handle(self, handle: str) -> Member | None:
        return await self._run(functools.partial(self._store.get_member_by_handle, handle))

    async def list_members(self) -> list[Member]:
        return await self._run(self._store.list_members)

    async def set_member_status(self, did: str, status: MemberStatus, reason: str | None = None) -> Member:
        return await self._run(functools.partial(self._store.set_member_status, did, status, reason))

    # domains
    async def add_domain(
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
    ) -> Domain:
        fn = functools.partial(
            self._store.add_domain,
            did,
            domain,
            selector=selector,
            rsa_private=rsa_private,
            ed25519_private=ed25519_private,
            verify_token=verify_token,
            state=state,
            claim_ttl=claim_ttl,
        )
        return await self._run(fn)

    async def get_domain(self, domain: str) -> Domain | None:
        return await self._run(functools.partial(self._store.get_domain, domain))

    async def domains_for(self, did: str) -> list[Domain]:
        return await self._run(functools.partial(self._store.domains_for, did))

    async def set_domain_state(
        self, domain: str, state: DomainState | None = None, dkim_state: DkimState | None = None
    ) -> Domain:
        return await self._run(functools.partial(self._store.set_domain_state, domain, state, dkim_state))

    async def set_forward_to(self, domain: str, forward_to: str | None) -> Domain:
        return await self._run(functools.partial(self._store.set_forward_to, domain, forward_to))

    async def set_default_category(self, domain: str, category: str) -> Domain:
        return await self._run(functools.partial(self._store.set_default_category, domain, category))

    # API keys
    async def set_api_key_hash(self, did: str, key_hash: str) -> None:
        await self._run(functools.partial(self._store.set_api_key_hash, did, key_hash))

    async def get_api_key_hash(self, did: str) -> str | None:
        return await self._run(functools.partial(self._store.get_api_key_hash, did))

    # messages and attempts
    async def insert_messages(self, rows: Sequence[MessageRow]) -> int:
        return await self._run(functools.partial(self._store.insert_messages, rows))

    async def update_statuses(self, updates: Sequence[StatusUpdate]) -> int:
        return await self._run(functools.partial(self._store.update_statuses, updates))

    async def add_attempts(self, rows: Sequence[NewAttempt]) -> None:
        await self._run(functools.partial(self._store.add_attempts, rows))

    async def apply_batch(self, ops: Sequence[WriteOp]) -> None:
        await self._run(functools.partial(self._store.apply_batch, ops))

    async def get_message(self, message_id: int) -> MessageRow | None:
        return await self._run(functools.partial(self._store.get_message, message_id))

    async def list_messages(
        self,
        did: str | None = None,
        status: MessageStatus | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[MessageRow]:
        return await self._run(functools.partial(self._store.list_messages, did, status, limit, before_id))

    async def counts_by_status(self) -> dict[MessageStatus, int]:
        return await self._run(self._store.counts_by_status)

    async def attempts_for(self, message_id: int) -> list[Attempt]:
        return await self._run(functools.partial(self._store.attempts_for, message_id))

    # suppressions
    async def add_suppression(self, did: str, recipient: str, reason: str) -> bool:
        return await self._run(functools.partial(self._store.add_suppression, did, recipient, reason))

    async def remove_suppression(self, did: str, recipient: str) -> bool:
        return await self._run(functools.partial(self._store.remove_suppression, did, recipient))

    async def list_suppressions(self, did: str) -> list[Suppression]:
        return await self._run(functools.partial(self._store.list_suppressions, did))

    async def is_suppressed(self, did: str, recipient: str) -> bool:
        return await self._run(functools.partial(self._store.is_suppressed, did, recipient))

    # webhooks
    async def set_webhook(self, hook: Webhook) -> Webhook:
        return await self._run(functools.partial(self._store.set_webhook, hook))

    async def get_webhook(self, did: str) -> Webhook | None:
        return await self._run(functools.partial(self._store.get_webhook, did))

    async def delete_webhook(self, did: str) -> bool:
        return await self._run(functools.partial(self._store.delete_webhook, did))

    async def list_webhooks(self) -> list[Webhook]:
        return await self._run(self._store.list_webhooks)

    async def spool_mark(self) -> tuple[int, int] | None:
        return await self._run(self._store.spool_mark)

    # idempotency
    async def get_idempotent(self, did: str, key: str) -> IdempotentResponse | None:
        return await self._run(functools.partial(self._store.get_idempotent, did, key))

    async def put_idempotent(
        self,
        did: str,
        key: str,
        request_hash: str,
        status_code: int,
        response_json: str,
        created_at: float | None = None,
    ) -> bool:
        fn = functools.partial(
            self._store.put_idempotent, did, key, request_hash, status_code, response_json, created_at
        )
        return await self._run(fn)

    async def purge_idempotent(self, older_than: float) -> int:
        return await self._run(functools.partial(self._store.purge_idempotent, older_than))

    # retention
    async def purge(self, now: float) -> int:
        return await self._run(functools.partial(self._store.purge, now))

    # reputation counters
    async def add_counts(
        self,
        sends: Sequence[SendCount] = (),
        events: Sequence[ReputationCount] = (),
        totals: Sequence[MemberTotal] = (),
    ) -> None:
        await self._run(functools.partial(self._store.add_counts, sends, events, totals))

    async def send_counts_since(self, bucket_start: int) -> list[SendCount]:
        return await self._run(functools.partial(self._store.send_counts_since, bucket_start))

    async def reputation_counts_since(self, bucket_start: int, did: str | None = None) -> list[ReputationCount]:
        return await self._run(functools.partial(self._store.reputation_counts_since, bucket_start, did))

    async def member_totals(self, did: str) -> dict[str, int]:
        return await self._run(functools.partial(self._store.member_totals, did))

    async def message_counts_for(self, did: str) -> dict[MessageStatus, int]:
        return await self._run(functools.partial(self._store.message_counts_for, did))

    async def suspended_members(self) -> list[Member]:
        return await self._run(self._store.suspended_members)

    async def purge_counters(self, now: float) -> int:
        return await self._run(functools.partial(self._store.purge_counters, now))

    # web sessions
    async def put_web_session(self, session: WebSession) -> None:
        await self._run(functools.partial(self._store.put_web_session, session))

    async def get_web_session(self, id_hash: str, now: float) -> WebSession | None:
        return await self._run(functools.partial(self._store.get_web_session, id_hash, now))

    async def delete_web_session(self, id_hash: str) -> bool:
        return await self._run(functools.partial(self._store.delete_web_session, id_hash))

    async def purge_web_sessions(self, now: float) -> int:
        return await self._run(functools.partial(self._store.purge_web_sessions, now))

    # labels
    async def add_tlsrpt_counts(self, rows: Sequence[TlsRptCount]) -> None:
        await self._run(functools.partial(self._store.add_tlsrpt_counts, rows))

    async def tlsrpt_counts(self, day: str) -> list[TlsRptCount]:
        return await self._run(functools.partial(self._store.tlsrpt_counts, day))

    async def claim_tlsrpt_report(self, day: str, policy_domain: str, now: float) -> bool:
        return await self._run(functools.partial(self._store.claim_tlsrpt_report, day, policy_domain, now))

    async def add_tlsrpt_inbound(self, report: InboundTlsReport) -> bool:
        return await self._run(functools.partial(self._store.add_tlsrpt_inbound, report))

    async def list_tlsrpt_inbound(self, limit: int) -> list[InboundTlsReport]:
        return await self._run(functools.partial(self._store.list_tlsrpt_inbound, limit))

    async def purge_tlsrpt(self, before_day: str) -> int:
        return await self._run(functools.partial(self._store.purge_tlsrpt, before_day))

    async def put_sts_policy(self, row: StsPolicyRow) -> None:
        await self._run(functools.partial(self._store.put_sts_policy, row))

    async def sts_policies(self, now: float, limit: int) -> list[StsPolicyRow]:
        return await self._run(functools.partial(self._store.sts_policies, now, limit))

    async def purge_sts_policies(self, now: float) -> int:
        return await self._run(functools.partial(self._store.purge_sts_policies, now))

    async def get_firehose_cursor(self, url: str) -> int | None:
        return await self._run(functools.partial(self._store.get_firehose_cursor, url))

    async def set_firehose_cursor(self, url: str, cursor: int, now: float) -> None:
        await self._run(functools.partial(self._store.set_firehose_cursor, url, cursor, now))

    async def add_labels(self, labels: Sequence[LabelRow]) -> list[LabelRow]:
        return await self._run(functools.partial(self._store.add_labels, labels))

    async def labels_after(self, cursor: int, limit: int) -> list[LabelRow]:
        return await self._run(functools.partial(self._store.labels_after, cursor, limit))

    async def query_labels(
        self, uri_patterns: Sequence[str], sources: Sequence[str], cursor: int, limit: int
    ) -> list[LabelRow]:
        return await self._run(functools.partial(self._store.query_labels, uri_patterns, sources, cursor, limit))

    async def label_seq_bounds(self) -> tuple[int, int]:
        return await self._run(self._store.label_seq_bounds)
