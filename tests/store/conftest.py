from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from relay.store.rows import Domain, MessageRow
from relay.store.sqlite import SqliteStore

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


@pytest.fixture
def store(clock: FakeClock) -> Iterator[SqliteStore]:
    with SqliteStore.open(":memory:", clock=clock) as s:
        yield s


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


def add_domain(store: SqliteStore, did: str, domain: str, **kw: object) -> Domain:
    args: dict[str, object] = {
        "selector": "atmosabc123",
        "rsa_private": b"rsa-ciphertext",
        "ed25519_private": b"ed-ciphertext",
        "verify_token": "tok",
    }
    args.update(kw)
    return store.add_domain(did, domain, **args)  # type: ignore[arg-type]
