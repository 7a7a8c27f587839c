"""A second connection (the admin CLI, another thread) while the relay's writer is active (WAL)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from relay.store import StoreUnavailable, open_store
from relay.store.sqlite import SqliteStore

from .conftest import DID_A, DID_B, Closer, new_message

ROOT = Path(__file__).resolve().parents[2]


def _hold_write_lock(db_path: str) -> sqlite3.Connection:
    """An open write transaction with an uncommitted row, as the relay's writer mid-batch."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO members (did, status, created_at, updated_at) VALUES (?, 'active', 0, 0)", (DID_B,)
    )
    return conn


def test_reader_is_not_blocked_by_an_open_write_transaction(db_path: str, closer: Closer) -> None:
    relay = closer(SqliteStore.open(db_path))
    relay.create_member(DID_A)
    writer = closer(_hold_write_lock(db_path))
    admin = closer(SqliteStore.open(db_path, busy_timeout=0.2))
    started = time.monotonic()
    assert [m.did for m in admin.list_members()] == [DID_A]  # committed snapshot, uncommitted row unseen
    assert time.monotonic() - started < 0.2
    writer.execute("COMMIT")
    assert sorted(m.did for m in admin.list_members()) == [DID_A, DID_B]


def test_second_writer_waits_for_the_lock_then_succeeds(db_path: str, closer: Closer) -> None:
    closer(SqliteStore.open(db_path)).create_member(DID_A)
    writer = closer(_hold_write_lock(db_path))
    admin = closer(SqliteStore.open(db_path))
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
    writer.execute("COMMIT")
    thread.join(5)
    assert errors == []
    member = closer(SqliteStore.open(db_path)).get_member(DID_A)
    assert member is not None and member.status == "suspended"


def test_lock_held_past_busy_timeout_is_store_unavailable(db_path: str, closer: Closer) -> None:
    SqliteStore.open(db_path).close()
    writer = closer(_hold_write_lock(db_path))
    impatient = closer(SqliteStore.open(db_path, busy_timeout=0.05))
    with pytest.raises(StoreUnavailable, match="locked"):
        impatient.create_member(DID_A)
    writer.execute("ROLLBACK")


def test_another_process_writes_while_the_relay_store_is_open(db_path: str, closer: Closer) -> None:
    relay = closer(SqliteStore.open(db_path))
    relay.create_member(DID_A)
    relay.insert_messages([new_message(1)])
    script = (
        "import sys; from relay.store import open_store\n"
        "s = open_store('sqlite:///' + sys.argv[1])\n"
        "s.set_member_status(sys.argv[2], 'suspended', 'from the admin CLI')\n"
        "print(s.get_message(1).status)\n"
    )
    writer = closer(_hold_write_lock(db_path))  # the relay is mid-transaction when the CLI starts
    proc = subprocess.Popen(
        [sys.executable, "-c", script, db_path, DID_A], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.1)
    writer.execute("COMMIT")
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out.strip() == "accepted"
    member = relay.get_member(DID_A)
    assert member is not None and member.suspension_reason == "from the admin CLI"


def test_open_store_file_is_shared_between_connections(db_path: str, closer: Closer) -> None:
    a = closer(open_store(f"sqlite:///{db_path}"))
    b = closer(open_store(f"sqlite:///{db_path}"))
    a.create_member(DID_A, "a.example.com")
    found = b.get_member_by_handle("a.example.com")
    assert found is not None and found.did == DID_A
