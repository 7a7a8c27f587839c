"""API keys: format, bcrypt at rest, the in-memory success cache (DESIGN §4)."""

from __future__ import annotations

import base64
import re
import threading
import time

import pytest
import trio

import relay.members.apikey
from relay.members.apikey import ApiKeyCache, check_api_key, generate_api_key, hash_api_key

DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
COST = 4  # the minimum bcrypt cost keeps tests fast


@pytest.fixture(scope="module")
def key_and_hash() -> tuple[str, str]:
    key = generate_api_key()
    return key, hash_api_key(key, cost=COST)


class CountingCheck:
    """Stands in for relay.members.apikey.check_api_key; counts bcrypt runs and their threads."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.running = 0
        self.max_running = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, key: str, hashed: str) -> bool:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.threads.add(threading.get_ident())
        try:
            time.sleep(self.delay)
            return check_api_key(key, hashed)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingCheck:
    spy = CountingCheck()
    monkeypatch.setattr(relay.members.apikey, "check_api_key", spy)
    return spy


def test_key_format() -> None:
    key = generate_api_key()
    assert re.fullmatch(r"atmos_[A-Za-z0-9_-]{43}", key)
    assert len(base64.urlsafe_b64decode(key.removeprefix("atmos_") + "=")) == 32
    assert len({generate_api_key() for _ in range(100)}) == 100


def test_hash_and_check(key_and_hash: tuple[str, str]) -> None:
    key, hashed = key_and_hash
    assert hashed.startswith("$2b$04$")
    assert key not in hashed
    assert check_api_key(key, hashed)
    assert not check_api_key(generate_api_key(), hashed)
    assert not check_api_key(key[:-1], hashed)


@pytest.mark.parametrize("hashed", ["", "garbage", "$2b$04$short", "$2b$04$" + "é" * 53, "\x00"])
def test_malformed_hash_is_false_not_an_exception(key_and_hash: tuple[str, str], hashed: str) -> None:
    assert check_api_key(key_and_hash[0], hashed) is False


@pytest.mark.parametrize("key", ["", "a" * 100, "atmos_\udcff", "atmos_\x00"])
def test_malformed_key_is_false_not_an_exception(key_and_hash: tuple[str, str], key: str) -> None:
    assert check_api_key(key, key_and_hash[1]) is False


@pytest.mark.trio
async def test_cache_hit_skips_bcrypt(key_and_hash: tuple[str, str], counting: CountingCheck) -> None:
    key, hashed = key_and_hash
    cache = ApiKeyCache()
    assert await cache.verify(DID, key, hashed)
    assert await cache.verify(DID, key, hashed)
    assert await cache.verify(DID, key, hashed)
    assert counting.calls == 1
    assert threading.get_ident() not in counting.threads  # bcrypt ran in a worker thread


@pytest.mark.trio
async def test_wrong_key_is_never_cached(key_and_hash: tuple[str, str], counting: CountingCheck) -> None:
    key, hashed = key_and_hash
    cache = ApiKeyCache()
    assert await cache.verify(DID, key, hashed)
    assert not await cache.verify(DID, generate_api_key(), hashed)
    assert not await cache.verify(DID, generate_api_key(), hashed)
    assert counting.calls == 3
    assert await cache.verify(DID, key, hashed)  # the good entry survives failed attempts
    assert counting.calls == 3


@pytest.mark.trio
async def test_forget_and_regenerated_hash_force_bcrypt(
    key_and_hash: tuple[str, str], counting: CountingCheck
) -> None:
    key, hashed = key_and_hash
    cache = ApiKeyCache()
    await cache.verify(DID, key, hashed)
    cache.forget(DID)
    assert await cache.verify(DID, key, hashed)
    assert counting.calls == 2
    # Regenerated elsewhere (another process): the old key must fail against the new hash.
    new_key = generate_api_key()
    assert not await cache.verify(DID, key, hash_api_key(new_key, cost=COST))
    assert counting.calls == 3


@pytest.mark.trio
async def test_entries_expire_and_are_bounded(key_and_hash: tuple[str, str], counting: CountingCheck) -> None:
    key, hashed = key_and_hash
    now = [0.0]
    cache = ApiKeyCache(ttl=300, max_entries=3, clock=lambda: now[0])
    await cache.verify(DID, key, hashed)
    now[0] = 299.0
    await cache.verify(DID, key, hashed)
    assert counting.calls == 1
    now[0] = 301.0
    await cache.verify(DID, key, hashed)
    assert counting.calls == 2
    for i in range(5):
        await cache.verify(f"did:plc:{i:024d}", key, hashed)
    assert len(cache) == 3


@pytest.mark.trio
async def test_at_most_two_bcrypt_threads(
    key_and_hash: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = CountingCheck(delay=0.02)
    monkeypatch.setattr(relay.members.apikey, "check_api_key", spy)
    key, hashed = key_and_hash
    cache = ApiKeyCache()
    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(cache.verify, f"did:plc:{i:024d}", key, hashed)
    assert spy.calls == 8
    assert spy.max_running == 2


@pytest.mark.trio
async def test_hashing_a_new_key_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[int] = set()
    real = relay.members.apikey.hash_api_key

    def spy(key: str, *, cost: int) -> str:
        threads.add(threading.get_ident())
        return real(key, cost=cost)

    monkeypatch.setattr(relay.members.apikey, "hash_api_key", spy)
    key = generate_api_key()
    hashed = await ApiKeyCache(cost=COST).hash(key)
    assert hashed.startswith("$2b$04$") and check_api_key(key, hashed)
    assert threads and threading.get_ident() not in threads
