"""PostgreSQL implementation of relay.store.db.Database (psycopg 3, psycopg_pool).

For several relay nodes, on one machine or many, sharing one store (issue 17). The queries are
relay.store.base's, unchanged; this module translates what differs:
- placeholders: the shared SQL writes ``?``, psycopg wants ``%s`` (and a literal ``%`` doubled);
- DDL: relay.store.migrations is written for SQLite, in a subset translated word by word (``_ddl``);
- errors: psycopg's into the StoreError family (an unreachable server, a full pool, a lock wait past
  the busy timeout: StoreUnavailable, answered ``451 4.4.2`` like a locked SQLite file).

Concurrency, the same as SQLite's so every query means the same on both: readers use committed data
in autocommit mode and never wait; every write transaction first takes one transaction-scoped
advisory lock (``pg_advisory_xact_lock``), so writers run one at a time across all nodes, as
SQLite's ``BEGIN IMMEDIATE`` makes them on one machine. Under READ COMMITTED a statement sees every
transaction committed before it started, and with the lock held that is every earlier writer: a
cap checked then counted in one ``write`` block (``take_daily``, ``add_domain``'s domain limit) is
atomic across nodes. ``lock_timeout`` is the busy timeout: past it, StoreUnavailable.

The pool's connections are opened at start (``min_size``) and replaced when the server drops them;
a call that finds none free within the busy timeout is StoreUnavailable, not a hang.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

import psycopg
import psycopg.errors
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from relay.store.base import Clock, Store
from relay.store.db import Conn, Params, Result
from relay.store.errors import InvalidRow, StoreUnavailable

# The key of the one write lock (pg_advisory_xact_lock); any constant that no other tenant of the
# same database uses: "atmos" in ASCII.
WRITE_LOCK = 0x61746D6F73
DEFAULT_POOL_SIZE = 4


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, url: str, *, busy_timeout: float = 5.0, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.concurrency = pool_size
        self._pool = ConnectionPool(
            url,
            connection_class=psycopg.Connection[DictRow],
            min_size=1,
            max_size=pool_size,
            timeout=busy_timeout,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "options": f"-c lock_timeout={max(1, int(busy_timeout * 1000))}",
                "connect_timeout": max(1, round(busy_timeout)),
            },
            name="relay-store",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=max(busy_timeout, 1.0))
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot open store {redact(url)}: no connection within {busy_timeout:g} s") \
                from exc

    @contextmanager
    def write(self) -> Iterator[Conn]:
        with _errors(), self._pool.connection() as pg, pg.transaction():
            pg.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield _PgConn(pg)

    @contextmanager
    def read(self) -> Iterator[Conn]:
        with _errors(), self._pool.connection() as pg:
            yield _PgConn(pg)

    def has_table(self, name: str) -> bool:
        with self.read() as c:
            row = c.execute("SELECT to_regclass(?) IS NOT NULL AS present", (name,)).fetchone()
            return bool(row is not None and row["present"])

    def ddl(self, statement: str) -> str:
        return _ddl(statement)

    def close(self) -> None:
        self._pool.close()


class PostgresStore(Store):
    @classmethod
    def open(
        cls, url: str, *, busy_timeout: float = 5.0, clock: Clock = time.time, pool_size: int = DEFAULT_POOL_SIZE
    ) -> PostgresStore:
        """Connect to ``postgresql://...`` and migrate the database (the role needs CREATE on it)."""
        db = PostgresDatabase(url, busy_timeout=busy_timeout, pool_size=pool_size)
        try:
            return cls(db, clock=clock)
        except BaseException:
            db.close()
            raise


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class _PgConn:
    def __init__(self, pg: psycopg.Connection[DictRow]) -> None:
        self._pg = pg

    def execute(self, sql: str, params: Params = ()) -> Result:
        return self._pg.execute(_placeholders(sql), params)

    def executemany(self, sql: str, params: Sequence[Params]) -> int:
        if not params:
            return 0
        with self._pg.cursor() as cur:
            cur.executemany(_placeholders(sql), params)
            return cur.rowcount  # summed over the rows (psycopg >= 3.1)


_TOKENS = re.compile(r"'[^']*'|\"[^\"]*\"|--[^\n]*|[?%]")


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` -> ``%s`` and ``%`` -> ``%%``, outside string literals, quoted names and comments."""

    def swap(m: re.Match[str]) -> str:
        token = m.group(0)
        return "%s" if token == "?" else "%%" if token == "%" else token

    return _TOKENS.sub(swap, sql)


# relay.store.migrations' SQLite DDL, word by word. INTEGER PRIMARY KEY is SQLite's rowid alias,
# numbered when an INSERT leaves it out, as an identity column is; AUTOINCREMENT (never reuse a
# number) is what identity columns do anyway. NOCASE: the store lower-cases the handles it stores
# and looks up.
_DDL = [
    (re.compile(r"\bINTEGER PRIMARY KEY( AUTOINCREMENT)?\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\s+COLLATE NOCASE\b"), ""),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
]


def _ddl(statement: str) -> str:
    for pattern, replacement in _DDL:
        statement = pattern.sub(replacement, statement)
    return statement


@contextmanager
def _errors() -> Iterator[None]:
    """Translate psycopg errors into the backend-neutral StoreError family."""
    try:
        yield
    except (psycopg.IntegrityError, psycopg.DataError) as exc:
        raise InvalidRow(str(exc)) from exc
    except UnicodeEncodeError as exc:  # a str the driver cannot encode (a lone surrogate): that row is bad
        raise InvalidRow(f"text not encodable as UTF-8: {exc}") from exc
    except psycopg.errors.LockNotAvailable as exc:  # the write lock waited for past lock_timeout
        raise StoreUnavailable(f"store unavailable: database is locked ({exc})") from exc
    except (psycopg.ProgrammingError, psycopg.NotSupportedError):
        raise  # a bug in the SQL, not an outage
    except PoolTimeout as exc:
        raise StoreUnavailable(f"store unavailable: no free connection ({exc})") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.DatabaseError) as exc:
        raise StoreUnavailable(f"store unavailable: {exc}") from exc
