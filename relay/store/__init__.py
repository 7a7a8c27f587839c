"""The relay's store: members, domains, keys, message status (DESIGN §4).

``open_store(url)`` returns a synchronous ``Store`` on SQLite or PostgreSQL (the
admin CLI uses it as is); the relay wraps it in ``relay.store.aio.AsyncStore`` and batches status
writes through ``relay.store.writer.StatusWriter``.
"""

from __future__ import annotations

import time

from relay.store.base import (
    MAX_DOMAINS_PER_DID,
    Clock,
    DomainLimitReached,
    DomainTaken,
    InvalidRow,
    NotFound,
    SchemaTooNew,
    Store,
    StoreError,
    StoreUnavailable,
    UnsupportedStore,
)
from relay.store.sqlite import SqliteStore

__all__ = [
    "MAX_DOMAINS_PER_DID",
    "DomainLimitReached",
    "DomainTaken",
    "InvalidRow",
    "NotFound",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnsupportedStore",
    "open_store",
]

_SQLITE = "sqlite:///"


def open_store(url: str, *, busy_timeout: float = 5.0, clock: Clock = time.time, pool_size: int = 4) -> Store:
    """Open (creating and migrating) the store named by ``url``.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``;
    ``postgresql://user:password@host:port/dbname`` (libpq's URI: any of its parameters may follow);
    ``pool_size``: PostgreSQL connections this process keeps (SQLite has one).
    """
    if url.startswith(_SQLITE):
        path = url[len(_SQLITE) :]
        if not path:
            raise UnsupportedStore(f"store URL {url!r} names no file")
        return SqliteStore.open(path, busy_timeout=busy_timeout, clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        from relay.store.postgres import PostgresStore  # psycopg is loaded only by those who use it

        return PostgresStore.open(url, busy_timeout=busy_timeout, clock=clock, pool_size=pool_size)
    raise UnsupportedStore(f"unsupported store URL {url!r} (expected sqlite:///path or postgresql://...)")
