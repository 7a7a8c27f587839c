"""Competing pending claims (issue 15): a squatter's claim never locks the owner out, the first DNS
proof wins, and an unproved claim expires after ``dns.pending_claim_ttl`` (Knot, trio's mock clock)."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from relay.config import DnsConfig
from relay.dns.challenge import verify_token
from relay.dns.checks import DnsLookup
from relay.dns.verifier import DomainVerifier
from relay.mail.dkimkeys import DomainKeys, SecretBox
from relay.store.aio import AsyncStore
from relay.store.rows import Domain
from relay.store.sqlite import SqliteStore
from tests.dnscheck.test_verifier import StartKnot, published, until
from tests.peers.knot import knot_fixture  # noqa: F401

from .conftest import CFG, DID, SECRET

SQUATTER = "did:plc:squat" + "s" * 19
T0 = 1_800_000_000.0


async def claim(store: AsyncStore, domain: str, did: str, keys: DomainKeys) -> Domain:
    box = SecretBox(SECRET)
    if await store.get_member(did) is None:
        await store.create_member(did)
    return await store.add_domain(did, domain, selector=keys.selector, rsa_private=box.encrypt(keys.rsa_private_pem),
                                  ed25519_private=box.encrypt(keys.ed25519_private_raw),
                                  verify_token=verify_token(SECRET, did), claim_ttl=CFG.dns.pending_claim_ttl)


@pytest.mark.trio
async def test_the_owner_proves_first_and_the_squatters_other_claim_expires(
        knot: StartKnot, keys: DomainKeys, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0.05  # real sockets and store threads: jump only when really idle
    cfg = dataclasses.replace(CFG, dns=DnsConfig(relay_ips=CFG.dns.relay_ips, mx_host=CFG.dns.mx_host,
                                                 pending_recheck_interval=6 * 3600, recheck_interval=86400))
    store = AsyncStore(SqliteStore.open(":memory:", clock=lambda: T0 + mock_clock.current_time()))
    squat = await claim(store, "owned.test", SQUATTER, keys)
    owner = await claim(store, "owned.test", DID, keys)
    idle = await claim(store, "idle.test", SQUATTER, keys)
    assert (squat.claim, owner.claim, idle.claim) == (False, True, False)
    # The squatter publishes nothing it can prove; the owner publishes its own DID-bound token.
    dns = knot({"owned.test": published(owner), "idle.test": []})
    verifier = DomainVerifier(store, cfg, SECRET, DnsLookup(dns.nameservers, lifetime=2.0))

    async def owned_by(domain: str, did: str | None, state: str | None = None) -> bool:
        row = await store.get_domain(domain)
        if did is None:
            return row is None
        return row is not None and row.did == did and (state is None or row.state == state)

    async with trio.open_nursery() as nursery:
        await nursery.start(verifier.run)
        await until(lambda: owned_by("owned.test", DID, "verified"))
        assert [d.domain for d in await store.domains_for(SQUATTER)] == ["idle.test"]  # its claim was dropped
        assert await owned_by("idle.test", SQUATTER, "pending")
        await trio.sleep(6 * 86400)
        assert await owned_by("idle.test", SQUATTER, "pending")  # not yet 7 days
        await trio.sleep(86400 + 7 * 3600)  # past 7 days and one more pass of the loop
        await until(lambda: owned_by("idle.test", None))
        assert await store.domains_for(SQUATTER) == []
        assert await owned_by("owned.test", DID, "verified")  # a verified domain never expires
        nursery.cancel_scope.cancel()
    await store.aclose()
