"""AsyncStore: the same methods, run off the event loop, one at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from relay.store import DomainTaken
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.db import Conn
from relay.store.rows import StatusUpdate
from relay.store.sqlite import SqliteDatabase, connect

from .conftest import DID_A, DID_B, new_message


class SpyDatabase(SqliteDatabase):
    """Records the threads store calls run on and the most calls seen running at once."""

    def __init__(self) -> None:
        super().__init__(connect(":memory:"))
        self.threads: set[int] = set()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    @contextmanager
    def write(self) -> Iterator[Conn]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.threads.add(threading.get_ident())
        try:
            time.sleep(0.002)  # widen the window in which overlapping calls would show
            with super().write() as c:
                yield c
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.trio
async def test_async_methods_mirror_the_sync_store(sync_store: Store) -> None:
    store = AsyncStore(sync_store)
    await store.create_member(DID_A, "a.example.com")
    await store.add_domain(
        DID_A, "example.com", selector="atmosx", rsa_private=b"r", ed25519_private=b"e", verify_token="t"
    )
    assert [d.domain for d in await store.domains_for(DID_A)] == ["example.com"]
    member = await store.get_member_by_handle("A.example.com")
    assert member is not None and member.did == DID_A
    await store.insert_messages([new_message(1)])
    await store.update_statuses([StatusUpdate(1, "sent", at=1.0)])
    assert (await store.counts_by_status())["sent"] == 1
    assert [m.id for m in await store.list_messages(did=DID_A, status="sent")] == [1]
    assert await store.add_suppression(DID_A, "x@y.example", "unsubscribe")
    assert await store.is_suppressed(DID_A, "X@y.example")
    assert await store.put_idempotent(DID_A, "k", request_hash="h", status_code=200, response_json="{}")
    stored = await store.get_idempotent(DID_A, "k")
    assert stored is not None and stored.status_code == 200


@pytest.mark.trio
async def test_store_errors_propagate(sync_store: Store) -> None:
    store = AsyncStore(sync_store)
    await store.create_member(DID_A)
    await store.create_member(DID_B)
    kw = {"selector": "s", "rsa_private": b"r", "ed25519_private": b"e", "verify_token": "t"}
    await store.add_domain(DID_A, "example.com", state="verified", **kw)  # type: ignore[arg-type]
    with pytest.raises(DomainTaken):
        await store.add_domain(DID_B, "example.com", **kw)  # type: ignore[arg-type]


@pytest.mark.trio
async def test_calls_run_in_a_worker_thread_one_at_a_time() -> None:
    spy = SpyDatabase()
    store = AsyncStore(Store(spy))
    spy.threads.clear()  # the migrations ran here, at construction
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(store.create_member, f"did:plc:{i:024d}")
    assert len(await store.list_members()) == 20
    assert spy.max_running == 1
    assert threading.get_ident() not in spy.threads


@pytest.mark.trio
async def test_at_most_the_backends_concurrency_runs_at_once(sync_store: Store, backend: str) -> None:
    """One call at a time on SQLite's single connection; up to the pool's size on PostgreSQL."""
    store = AsyncStore(sync_store)
    running = peak = 0
    lock = threading.Lock()

    def slow_read(s: Store) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            s.list_members()
            time.sleep(0.05)
        finally:
            with lock:
                running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(store.call, slow_read)
    assert peak <= sync_store.concurrency
    assert (peak == 1) if backend == "sqlite" else (peak > 1)
