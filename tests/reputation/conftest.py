from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from relay.store.aio import AsyncStore
from relay.store.sqlite import SqliteStore
from tests.peers.postgres import postgres_clean_url, postgres_migrated, postgres_server, postgres_url  # noqa: F401
from tests.store.conftest import backend, open_backend, store_url  # noqa: F401  (two nodes on either backend)

T0 = 1_699_999_200.0  # a whole hour (2023-11-14T22:00:00Z): domains are verified here, day 0 starts
DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
DID_B = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
DOMAIN = "mail.example.com"
DOMAIN_2 = "news.example.com"
DOMAIN_B = "b.example.org"


def trio_clock(start: float = T0) -> Callable[[], float]:
    """Wall time that follows trio's (mock) clock: ``start`` when the test begins."""
    offset = start - trio.current_time()
    return lambda: offset + trio.current_time()


def open_sync(path: Path) -> SqliteStore:
    return SqliteStore.open(str(path), clock=lambda: T0)


KEY_HASH = "stored-key-hash"  # what a session's Principal.key_hash must match (submission re-checks it)


def enroll(store: SqliteStore, did: str, *domains: str, handle: str | None = None) -> None:
    store.create_member(did, handle)
    store.set_api_key_hash(did, KEY_HASH)
    for domain in domains:
        store.add_domain(did, domain, selector="atmosabc", rsa_private=b"r", ed25519_private=b"e",
                         verify_token="tok", state="verified")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "relay.db"


@pytest.fixture
def sync_store(db_path: Path) -> Iterator[SqliteStore]:
    store = open_sync(db_path)
    enroll(store, DID, DOMAIN, DOMAIN_2, handle="alice.example.com")
    enroll(store, DID_B, DOMAIN_B)
    yield store
    store.close()


@pytest.fixture
def store(sync_store: SqliteStore) -> AsyncStore:
    return AsyncStore(sync_store)
