"""The relay's DNS stub resolvers, set up in one place: mail routing, DANE, the domain checks and DKIM
verification each get one from ``stub_resolver``.

- ``nameservers``: ``"ip"`` or ``"ip:port"`` (``parse_nameserver``); empty uses the system resolver
  (/etc/resolv.conf), and without a usable one every lookup fails naming the cause, so the relay
  still starts (mail waits in the queue) rather than refusing to.
- Names are always absolute: no search list, no ndots (RFC 5321 §5.1 looks the domain up as written;
  a DKIM key or a challenge record is a full name too).
- No dnspython cache: the callers cache what they need (whole routes, TLSA answers) or must see the
  zone as it is now (checks).
- ``lifetime`` bounds one whole lookup, retries and servers included; one UDP try gets at most 2 s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TypeVar

import dns.asyncresolver
import dns.name
import dns.nameserver
import dns.resolver

PER_TRY_TIMEOUT = 2.0  # one UDP attempt; dnspython retries within the lifetime

R = TypeVar("R", dns.asyncresolver.Resolver, dns.resolver.Resolver)


def stub_resolver(kind: type[R], nameservers: Sequence[str] = (), *, lifetime: float) -> R:
    """A ``dns.asyncresolver.Resolver`` (Trio, through sniffio) or a ``dns.resolver.Resolver`` (for code
    that runs in worker threads, as dkimpy's lookups do), set up as the module says. ValueError names a
    bad nameserver."""
    if nameservers:
        resolver = kind(configure=False)
        resolver.nameservers = [parse_nameserver(ns) for ns in nameservers]
    else:
        try:
            resolver = kind(configure=True)
        except dns.resolver.NoResolverConfiguration:
            resolver = kind(configure=False)  # no servers: every lookup fails, naming why
    resolver.search = []
    resolver.use_search_by_default = False
    resolver.domain = dns.name.root
    resolver.cache = None
    resolver.lifetime = lifetime
    resolver.timeout = min(PER_TRY_TIMEOUT, lifetime)
    return resolver


def parse_nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    """``192.0.2.53``, ``192.0.2.53:5353``, ``2001:db8::53`` or ``[2001:db8::53]:5353`` (plain DNS, RFC 1035)."""
    s = text.strip()
    port = 53
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"nameserver {text!r}: expected ':port' after ']'")
            port = parse_port(rest[1:], f"nameserver {text!r}")
    elif s.count(":") == 1:
        host, _, port_text = s.partition(":")
        port = parse_port(port_text, f"nameserver {text!r}")
    else:
        host = s
    address = ip_text(host)
    if address is None:
        raise ValueError(f"nameserver {text!r}: {host!r} is not an IP address")
    return dns.nameserver.Do53Nameserver(address, port)


def parse_port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def ip_text(text: str) -> str | None:
    """The address in its canonical text form, or None when ``text`` is not an IP address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


__all__ = ["PER_TRY_TIMEOUT", "ip_text", "parse_nameserver", "parse_port", "stub_resolver"]
