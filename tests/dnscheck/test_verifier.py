"""Domain states (pending/verified, dkim_state) and the periodic re-check job, with a store and Knot."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from relay.config import DnsConfig, StoreConfig
from relay.dns.checks import CheckResult, DnsLookup, DomainReport, Status
from relay.dns.records import KINDS, zone_line
from relay.dns.verifier import DomainVerifier, UnknownDomain, check_once, expected_records, next_states
from relay.mail.dkimkeys import DomainKeys, SecretBox, SecretBoxError
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.rows import DkimState, Domain, DomainState
from tests.peers.knot import KnotServer, knot_fixture  # noqa: F401

from .conftest import CFG, DID, SECRET, TOKEN

StartKnot = Callable[..., KnotServer]
OTHER_DID = "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"


# ---- the pure decision --------------------------------------------------------------------------


def report_of(ownership: Status = "ok", rsa: Status = "ok", ed: Status = "ok") -> DomainReport:
    statuses = {"ownership": ownership, "dkim-rsa": rsa, "dkim-ed25519": ed, "spf": "ok", "dmarc": "ok", "mx": "ok"}
    return DomainReport("example.com", DID, [CheckResult("n", kind, statuses[kind], [], "v", "") for kind in KINDS])


@pytest.mark.parametrize(
    ("state", "dkim", "report", "after"),
    [
        ("pending", "unverified", report_of(), ("verified", "verified")),
        ("pending", "unverified", report_of(ownership="missing"), ("pending", "verified")),
        ("pending", "unverified", report_of(ownership="error", rsa="error", ed="error"), ("pending", "unverified")),
        ("verified", "verified", report_of(ownership="error", rsa="error", ed="error"), ("verified", "verified")),
        ("verified", "verified", report_of(ownership="missing"), ("pending", "verified")),
        ("verified", "verified", report_of(ownership="wrong"), ("pending", "verified")),
        ("verified", "verified", report_of(rsa="wrong"), ("verified", "unverified")),
        ("verified", "verified", report_of(ed="missing"), ("verified", "unverified")),
        ("verified", "verified", report_of(rsa="error"), ("verified", "verified")),  # DNS trouble: no verdict
        ("verified", "unverified", report_of(rsa="error", ed="wrong"), ("verified", "unverified")),
    ],
)
def test_next_states(state: DomainState, dkim: DkimState, report: DomainReport, after: tuple[str, str]) -> None:
    assert next_states(state, dkim, report) == after


# ---- with a store -------------------------------------------------------------------------------


async def enroll(
    store: AsyncStore, domain: str, keys: DomainKeys, *, state: DomainState = "pending", did: str = DID
) -> Domain:
    box = SecretBox(SECRET)
    if await store.get_member(did) is None:
        await store.create_member(did)
    return await store.add_domain(
        did, domain, selector=keys.selector, rsa_private=box.encrypt(keys.rsa_private_pem),
        ed25519_private=box.encrypt(keys.ed25519_private_raw), verify_token=TOKEN, state=state,
    )


def published(row: Domain, *, drop: tuple[str, ...] = ()) -> list[str]:
    return [zone_line(r) for r in expected_records(row, CFG) if r.kind not in drop]


@pytest.mark.trio
async def test_check_records_the_states(knot: StartKnot, keys: DomainKeys) -> None:
    store = AsyncStore(open_store("sqlite:///:memory:"))
    row = await enroll(store, "states.test", keys)
    dns = knot({"states.test": published(row, drop=("ownership",))})
    changes: list[tuple[str, str | None, str | None]] = []

    async def on_change(domain: Domain, report: DomainReport) -> None:
        changes.append((domain.state, report.state, report.dkim_state))

    verifier = DomainVerifier(store, CFG, SECRET, DnsLookup(dns.nameservers, lifetime=2.0), on_change=on_change)

    report = await verifier.check("States.Test")
    assert (report.state, report.dkim_state) == ("pending", "verified")
    stored = await store.get_domain("states.test")
    assert stored is not None and (stored.state, stored.dkim_state, stored.verified_at) == ("pending", "verified", None)
    assert report.records[0].value == f"atmos-verify={TOKEN}"  # what to publish travels with the report
    assert verifier.last_report("states.test") is report

    dns.update("states.test", published(row))
    report = await verifier.check("states.test")
    assert report.all_ok and (report.state, report.dkim_state) == ("verified", "verified")
    stored = await store.get_domain("states.test")
    assert stored is not None and stored.state == "verified" and stored.verified_at is not None
    assert report.to_json()["state"] == "verified"

    dns.servfail("states.test")  # DNS trouble never demotes a domain
    report = await verifier.check("states.test")
    assert report.dns_error and (report.state, report.dkim_state) == ("verified", "verified")

    dns.update("states.test", published(row, drop=("dkim-rsa",)))
    report = await verifier.check("states.test")
    assert (report.state, report.dkim_state) == ("verified", "unverified")

    dns.update("states.test", published(row, drop=("ownership",)))
    report = await verifier.check("states.test")
    stored = await store.get_domain("states.test")
    assert stored is not None and (stored.state, stored.dkim_state) == ("pending", "verified")
    assert changes == [
        ("pending", "pending", "verified"),
        ("verified", "verified", "verified"),
        ("verified", "verified", "unverified"),
        ("pending", "pending", "verified"),
    ]

    with pytest.raises(UnknownDomain):
        await verifier.check("nobody.test")
    await store.aclose()


@pytest.mark.trio
async def test_wrong_secret_cannot_build_the_records(keys: DomainKeys) -> None:
    store = AsyncStore(open_store("sqlite:///:memory:"))
    await enroll(store, "secret.test", keys)
    verifier = DomainVerifier(store, CFG, b"another secret", DnsLookup(["127.0.0.1:9"], lifetime=0.1))
    with pytest.raises(SecretBoxError):
        await verifier.check("secret.test")
    await store.aclose()


class CountingLookup:
    """Counts checks per domain (each check reads the challenge name once)."""

    def __init__(self, inner: DnsLookup) -> None:
        self.inner = inner
        self.checks: Counter[str] = Counter()

    async def txt(self, name: str) -> list[tuple[str, ...]]:
        if name.startswith("_atmos-challenge."):
            self.checks[name.split(".", 1)[1]] += 1
        return await self.inner.txt(name)

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self.inner.mx(name)


async def until(predicate: Callable[[], bool | Awaitable[bool]], limit: float = 30.0) -> None:
    """Poll in virtual time, far below the 300 s re-check interval, so no extra check sneaks in.
    (Store calls run in threads: the clock may jump while one runs, so never assert right after a sleep.)"""
    with trio.fail_after(limit):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(1)


@pytest.mark.trio
async def test_run_rechecks_on_schedule(
    knot: StartKnot, keys: DomainKeys, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Lookups use real sockets and the store real threads: jump only after 50 ms of real idleness.
    mock_clock.autojump_threshold = 0.05
    cfg = dataclasses.replace(CFG, dns=DnsConfig(relay_ips=CFG.dns.relay_ips, mx_host=CFG.dns.mx_host,
                                                 pending_recheck_interval=300, recheck_interval=3000))
    store = AsyncStore(open_store("sqlite:///:memory:"))
    pending = await enroll(store, "p.test", keys)
    verified = await enroll(store, "v.test", keys)
    dns = knot({"p.test": published(pending, drop=("ownership",)), "v.test": published(verified)})
    lookup = CountingLookup(DnsLookup(dns.nameservers, lifetime=2.0))
    verifier = DomainVerifier(store, cfg, SECRET, lookup)
    checks = lookup.checks

    async def state_is(domain: str, expected: str) -> bool:
        row = await store.get_domain(domain)
        assert row is not None
        return row.state == expected

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()

        async def at(t: float) -> None:
            await trio.sleep_until(t0 + t)

        await nursery.start(verifier.run)
        await until(lambda: (checks["p.test"], checks["v.test"]) == (1, 1))  # every domain at start
        await until(lambda: state_is("v.test", "verified"))
        assert await state_is("p.test", "pending")

        await at(305)  # pending domains every pending_recheck_interval; verified ones not
        await until(lambda: checks["p.test"] == 2)
        assert checks["v.test"] == 1

        dns.update("p.test", published(pending))
        await at(605)
        await until(lambda: state_is("p.test", "verified"))
        assert checks["p.test"] == 3

        await at(3005)  # verified domains every recheck_interval: v.test (checked at 0) is due
        await until(lambda: checks["v.test"] == 2)
        assert checks["p.test"] == 3
        await at(3605)  # p.test was verified at 600
        await until(lambda: checks["p.test"] == 4)
        assert checks["v.test"] == 2

        verifier.request_check("P.test")  # "check now"
        await until(lambda: checks["p.test"] == 5)
        assert checks["v.test"] == 2

        dns.servfail("v.test")  # a verified domain with DNS trouble stays verified, and is retried sooner
        verifier.request_check("v.test")
        await until(lambda: (report := verifier.last_report("v.test")) is not None and report.dns_error)
        assert checks["v.test"] == 3 and await state_is("v.test", "verified")
        await at(3950)
        await until(lambda: checks["v.test"] == 4)

        newcomer = await enroll(store, "n.test", keys, did=OTHER_DID)  # enrolled while running: found later
        dns.update("n.test", published(newcomer))
        await at(4260)  # the loop lists the domains again at most pending_recheck_interval after its last pass
        await until(lambda: state_is("n.test", "verified"))
        assert checks["n.test"] == 1
        nursery.cancel_scope.cancel()
    await store.aclose()


@pytest.mark.trio
async def test_run_survives_a_broken_domain(
    knot: StartKnot, keys: DomainKeys, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    mock_clock.autojump_threshold = 0.05
    store = AsyncStore(open_store("sqlite:///:memory:"))
    good = await enroll(store, "fine.test", keys)
    await store.create_member(OTHER_DID)
    await store.add_domain(OTHER_DID, "junk.test", selector="s", rsa_private=b"not a key",
                           ed25519_private=b"not a key", verify_token="t")
    dns = knot({"fine.test": published(good)})
    lookup = CountingLookup(DnsLookup(dns.nameservers, lifetime=2.0))
    verifier = DomainVerifier(store, CFG, SECRET, lookup)
    with caplog.at_level(logging.ERROR, logger="relay.dns"):
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run)
            await until(lambda: lookup.checks["fine.test"] == 1)
            await trio.sleep(CFG.dns.pending_recheck_interval + 5)  # the broken one is retried, and fails again

            def failures() -> int:
                return sum("domain junk.test: cannot check, the stored DKIM keys are unreadable" in r.getMessage()
                           for r in caplog.records)

            await until(lambda: failures() == 2)
            nursery.cancel_scope.cancel()
    row = await store.get_domain("fine.test")
    assert row is not None and row.state == "verified"
    await store.aclose()


def _file_store(path: Path, keys: DomainKeys) -> Store:
    store = open_store(f"sqlite:///{path}")
    box = SecretBox(SECRET)
    store.create_member(DID)
    store.add_domain(DID, "once.test", selector=keys.selector, rsa_private=box.encrypt(keys.rsa_private_pem),
                     ed25519_private=box.encrypt(keys.ed25519_private_raw), verify_token=TOKEN)
    return store


@pytest.mark.trio
async def test_check_once_for_the_cli(knot: StartKnot, keys: DomainKeys, tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    sync_store = _file_store(db, keys)
    row = sync_store.get_domain("once.test")
    assert row is not None
    dns = knot({"once.test": published(row)})
    cfg = dataclasses.replace(CFG, store=StoreConfig(url=f"sqlite:///{db}"),
                              dns=dataclasses.replace(CFG.dns, nameservers=dns.nameservers))

    dry = await check_once(cfg, sync_store, "once.test", record_states=False)  # a sync Store is wrapped
    assert dry.all_ok and dry.state == "verified"
    still = sync_store.get_domain("once.test")
    assert still is not None and still.state == "pending"
    sync_store.close()

    report = await check_once(cfg, None, "ONCE.test")  # opens (and closes) the store itself
    assert report.all_ok and (report.state, report.dkim_state) == ("verified", "verified")
    assert report.to_json()["results"][0]["status"] == "ok"
    reopened = open_store(cfg.store_url)
    after = reopened.get_domain("once.test")
    assert after is not None and (after.state, after.dkim_state) == ("verified", "verified")
    reopened.close()

    with pytest.raises(UnknownDomain, match="nobody.test is not enrolled"):
        await check_once(cfg, None, "nobody.test")
