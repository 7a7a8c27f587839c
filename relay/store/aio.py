"""Async facade over the synchronous Store for the Trio relay, derived from it, not mirrored.

``call(fn, *args)`` runs any store operation in a worker thread: ``await store.call(Store.get_member,
did)``, or several reads in one hop with ``await store.call(lambda s: (s.get_member(d), s.domains_for(d)))``
(each hop costs the event loop a wake-up). The named methods below (``await store.get_member(did)``)
are that same call, bound once by ``_op`` to the Store method they name, so their signatures, defaults
and types are the Store's own: a new query needs no second definition, and ``store.call`` reaches
every one.

At most ``Store.concurrency`` calls run at once, under one ``CapacityLimiter``: 1 for SQLite, so its
single sqlite3 connection is used by exactly one thread at a time (trio may pick a different pooled
thread per call; serial use is what sqlite3 needs); the pool's size for PostgreSQL. The event loop
never blocks on the database. Calls are not abandoned on cancellation: a transaction always finishes
before the limiter is released.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio

from relay.store.base import Store

P = ParamSpec("P")
T = TypeVar("T")


def _op(fn: Callable[Concatenate[Store, P], T]) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, T]]:
    """``fn`` as an AsyncStore method: the same parameters, run through ``AsyncStore.call``."""

    async def method(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.call(fn, *args, **kwargs)

    functools.update_wrapper(method, fn)
    return method


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._limiter = trio.CapacityLimiter(store.concurrency)

    async def call(self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(store, *args, **kwargs)`` in a worker thread."""
        return await trio.to_thread.run_sync(functools.partial(fn, self._store, *args, **kwargs),
                                             limiter=self._limiter)

    async def aclose(self) -> None:
        await self.call(Store.close)

    schema_version = _op(Store.schema_version)

    # members
    create_member = _op(Store.create_member)
    get_member = _op(Store.get_member)
    get_member_by_handle = _op(Store.get_member_by_handle)
    list_members = _op(Store.list_members)
    set_member_status = _op(Store.set_member_status)

    # domains
    add_domain = _op(Store.add_domain)
    get_domain = _op(Store.get_domain)
    domains_for = _op(Store.domains_for)
    set_domain_state = _op(Store.set_domain_state)
    set_forward_to = _op(Store.set_forward_to)
    set_default_category = _op(Store.set_default_category)

    # API keys
    set_api_key_hash = _op(Store.set_api_key_hash)
    get_api_key_hash = _op(Store.get_api_key_hash)

    # messages and attempts
    insert_messages = _op(Store.insert_messages)
    update_statuses = _op(Store.update_statuses)
    add_attempts = _op(Store.add_attempts)
    apply_batch = _op(Store.apply_batch)
    get_message = _op(Store.get_message)
    list_messages = _op(Store.list_messages)
    counts_by_status = _op(Store.counts_by_status)
    attempts_for = _op(Store.attempts_for)

    # suppressions
    add_suppression = _op(Store.add_suppression)
    remove_suppression = _op(Store.remove_suppression)
    list_suppressions = _op(Store.list_suppressions)
    is_suppressed = _op(Store.is_suppressed)

    # webhooks
    set_webhook = _op(Store.set_webhook)
    get_webhook = _op(Store.get_webhook)
    delete_webhook = _op(Store.delete_webhook)
    list_webhooks = _op(Store.list_webhooks)

    spool_mark = _op(Store.spool_mark)

    # nodes (relay.cluster)
    register_node = _op(Store.register_node)
    node_heartbeat = _op(Store.node_heartbeat)
    list_nodes = _op(Store.list_nodes)
    take_lease = _op(Store.take_lease)
    release_lease = _op(Store.release_lease)
    lease_holder = _op(Store.lease_holder)
    add_node_command = _op(Store.add_node_command)
    pending_node_commands = _op(Store.pending_node_commands)
    finish_node_command = _op(Store.finish_node_command)
    get_node_command = _op(Store.get_node_command)

    # idempotency, retention
    get_idempotent = _op(Store.get_idempotent)
    put_idempotent = _op(Store.put_idempotent)
    purge_idempotent = _op(Store.purge_idempotent)
    claim_idempotent = _op(Store.claim_idempotent)
    release_idempotent = _op(Store.release_idempotent)
    purge = _op(Store.purge)

    # reputation counters
    add_counts = _op(Store.add_counts)
    send_counts_since = _op(Store.send_counts_since)
    reputation_counts_since = _op(Store.reputation_counts_since)
    member_totals = _op(Store.member_totals)
    member_standing = _op(Store.member_standing)
    message_counts_for = _op(Store.message_counts_for)
    suspended_members = _op(Store.suspended_members)
    purge_counters = _op(Store.purge_counters)

    # budget leases, change counters (issue 17: several nodes, one relay)
    lease_budget = _op(Store.lease_budget)
    report_leases = _op(Store.report_leases)
    lease_totals = _op(Store.lease_totals)
    change_seq = _op(Store.change_seq)

    # web sessions
    put_web_session = _op(Store.put_web_session)
    get_web_session = _op(Store.get_web_session)
    delete_web_session = _op(Store.delete_web_session)
    purge_web_sessions = _op(Store.purge_web_sessions)

    # TLS reports, MTA-STS policies, firehose cursors, labels
    add_tlsrpt_counts = _op(Store.add_tlsrpt_counts)
    tlsrpt_counts = _op(Store.tlsrpt_counts)
    claim_tlsrpt_report = _op(Store.claim_tlsrpt_report)
    add_tlsrpt_inbound = _op(Store.add_tlsrpt_inbound)
    list_tlsrpt_inbound = _op(Store.list_tlsrpt_inbound)
    purge_tlsrpt = _op(Store.purge_tlsrpt)
    put_sts_policy = _op(Store.put_sts_policy)
    sts_policies = _op(Store.sts_policies)
    purge_sts_policies = _op(Store.purge_sts_policies)
    get_firehose_cursor = _op(Store.get_firehose_cursor)
    set_firehose_cursor = _op(Store.set_firehose_cursor)
    add_labels = _op(Store.add_labels)
    labels_after = _op(Store.labels_after)
    query_labels = _op(Store.query_labels)
    label_seq_bounds = _op(Store.label_seq_bounds)
