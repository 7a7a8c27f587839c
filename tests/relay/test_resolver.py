"""One resolver set-up (relay.net.resolver) for routing, DANE, the domain checks and DKIM verification."""

from __future__ import annotations

import dns.asyncresolver
import dns.name
import dns.resolver
import pytest

from relay.delivery.dane import Dane
from relay.delivery.routing import Resolver
from relay.dkim.verify import DkimVerifier
from relay.dns.checks import DnsLookup
from relay.net.resolver import stub_resolver


@pytest.mark.parametrize("kind", [dns.asyncresolver.Resolver, dns.resolver.Resolver])
def test_stub_resolver_is_absolute_uncached_and_bounded(kind: type[dns.resolver.Resolver]) -> None:
    r = stub_resolver(kind, ["127.0.0.1:5353", "[::1]:53"], lifetime=5.0)
    assert isinstance(r, kind)
    assert [(ns.address, ns.port) for ns in r.nameservers] == [("127.0.0.1", 5353), ("::1", 53)]  # type: ignore[union-attr]
    assert r.search == [] and not r.use_search_by_default and r.domain == dns.name.root and r.cache is None
    assert r.lifetime == 5.0 and r.timeout == 2.0
    assert stub_resolver(kind, ["127.0.0.1"], lifetime=0.5).timeout == 0.5


def test_bad_nameserver_is_named() -> None:
    with pytest.raises(ValueError, match="'mx.example' is not an IP address"):
        stub_resolver(dns.asyncresolver.Resolver, ["mx.example"], lifetime=1.0)


def test_every_user_gets_the_same_set_up() -> None:
    servers = ["127.0.0.1:5353"]
    resolvers = [Resolver(servers, lifetime=3.0)._resolver, DnsLookup(servers, lifetime=3.0)._resolver,
                 Dane(servers, lifetime=3.0)._resolver, DkimVerifier(servers, timeout=3.0)._resolver]
    for r in resolvers:
        assert [(ns.address, ns.port) for ns in r.nameservers] == [("127.0.0.1", 5353)]  # type: ignore[union-attr]
        assert r.search == [] and r.domain == dns.name.root and r.cache is None
        assert (r.lifetime, r.timeout) == (3.0, 2.0)
