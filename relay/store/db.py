"""What the store's queries need of a database: the one seam between them and a backend.

``relay.store.base.Store`` writes every query once, in the SQL that SQLite and PostgreSQL share
(``?`` placeholders, ``INSERT ... ON CONFLICT``, ``RETURNING``, ``IS [NOT] DISTINCT FROM``, upsert
right-hand sides qualified with the table name, since PostgreSQL finds a bare column ambiguous
beside ``excluded``). A ``Database`` runs it: relay.store.sqlite (stdlib sqlite3) and
relay.store.postgres (psycopg 3 with a connection pool), each translating what differs (placeholder
style, the DDL types of relay.store.migrations) and its driver's errors into the StoreError family.

Both keep SQLite's concurrency model, which the queries were written against: one writer at a time
(``write``), readers on committed data that never wait for it (``read``). A read-then-write in one
``write`` block (a cap checked, then counted) is therefore atomic across processes and machines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeAlias

Params: TypeAlias = Sequence[object]


class Row(Protocol):
    """A result row by column name (sqlite3.Row, psycopg's dict rows); ``dict(row)`` copies it."""

    def keys(self) -> Iterable[str]: ...
    def __getitem__(self, key: str, /) -> Any: ...


class Result(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> Sequence[Row]: ...


class Conn(Protocol):
    """A connection lent for one ``read`` or ``write`` block; SQL in the shared dialect."""

    def execute(self, sql: str, params: Params = ()) -> Result: ...
    def executemany(self, sql: str, params: Sequence[Params]) -> int:
        """Run ``sql`` once per parameter row; the rows affected, summed (0 for no rows)."""
        ...


class Database(Protocol):
    dialect: str  # "sqlite" or "postgresql"
    # How many store calls may run at once (relay.store.aio): 1 for one sqlite3 connection, the
    # pool's size for PostgreSQL.
    concurrency: int

    def write(self) -> AbstractContextManager[Conn]:
        """One write transaction: committed when the block ends, rolled back if it raises; writers
        are serialized (SQLite's write lock, a PostgreSQL advisory lock) and a writer waits at most
        the busy timeout for its turn, then StoreUnavailable."""
        ...

    def read(self) -> AbstractContextManager[Conn]:
        """Statements on committed data, outside any write transaction (autocommit)."""
        ...

    def has_table(self, name: str) -> bool: ...

    def ddl(self, statement: str) -> str:
        """One statement of relay.store.migrations (written for SQLite) in this backend's DDL."""
        ...

    def close(self) -> None: ...
