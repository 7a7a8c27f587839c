"""SQLite implementation of the store (stdlib sqlite3).

Settings and why:
- WAL: readers never block the writer and vice versa, so ``atmos admin`` in
  another process can read and write while the server runs.
- ``synchronous=NORMAL``: in WAL mode a power cut can lose the last commits but
  never corrupts the file; acceptable because the spool (fsynced) is the source
  of truth for messages and status rows are re-derived from it at recovery.
- ``busy_timeout`` 5 s: a second process waits for the write lock instead of
  failing at once; past it, StoreUnavailable (the relay answers 451 4.4.2).
- Every write is ``BEGIN IMMEDIATE``: taking the write lock up front avoids the
  deferred-transaction upgrade that fails with SQLITE_BUSY without waiting.

The connection is opened with ``check_same_thread=False`` because AsyncStore
runs calls in a worker thread; it is only ever used by one thread at a time
(``concurrency`` 1). The queries live in relay.store.base; this module is the
sqlite3 side of relay.store.db.Database.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from relay.store.base import Clock, Store
from relay.store.db import Conn, Params, Result
from relay.store.errors import InvalidRow, StoreUnavailable


def connect(path: str, *, busy_timeout: float = 5.0) -> sqlite3.Connection:
    """Open and configure a database file (or ``:memory:``); SqliteStore.open also migrates it."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private(path)
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        _wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.DatabaseError):  # locked, not a database, unreadable
            raise StoreUnavailable(f"cannot open store {path}: {exc}") from exc
        raise
    return conn


def _wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """``PRAGMA journal_mode = WAL`` (persistent in the file; 'memory' for :memory:). Switching a fresh file
    needs an exclusive lock, and SQLite answers "database is locked" at once, without its busy handler,
    while another process is doing the same (several relays or `atmos admin` starting together): retry
    within the busy timeout."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _private(path: str) -> None:
    """Create the database file 0600 before SQLite first writes it (SQLite gives the -wal and -shm
    files the database file's mode), and tighten files an older version left readable."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        try:
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass


class SqliteDatabase:
    """One sqlite3 connection (relay.store.db.Database)."""

    dialect = "sqlite"
    concurrency = 1

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lent = _SqliteConn(conn)

    @contextmanager
    def write(self) -> Iterator[Conn]:
        with _errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._lent
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self) -> Iterator[Conn]:
        with _errors():
            yield self._lent

    def has_table(self, name: str) -> bool:
        with self.read() as c:
            return c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
                is not None

    def ddl(self, statement: str) -> str:
        return statement

    def close(self) -> None:
        self._conn.close()


class SqliteStore(Store):
    @classmethod
    def open(cls, path: str, *, busy_timeout: float = 5.0, clock: Clock = time.time) -> SqliteStore:
        """Open (creating and migrating) the database file ``path`` (or ``:memory:``)."""
        db = SqliteDatabase(connect(path, busy_timeout=busy_timeout))
        try:
            return cls(db, clock=clock)
        except BaseException as exc:
            db.close()
            if isinstance(exc, StoreUnavailable):
                raise StoreUnavailable(f"cannot open store {path}: {exc}") from exc
            raise


class _SqliteConn:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Result:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, params: Sequence[Params]) -> int:
        return self._conn.executemany(sql, params).rowcount if params else 0


@contextmanager
def _errors() -> Iterator[None]:
    """Translate sqlite3 errors into the backend-neutral StoreError family."""
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.DataError) as exc:
        raise InvalidRow(str(exc)) from exc
    except UnicodeEncodeError as exc:  # a str the driver cannot encode (a lone surrogate): that row is bad
        raise InvalidRow(f"text not encodable as UTF-8: {exc}") from exc
    except sqlite3.ProgrammingError:
        raise  # a bug in this module (closed connection, bad SQL), not an outage
    except sqlite3.DatabaseError as exc:  # OperationalError: locked, disk full, I/O error
        raise StoreUnavailable(f"store unavailable: {exc}") from exc
