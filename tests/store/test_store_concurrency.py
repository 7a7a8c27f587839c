"""A second connection (the admin CLI, another thread, another node) while the relay's writer is active.

Run on both backends: SQLite's WAL file and PostgreSQL's advisory write lock must give the same
answers (relay.store.db: readers never wait, writers take turns, a writer waits at most busy_timeout).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from relay.store import StoreUnavailable, open_store
from relay.store.db import Database

from .conftest import DID_A, DID_B, Closer, Opener, database, new_message

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hold_write_lock(store_url: str) -> Iterator[tuple[ExitStack, Database]]:
    """An open write transaction with an uncommitted row, as the relay's writer mid-batch: close the
    ExitStack to commit it."""
    db = database(store_url)
    tx = ExitStack()
    yield tx, db
    tx.close()
    db.close()


def _begin(tx: ExitStack, db: Database) -> None:
    c = tx.enter_context(db.write())
    c.execute("INSERT INTO members (did, status, created_at, updated_at) VALUES (?, 'active', 0, 0)", (DID_B,))


def test_reader_is_not_blocked_by_an_open_write_transaction(
    open_backend: Opener, hold_write_lock: tuple[ExitStack, Database]
) -> None:
    relay = open_backend()
    relay.create_member(DID_A)
    _begin(*hold_write_lock)
    admin = open_backend(busy_timeout=0.2)
    started = time.monotonic()
    assert [m.did for m in admin.list_members()] == [DID_A]  # committed snapshot, uncommitted row unseen
    assert time.monotonic() - started < 0.2
    hold_write_lock[0].close()  # COMMIT
    assert sorted(m.did for m in admin.list_members()) == [DID_A, DID_B]


def test_second_writer_waits_for_the_lock_then_succeeds(
    open_backend: Opener, hold_write_lock: tuple[ExitStack, Database]
) -> None:
    open_backend().create_member(DID_A)
    _begin(*hold_write_lock)
    admin = open_backend()
    done = threading.Event()
    errors: list[BaseException] = []

    def admin_suspends() -> None:
        try:
            admin.set_member_status(DID_A, "suspended", "operator review")
        except BaseException as exc:
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=admin_suspends)
    thread.start()
    assert not done.wait(0.2), "a second writer must wait for the write lock"
    hold_write_lock[0].close()
    thread.join(5)
    assert errors == []
    member = open_backend().get_member(DID_A)
    assert member is not None and member.status == "suspended"


def test_lock_held_past_busy_timeout_is_store_unavailable(
    open_backend: Opener, hold_write_lock: tuple[ExitStack, Database]
) -> None:
    impatient = open_backend(busy_timeout=0.05)
    _begin(*hold_write_lock)
    with pytest.raises(StoreUnavailable, match="locked"):
        impatient.create_member(DID_A)


def test_another_process_writes_while_the_relay_store_is_open(
    store_url: str, open_backend: Opener, hold_write_lock: tuple[ExitStack, Database]
) -> None:
    relay = open_backend()
    relay.create_member(DID_A)
    relay.insert_messages([new_message(1)])
    script = (
        "import sys; from relay.store import open_store\n"
        "s = open_store(sys.argv[1])\n"
        "s.set_member_status(sys.argv[2], 'suspended', 'from the admin CLI')\n"
        "print(s.get_message(1).status)\n"
    )
    _begin(*hold_write_lock)  # the relay is mid-transaction when the CLI starts
    proc = subprocess.Popen(
        [sys.executable, "-c", script, store_url, DID_A], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.1)
    hold_write_lock[0].close()
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out.strip() == "accepted"
    member = relay.get_member(DID_A)
    assert member is not None and member.suspension_reason == "from the admin CLI"


def test_open_store_file_is_shared_between_connections(store_url: str, closer: Closer) -> None:
    a = closer(open_store(store_url))
    b = closer(open_store(store_url))
    a.create_member(DID_A, "a.example.com")
    found = b.get_member_by_handle("a.example.com")
    assert found is not None and found.did == DID_A


def test_a_daily_cap_holds_across_concurrent_writers(open_backend: Opener) -> None:
    """take_daily checks then counts in one write transaction: eight writers at once admit exactly 5."""
    # One store per writer: a SQLite store's connection is used by one thread at a time (AsyncStore
    # runs its calls in order), so the writers here are separate connections, as separate processes are.
    stores = [open_backend() for _ in range(8)]
    taken: list[bool] = []
    lock = threading.Lock()

    def take(i: int) -> None:
        ok = stores[i].take_daily("test", "key", 1, cap=5)
        with lock:
            taken.append(ok)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(taken) == [False] * 3 + [True] * 5
