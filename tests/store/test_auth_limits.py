"""Authentication abuse: per-address and per-DID budgets before bcrypt, a bounded bcrypt queue."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import pytest
import trio

import relay.members.apikey
from relay.config import AuthConfig
from relay.errors import AuthBusy, AuthFailed, AuthThrottled
from relay.members.apikey import ApiKeyCache, generate_api_key, hash_api_key
from relay.members.auth import Authenticator
from relay.store.aio import AsyncStore
from relay.store.base import Store
from tests.store.test_apikey import COST, CountingCheck

DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
OTHER = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
KEY = generate_api_key()
LIMITS = AuthConfig(per_ip_per_minute=1, per_ip_burst=3, per_did_per_minute=1, per_did_burst=5)


@pytest.fixture
async def store(sync_store: Store) -> AsyncIterator[AsyncStore]:
    for did in (DID, OTHER):
        sync_store.create_member(did, None)
        sync_store.set_api_key_hash(did, hash_api_key(KEY, cost=COST))
    yield AsyncStore(sync_store)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingCheck:
    spy = CountingCheck(delay=0.01)
    monkeypatch.setattr(relay.members.apikey, "check_api_key", spy)
    return spy


@pytest.mark.trio
async def test_wrong_keys_from_one_address_are_refused_before_bcrypt(
    store: AsyncStore, counting: CountingCheck, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Authenticator(store, ApiKeyCache(), LIMITS)
    for _ in range(3):
        with pytest.raises(AuthFailed):
            await auth.authenticate(DID, generate_api_key(), peer="192.0.2.1")
    with pytest.raises(AuthThrottled) as info:
        await auth.authenticate(DID, generate_api_key(), peer="192.0.2.1")
    assert counting.calls == 3  # the fourth never reached bcrypt
    reply = info.value.smtp_reply
    assert (reply.code, reply.enhanced, info.value.http_status) == (454, "4.7.0", 429)
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    with pytest.raises(AuthThrottled):  # even the right key: the address is throttled
        await auth.authenticate(DID, KEY, peer="192.0.2.1")
    # Another address is not affected, and a right key costs nothing.
    for _ in range(5):
        assert (await auth.authenticate(DID, KEY, peer="198.51.100.7")).did == DID
    failures = [r for r in caplog.records if r.name == "relay.members.auth" and "wrong API key" in r.getMessage()]
    assert len(failures) == 3 and all("peer=192.0.2.1" in r.getMessage() for r in failures)


@pytest.mark.trio
async def test_a_did_under_attack_from_many_addresses_still_admits_a_cached_key(
    store: AsyncStore, counting: CountingCheck
) -> None:
    auth = Authenticator(store, ApiKeyCache(), LIMITS)
    assert (await auth.authenticate(DID, KEY, peer="203.0.113.1")).did == DID  # the member, cached now
    for i in range(5):
        with pytest.raises(AuthFailed):
            await auth.authenticate(DID, generate_api_key(), peer=f"192.0.2.{i}")
    with pytest.raises(AuthThrottled):
        await auth.authenticate(DID, generate_api_key(), peer="192.0.2.99")
    calls = counting.calls
    assert (await auth.authenticate(DID, KEY, peer="203.0.113.1")).did == DID
    assert counting.calls == calls  # from the cache
    assert (await auth.authenticate(OTHER, KEY, peer="192.0.2.99")).did == OTHER  # other DIDs are fine


@pytest.mark.trio
async def test_unknown_dids_and_handles_spend_the_address_budget(store: AsyncStore, counting: CountingCheck) -> None:
    auth = Authenticator(store, ApiKeyCache(), LIMITS)
    for name in ("did:plc:cccccccccccccccccccccccc", "nobody.example.com", "did:plc:dddddddddddddddddddddddd"):
        with pytest.raises(AuthFailed):
            await auth.authenticate(name, KEY, peer="192.0.2.5")
    with pytest.raises(AuthThrottled):
        await auth.authenticate(DID, KEY, peer="192.0.2.5")
    assert counting.calls == 0


@pytest.mark.trio
async def test_the_bcrypt_queue_is_bounded_and_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = CountingCheck(delay=0.2)
    monkeypatch.setattr(relay.members.apikey, "check_api_key", spy)
    hashed = hash_api_key(KEY, cost=COST)
    cache = ApiKeyCache(bcrypt_threads=1, bcrypt_queue=2)
    busy: list[int] = []
    results: list[bool] = []

    async def attempt(i: int) -> None:
        try:
            results.append(await cache.verify(f"did:plc:{i:024d}", generate_api_key(), hashed))
        except AuthBusy as exc:
            assert (exc.smtp_reply.code, exc.http_status, exc.retry_after) == (454, 503, 1)
            busy.append(i)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(attempt, i)
                await trio.sleep(0.01)  # in order: one running, two waiting, the rest refused
    assert spy.calls == 3 and results == [False] * 3 and sorted(busy) == [3, 4, 5]


@pytest.mark.trio
async def test_identical_concurrent_checks_share_one_bcrypt(store: AsyncStore, counting: CountingCheck) -> None:
    auth = Authenticator(store, ApiKeyCache(), LIMITS)
    done: list[str] = []

    async def login() -> None:
        done.append((await auth.authenticate(DID, KEY, peer="192.0.2.8")).did)

    async with trio.open_nursery() as nursery:
        for _ in range(10):  # ten connections opened at once by one client, more than its burst of 3
            nursery.start_soon(login)
    assert done == [DID] * 10 and counting.calls == 1


@pytest.mark.trio
async def test_a_cancelled_caller_does_not_fail_the_ones_sharing_its_check(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = CountingCheck(delay=0.1)
    monkeypatch.setattr(relay.members.apikey, "check_api_key", spy)
    hashed = hash_api_key(KEY, cost=COST)
    cache = ApiKeyCache(bcrypt_threads=1)
    got: list[bool] = []
    scope = trio.CancelScope()

    async def starter() -> None:
        with scope:
            await cache.verify(DID, KEY, hashed)

    async def share() -> None:
        got.append(await cache.verify(DID, KEY, hashed))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.verify, OTHER, generate_api_key(), hashed)  # holds the only thread
        await trio.sleep(0.02)
        nursery.start_soon(starter)  # the check for (DID, KEY) waits for the thread...
        await trio.sleep(0.02)
        assert cache.running(DID, KEY, hashed)
        nursery.start_soon(share)  # ...and this caller shares it
        await trio.sleep(0.02)
        scope.cancel()  # the starter gives up before its bcrypt ran
    assert got == [True]  # the sharer ran its own check: not the cancelled one's False


@pytest.mark.trio
async def test_one_address_has_at_most_per_ip_concurrency_checks_at_once(
    store: AsyncStore, counting: CountingCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The two admitted checks are held in bcrypt until all ten guesses have been decided: without the
    # gate, the first check (10 ms) could end while the store lookups of the last guesses (one store
    # thread, taken in turn) were still running, and a later guess was rightly admitted to the freed slot.
    gate = threading.Event()

    def gated(key: str, hashed: str) -> bool:
        if not gate.wait(10):
            raise AssertionError("the gate was never opened")
        return counting(key, hashed)

    monkeypatch.setattr(relay.members.apikey, "check_api_key", gated)
    limits = AuthConfig(per_ip_burst=100, per_ip_concurrency=2, per_did_burst=100)
    auth = Authenticator(store, ApiKeyCache(bcrypt_threads=1), limits)
    outcomes: list[str] = []
    refused = trio.Event()

    async def guess() -> None:
        try:
            await auth.authenticate(DID, generate_api_key(), peer="192.0.2.30")
        except AuthThrottled:
            outcomes.append("throttled")
            if len(outcomes) == 8:
                refused.set()
        except AuthFailed:
            outcomes.append("failed")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(10):  # ten different guesses at once from one address
                nursery.start_soon(guess)
            await refused.wait()  # two checks in progress (one in bcrypt, one queued): the rest refused
            assert outcomes == ["throttled"] * 8 and counting.calls == 0
            gate.set()
    assert sorted(outcomes) == ["failed"] * 2 + ["throttled"] * 8 and counting.calls == 2
    counting.delay = 0.01
    for _ in range(3):  # one after the other they are fine (within the token budget)
        await guess()
    assert outcomes.count("failed") == 5
