"""Outbound routing (DESIGN §5, RFC 5321 §5.1, RFC 7505) against a real authoritative DNS server (Knot)."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import trio

from relay.config import DeliveryConfig
from relay.delivery.routing import (
    MxHost,
    NoRoute,
    NoSuchDomain,
    NullMX,
    Relayhost,
    Resolver,
    Route,
    RoutingError,
    TemporaryDnsError,
    parse_nameserver,
    parse_relayhost,
    route,
)
from tests.peers.knot import KnotServer, knot_fixture  # noqa: F401

StartKnot = Callable[..., KnotServer]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(server: KnotServer, **options: object) -> Resolver:
    return Resolver(server.nameservers, lifetime=2.0, **options)  # type: ignore[arg-type]


def names(r: Route) -> list[str]:
    return [h.name for h in r.hosts]


@pytest.fixture
def closed_port() -> int:
    """A UDP port with nothing behind it (the kernel answers ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A bound UDP socket that never answers: queries to it time out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# ---- MX lookup ------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_mx_hosts_in_preference_order_with_their_addresses(knot: StartKnot) -> None:
    dns = knot({"example.test": [
        "@ MX 20 mx2", "@ MX 10 mx1", "@ MX 30 mx3.other.test.",
        "mx1 A 127.0.0.11", "mx1 AAAA ::1", "mx2 A 127.0.0.12",
    ], "other.test": ["mx3 A 127.0.0.13"]})
    r = await route("Example.TEST", resolver=resolver_for(dns), port=2525)
    assert r == Route("example.test", [
        MxHost("mx1.example.test", 10, ["127.0.0.11", "::1"]),
        MxHost("mx2.example.test", 20, ["127.0.0.12"]),
        MxHost("mx3.other.test", 30, ["127.0.0.13"]),
    ], 2525)
    assert r.targets()[:2] == [(r.hosts[0], "127.0.0.11"), (r.hosts[0], "::1")]


@pytest.mark.trio
async def test_resolver_from_the_delivery_config(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 mx", "mx A 127.0.0.1"]})
    resolver = Resolver.from_config(DeliveryConfig(nameservers=dns.nameservers), lifetime=2.0)
    assert names(await route("example.test.", resolver=resolver)) == ["mx.example.test"]


@pytest.mark.trio
async def test_prefer_ipv6_puts_aaaa_first(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 mx", "mx A 127.0.0.11", "mx AAAA ::1"]})
    r = await route("example.test", resolver=resolver_for(dns, prefer_ipv6=True))
    assert r.hosts[0].addresses == ["::1", "127.0.0.11"]


@pytest.mark.trio
async def test_equal_preferences_come_in_random_order(knot: StartKnot) -> None:
    dns = knot({"example.test": [
        "@ MX 10 a", "@ MX 10 b", "@ MX 20 c", "a A 127.0.0.1", "b A 127.0.0.2", "c A 127.0.0.3",
    ]})
    resolver, rng = resolver_for(dns), random.Random(7)
    orders = {tuple(names(await route("example.test", resolver=resolver, rng=rng))) for _ in range(30)}
    assert orders == {
        ("a.example.test", "b.example.test", "c.example.test"),
        ("b.example.test", "a.example.test", "c.example.test"),
    }
    # The shuffle happens after the cache: one MX lookup served all 30 routes.
    assert dns.queries("example.test")["MX"] == 1


@pytest.mark.trio
async def test_null_mx_is_a_permanent_5_1_10(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 0 ."]})
    with pytest.raises(NullMX) as caught:
        await route("example.test", resolver=resolver_for(dns))
    err = caught.value
    assert isinstance(err, RoutingError) and err.permanent and err.enhanced == "5.1.10"
    assert err.domain == "example.test"
    assert str(err) == "example.test has a null MX (RFC 7505): it accepts no mail"


@pytest.mark.trio
async def test_no_mx_falls_back_to_the_domains_own_address(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ A 127.0.0.5", "@ AAAA ::1", "@ TXT \"v=spf1 -all\""]})
    r = await route("example.test", resolver=resolver_for(dns))
    assert r.implicit_mx
    assert r.hosts == [MxHost("example.test", 0, ["127.0.0.5", "::1"])]


@pytest.mark.trio
async def test_no_mx_and_no_address_is_a_permanent_no_route(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ TXT \"nothing here\""]})
    with pytest.raises(NoRoute) as caught:
        await route("example.test", resolver=resolver_for(dns))
    assert caught.value.permanent and caught.value.enhanced == "5.4.4"
    assert "example.test has no MX record and no A/AAAA address" in str(caught.value)


@pytest.mark.trio
async def test_nxdomain_is_a_permanent_5_1_2(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 mx", "mx A 127.0.0.1"]})
    with pytest.raises(NoSuchDomain) as caught:
        await route("nope.example.test", resolver=resolver_for(dns))
    assert caught.value.permanent and caught.value.enhanced == "5.1.2"
    assert str(caught.value) == "nope.example.test does not exist in DNS (NXDOMAIN)"


@pytest.mark.trio
async def test_mx_hosts_without_an_address_are_skipped(knot: StartKnot) -> None:
    dns = knot({"example.test": [
        "@ MX 10 ghost", "@ MX 20 noaddr", "@ MX 30 real", "noaddr TXT \"no address\"", "real A 127.0.0.30",
    ]})
    r = await route("example.test", resolver=resolver_for(dns))
    assert r.hosts == [MxHost("real.example.test", 30, ["127.0.0.30"])]


@pytest.mark.trio
async def test_all_mx_hosts_missing_is_permanent(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 ghost", "@ MX 20 noaddr", "noaddr TXT \"x\""]})
    with pytest.raises(NoRoute) as caught:
        await route("example.test", resolver=resolver_for(dns))
    assert caught.value.permanent
    assert str(caught.value) == (
        "none of the MX hosts of example.test has an address "
        "(ghost.example.test: no such host; noaddr.example.test: no A/AAAA record)"
    )


@pytest.mark.trio
async def test_mx_pointing_at_localhost_or_an_ip_needs_no_dns(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 localhost.", "@ MX 20 127.0.0.9."]})
    r = await route("example.test", resolver=resolver_for(dns))
    assert r.hosts == [MxHost("localhost", 10, ["127.0.0.1", "::1"]), MxHost("127.0.0.9", 20, ["127.0.0.9"])]
    assert set(dns.queries("example.test")) <= {"MX", "SOA"}


@pytest.mark.trio
@pytest.mark.parametrize(("domain", "address"), [("[127.0.0.7]", "127.0.0.7"), ("[IPv6:::1]", "::1")])
async def test_address_literal_domain_is_its_own_host(domain: str, address: str, closed_port: int) -> None:
    r = await route(domain, resolver=Resolver((f"127.0.0.1:{closed_port}",)), port=2525)
    assert r.hosts == [MxHost(address, 0, [address])] and r.port == 2525


@pytest.mark.trio
@pytest.mark.parametrize("domain", ["exa..mple.test", "", "a" * 64 + ".test"])
async def test_invalid_domain_is_permanent(domain: str, closed_port: int) -> None:
    with pytest.raises(NoSuchDomain, match="is not a valid domain name"):
        await route(domain, resolver=Resolver((f"127.0.0.1:{closed_port}",)))


# ---- temporary failures ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_servfail_is_temporary_and_not_cached(knot: StartKnot) -> None:
    dns = knot(servfail=["example.test"])
    resolver = resolver_for(dns)
    with pytest.raises(TemporaryDnsError) as caught:
        await route("example.test", resolver=resolver)
    err = caught.value
    assert not err.permanent and err.enhanced == "4.4.3"
    assert str(err) == (
        "looking up the MX records of example.test failed: "
        "the DNS servers failed to answer (SERVFAIL, refused or unreachable)"
    )
    dns.update("example.test", ["@ MX 10 mx", "mx A 127.0.0.1"])  # fixed: the next attempt must see it
    assert names(await route("example.test", resolver=resolver)) == ["mx.example.test"]


@pytest.mark.trio
async def test_mx_host_lookups_that_fail_temporarily(knot: StartKnot) -> None:
    dns = knot({
        "example.test": ["@ MX 10 mx.broken.test.", "@ MX 20 backup", "backup A 127.0.0.20"],
        "only-broken.test": ["@ MX 10 mx.broken.test.", "@ MX 20 ghost"],
    }, servfail=["broken.test"])
    resolver = resolver_for(dns)
    # The preferred MX cannot be looked up now: the backup still takes the mail (RFC 5321 §5.1).
    assert names(await route("example.test", resolver=resolver)) == ["backup.example.test"]
    # No host usable, one of them only for now: temporary, not a bounce.
    with pytest.raises(TemporaryDnsError, match=r"none of the MX hosts of only-broken\.test could be looked up"):
        await route("only-broken.test", resolver=resolver)


@pytest.mark.trio
async def test_unanswered_queries_time_out_as_temporary(black_hole: int) -> None:
    resolver = Resolver((f"127.0.0.1:{black_hole}",), lifetime=0.3)
    start = time.monotonic()
    with pytest.raises(TemporaryDnsError, match=r"no DNS answer within 0\.3 s") as caught:
        await route("example.test", resolver=resolver)
    assert time.monotonic() - start < 2.0
    assert not caught.value.permanent


@pytest.mark.trio
async def test_unreachable_nameserver_is_temporary(closed_port: int) -> None:
    resolver = Resolver((f"127.0.0.1:{closed_port}",), lifetime=0.3)
    with pytest.raises(TemporaryDnsError) as caught:
        await route("example.test", resolver=resolver)
    assert caught.value.enhanced == "4.4.3"


@pytest.mark.trio
async def test_a_zone_knot_does_not_serve_is_temporary(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 mx", "mx A 127.0.0.1"]})
    # Knot answers REFUSED for names outside its zones; for a stub resolver that is a server failure.
    with pytest.raises(TemporaryDnsError):
        await route("elsewhere.test", resolver=resolver_for(dns))


# ---- relayhost ------------------------------------------------------------------------------------


RELAY_ZONE = {"relay.test": [
    "@ MX 10 mx", "mx A 127.0.0.10", "smtp A 127.0.0.25", "smtp AAAA ::1",
]}


@pytest.mark.trio
async def test_bracketed_relayhost_skips_the_mx_lookup(knot: StartKnot) -> None:
    dns = knot(RELAY_ZONE)
    r = await route("nowhere.example", resolver=resolver_for(dns), port=25, relayhost="[smtp.relay.test]:2525")
    assert r == Route("nowhere.example", [MxHost("smtp.relay.test", 0, ["127.0.0.25", "::1"])], 2525,
                      relayhost="[smtp.relay.test]:2525")
    assert "MX" not in dns.queries("relay.test")


@pytest.mark.trio
async def test_bare_relayhost_gets_an_mx_lookup(knot: StartKnot) -> None:
    dns = knot(RELAY_ZONE)
    r = await route("nowhere.example", resolver=resolver_for(dns), port=2525, relayhost="relay.test")
    assert r.hosts == [MxHost("mx.relay.test", 10, ["127.0.0.10"])]
    assert r.port == 2525 and r.relayhost == "relay.test"


@pytest.mark.trio
async def test_relayhost_ip_literal_needs_no_dns(closed_port: int) -> None:
    resolver = Resolver((f"127.0.0.1:{closed_port}",))
    r = await route("example.org", resolver=resolver, relayhost="[127.0.0.1]:2526")
    assert r.hosts == [MxHost("127.0.0.1", 0, ["127.0.0.1"])] and r.port == 2526
    assert resolver.queries == 0


@pytest.mark.trio
async def test_relayhost_that_does_not_resolve_keeps_mail_queued(knot: StartKnot) -> None:
    dns = knot(RELAY_ZONE)
    with pytest.raises(TemporaryDnsError) as caught:
        await route("example.org", resolver=resolver_for(dns), relayhost="[gone.relay.test]:587")
    assert not caught.value.permanent
    assert str(caught.value) == (
        "relayhost [gone.relay.test]:587: gone.relay.test does not exist in DNS (NXDOMAIN); mail waits until it is fixed"
    )
    with pytest.raises(TemporaryDnsError, match="delivery.relayhost is invalid"):
        await route("example.org", resolver=resolver_for(dns), relayhost="[smtp.relay.test]:x")


@pytest.mark.parametrize(("text", "expected"), [
    ("smtp.example.net", Relayhost("smtp.example.net", 25, True)),
    ("smtp.example.net:587", Relayhost("smtp.example.net", 587, True)),
    ("[smtp.example.net]", Relayhost("smtp.example.net", 25, False)),
    ("[SMTP.example.net.]:2525", Relayhost("smtp.example.net", 2525, False)),
    ("192.0.2.1:26", Relayhost("192.0.2.1", 26, False)),
    ("[2001:db8::1]:587", Relayhost("2001:db8::1", 587, False)),
    ("[IPv6:2001:db8::1]", Relayhost("2001:db8::1", 25, False)),
])
def test_parse_relayhost(text: str, expected: Relayhost) -> None:
    assert parse_relayhost(text) == expected


@pytest.mark.parametrize("text", ["", "[host", "host:0", "host:70000", "host:smtp", "2001:db8::1", "[a]b", "a..b"])
def test_parse_relayhost_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="relayhost"):
        parse_relayhost(text)


@pytest.mark.parametrize(("text", "address", "port"), [
    ("127.0.0.1", "127.0.0.1", 53), ("127.0.0.1:5353", "127.0.0.1", 5353),
    ("::1", "::1", 53), ("[::1]:5353", "::1", 5353),
])
def test_parse_nameserver(text: str, address: str, port: int) -> None:
    ns = parse_nameserver(text)
    assert (ns.address, ns.port) == (address, port)


@pytest.mark.parametrize("text", ["dns.example", "dns.example:53", "127.0.0.1:", "[::1]x"])
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameserver(text)


# ---- cache ----------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_second_lookup_is_served_from_the_cache(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ 600 MX 10 mx", "mx 600 A 127.0.0.1"]})
    clock = FakeClock()
    resolver = Resolver(dns.nameservers, lifetime=0.3, clock=clock)
    first = await route("example.test", resolver=resolver)
    counted = dns.queries("example.test")
    assert (counted["MX"], counted["A"], counted["AAAA"]) == (1, 1, 1)
    assert resolver.queries == 3
    dns.stop()  # any further query would now fail
    clock.now += 299
    assert await route("example.test", resolver=resolver) == first
    assert resolver.queries == 3
    clock.now += 2  # past the 5 minute cap, even though the TTL says 10
    with pytest.raises(TemporaryDnsError):
        await route("example.test", resolver=resolver)


@pytest.mark.trio
async def test_cache_respects_the_shortest_ttl(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ 30 MX 10 mx", "mx 300 A 127.0.0.1", "new 300 A 127.0.0.2"]})
    clock = FakeClock()
    resolver = resolver_for(dns, clock=clock)
    assert names(await route("example.test", resolver=resolver)) == ["mx.example.test"]
    dns.update("example.test", ["@ 30 MX 10 new", "new 300 A 127.0.0.2"])
    clock.now += 29
    assert names(await route("example.test", resolver=resolver)) == ["mx.example.test"]
    clock.now += 2
    assert names(await route("example.test", resolver=resolver)) == ["new.example.test"]


@pytest.mark.trio
async def test_negative_answers_are_cached_briefly(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ 60 MX 0 ."]})  # the fixture's SOA has MINIMUM 60 (RFC 2308 §5)
    clock = FakeClock()
    resolver = resolver_for(dns, clock=clock, negative_ttl=20)
    with pytest.raises(NullMX):
        await route("example.test", resolver=resolver)
    with pytest.raises(NoSuchDomain):
        await route("new.example.test", resolver=resolver)
    dns.update("example.test", ["@ MX 10 mx", "mx A 127.0.0.1", "new MX 10 mx"])
    clock.now += 19
    with pytest.raises(NullMX):
        await route("example.test", resolver=resolver)
    with pytest.raises(NoSuchDomain):
        await route("new.example.test", resolver=resolver)
    clock.now += 2
    assert names(await route("example.test", resolver=resolver)) == ["mx.example.test"]
    assert names(await route("new.example.test", resolver=resolver)) == ["mx.example.test"]


@pytest.mark.trio
async def test_concurrent_lookups_of_one_domain_share_one_query(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 mx", "mx A 127.0.0.1"]})
    resolver = resolver_for(dns)
    results: list[Route] = []

    async def one() -> None:
        results.append(await route("example.test", resolver=resolver))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert len(results) == 10 and all(names(r) == ["mx.example.test"] for r in results)
    assert dns.queries("example.test")["MX"] == 1


@pytest.mark.trio
async def test_a_fresh_resolver_sees_changes_at_once(knot: StartKnot) -> None:
    dns = knot({"example.test": ["@ MX 10 mx", "mx A 127.0.0.1"]})
    assert names(await route("example.test", resolver=resolver_for(dns))) == ["mx.example.test"]
    dns.update("example.test", ["@ MX 0 ."])
    with pytest.raises(NullMX):
        await route("example.test", resolver=resolver_for(dns))
