from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from relay.store import open_store
from relay.store.base import Clock, Store
from relay.store.db import Database
from relay.store.postgres import PostgresDatabase
from relay.store.rows import Domain, MessageRow
from relay.store.sqlite import SqliteDatabase, connect
from tests.peers.postgres import postgres_clean_url, postgres_migrated, postgres_server, postgres_url  # noqa: F401

# Every test that takes ``store``, ``store_url`` or ``open_backend`` runs once per backend: the same
# queries must mean the same on both (relay.store.db).
BACKENDS = ("sqlite", "postgresql")

DID_A = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
DID_B = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"


class FakeClock:
    """A settable wall clock so stored times are predictable."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A migrated, empty store of this backend: a file, or the session's PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'relay.db'}"
    return str(request.getfixturevalue("postgres_clean_url"))


class Opener(Protocol):
    def __call__(self, *, clock: Clock = ..., busy_timeout: float = ...) -> Store: ...


@pytest.fixture
def open_backend(store_url: str) -> Iterator[Opener]:
    """Opens stores on the test's database (one per process or connection the test plays); closes them."""
    opened: list[Store] = []

    def opener(*, clock: Clock = time.time, busy_timeout: float = 5.0) -> Store:
        opened.append(open_store(store_url, clock=clock, busy_timeout=busy_timeout))
        return opened[-1]

    yield opener
    for s in reversed(opened):
        s.close()


@pytest.fixture
def store(clock: FakeClock, open_backend: Opener) -> Store:
    return open_backend(clock=clock)


@pytest.fixture
def sync_store(open_backend: Opener) -> Store:
    """A store on real time, for tests that name their AsyncStore ``store``."""
    return open_backend()


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class Closer(Protocol):
    def __call__(self, thing: C, /) -> C: ...


@pytest.fixture
def closer() -> Iterator[Closer]:
    """Registers connections and stores to close at teardown (no leaked sqlite handles)."""
    opened: list[Closable] = []

    def track(thing: C) -> C:
        opened.append(thing)
        return thing

    yield track
    for thing in reversed(opened):
        thing.close()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "relay.db")


def new_message(
    message_id: int, *, did: str = DID_A, at: float = 1_700_000_000.0, **kw: object
) -> MessageRow:
    fields: dict[str, object] = {
        "id": message_id,
        "queue_id": message_id // 10,
        "did": did,
        "from_domain": "example.com",
        "mail_from": "app@example.com",
        "recipient": f"user{message_id}@dest.example",
        "source": "smtp",
        "created_at": at,
        "updated_at": at,
        "subject": f"hello {message_id}",
    }
    fields.update(kw)
    return MessageRow(**fields)  # type: ignore[arg-type]


def add_domain(store: Store, did: str, domain: str, **kw: object) -> Domain:
    args: dict[str, object] = {
        "selector": "atmosabc123",
        "rsa_private": b"rsa-ciphertext",
        "ed25519_private": b"ed-ciphertext",
        "verify_token": "tok",
    }
    args.update(kw)
    return store.add_domain(did, domain, **args)  # type: ignore[arg-type]


@pytest.fixture
def fresh_url(backend: str, db_path: str, request: pytest.FixtureRequest) -> str:
    """An empty, never migrated database of this backend (migration tests)."""
    if backend == "sqlite":
        return f"sqlite:///{db_path}"
    return str(request.getfixturevalue("postgres_url"))


def database(url: str, *, busy_timeout: float = 5.0) -> Database:
    """A bare connection layer on ``url`` (no migrations): a second process or node, as the test plays it."""
    if url.startswith("sqlite:///"):
        return SqliteDatabase(connect(url.removeprefix("sqlite:///"), busy_timeout=busy_timeout))
    return PostgresDatabase(url, busy_timeout=busy_timeout, pool_size=1)
