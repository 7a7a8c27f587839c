"""Outbound routing: which hosts take the mail for a domain (DESIGN §5).

    route(domain, resolver=Resolver(...)) -> Route(domain, hosts=[MxHost(name, preference, addresses)], port)

The rules, in order:

1. A relayhost (smarthost) replaces the destination's own MX, Postfix style: ``[host]:port`` is used as
   written (A/AAAA only, no MX lookup), ``host:port`` gets an MX lookup like a mail domain would. Its DNS
   failures are always temporary: the recipient is not at fault when the operator's smarthost does not
   resolve, so the mail waits in the queue until the configuration is fixed (Postfix defers too).
2. An address-literal domain (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) is its own host (RFC 5321 §4.1.3).
3. MX lookup (RFC 5321 §5.1): hosts by ascending preference, in random order among equal preferences;
   each host's A and AAAA records (IPv4 first unless configured otherwise); hosts without any address
   are skipped. Outcomes, with their RFC 3463 enhanced status codes:

   - a null MX, a lone ``MX 0 .`` (RFC 7505 §3)      -> NullMX, permanent 5.1.10 (RFC 7505 §4)
   - the domain does not exist (NXDOMAIN)             -> NoSuchDomain, permanent 5.1.2
   - no MX records: the domain is its own implicit MX (RFC 5321 §5.1); no address either
     (or no MX host with an address)                  -> NoRoute, permanent 5.4.4
   - SERVFAIL, timeouts, unreachable nameservers      -> TemporaryDnsError, temporary 4.4.3

Results are cached per domain for the answers' TTL (capped, 5 min by default) and permanent negative
results for their negative TTL (RFC 2308 §5, capped at 1 min); temporary failures are never cached.
Concurrent lookups of one domain share a single query. Equal-preference shuffling happens on every
call, after the cache, so load still spreads over equal MXs (RFC 5321 §5.1).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.resolver
import trio

from relay.net.resolver import ip_text, parse_nameserver, parse_port, stub_resolver

if TYPE_CHECKING:
    from relay.config import DeliveryConfig

__all__ = [
    "MxHost",
    "NoRoute",
    "NoSuchDomain",
    "NullMX",
    "Relayhost",
    "Resolver",
    "Route",
    "RoutingError",
    "TemporaryDnsError",
    "parse_nameserver",
    "parse_relayhost",
    "route",
]

DEFAULT_LIFETIME = 10.0  # seconds for one whole lookup, all retries and nameservers included
DEFAULT_CACHE_TTL = 300.0  # cap on how long a positive answer is reused, whatever its TTL
DEFAULT_NEGATIVE_TTL = 60.0  # cap on how long a permanent negative answer is reused
DEFAULT_MAX_MX_HOSTS = 10  # RFC 5321 §5.1 lets a client limit the hosts it tries; Postfix resolves 5
_MAX_CACHE_ENTRIES = 10_000

_RNG = random.Random()


# ---- errors -------------------------------------------------------------------------------------


class RoutingError(Exception):
    """Why mail for a domain cannot be routed now.

    ``permanent`` errors bounce at once (a 5xx-class failure, the DSN carries ``enhanced``);
    the others are retried on the normal schedule (4xx-class). ``message`` is written for the
    member who reads the bounce or the queue, and names the domain and what DNS said.
    """

    permanent: bool = False
    enhanced: str = "4.4.3"

    def __init__(self, domain: str, message: str) -> None:
        super().__init__(message)
        self.domain = domain
        self.message = message


class NullMX(RoutingError):
    """The domain publishes a null MX: it accepts no mail (RFC 7505 §3; X.1.10 from RFC 7505 §4 and §6)."""

    permanent, enhanced = True, "5.1.10"


class NoSuchDomain(RoutingError):
    """The domain does not exist (NXDOMAIN) or is not a valid name (RFC 3463 X.1.2)."""

    permanent, enhanced = True, "5.1.2"


class NoRoute(RoutingError):
    """The domain exists but no host with an address takes its mail (RFC 3463 X.4.4 unable to route)."""

    permanent, enhanced = True, "5.4.4"


class TemporaryDnsError(RoutingError):
    """SERVFAIL, timeout, no reachable nameserver, or a relayhost that does not resolve (RFC 3463 X.4.3)."""

    permanent, enhanced = False, "4.4.3"


# ---- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # A-label form, lowercase, no trailing dot (or the IP literal itself)
    preference: int
    addresses: list[str]  # in the order to try them


@dataclass(frozen=True, slots=True)
class Route:
    domain: str
    hosts: list[MxHost]  # in the order to try them
    port: int
    relayhost: str = ""  # the configured relayhost when it replaced the domain's own MX
    implicit_mx: bool = False  # no MX record: the domain's own address was used (RFC 5321 §5.1)

    def targets(self) -> list[tuple[MxHost, str]]:
        """Every (host, address) pair in the order to try them."""
        return [(host, address) for host in self.hosts for address in host.addresses]


# ---- configuration parsing -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Relayhost:
    host: str  # a host name or an IP address (without brackets or the "IPv6:" tag)
    port: int
    mx_lookup: bool  # False for "[host]" (Postfix) and for IP literals


def parse_relayhost(text: str, *, default_port: int = 25) -> Relayhost:
    """``host``, ``host:port``, ``[host]``, ``[host]:port``, ``[2001:db8::1]:port`` (or ``[IPv6:...]``).

    Brackets mean "no MX lookup", as in Postfix's relayhost; an IP address never gets one.
    Raises ValueError naming what is wrong.
    """
    s = text.strip()
    if not s:
        raise ValueError("relayhost is empty")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"relayhost {text!r}: missing ']'")
        host, rest, mx_lookup = s[1:end], s[end + 1 :], False
        if host[:5].lower() == "ipv6:":  # RFC 5321 §4.1.3 address-literal tag
            host = host[5:]
    else:
        if s.count(":") > 1:
            raise ValueError(f"relayhost {text!r}: an IPv6 address must be bracketed, e.g. [2001:db8::1]:25")
        host, colon, port_text = s.partition(":")
        rest, mx_lookup = colon + port_text, True
    if rest and not rest.startswith(":"):
        raise ValueError(f"relayhost {text!r}: expected ':port' after the host")
    port = parse_port(rest[1:], f"relayhost {text!r}") if rest else default_port
    literal = ip_text(host)
    if literal is not None:
        return Relayhost(literal, port, mx_lookup=False)
    if ":" in host:
        raise ValueError(f"relayhost {text!r}: {host!r} is not an IP address")
    try:
        name = dns.name.from_text(host)
    except dns.exception.DNSException as exc:
        raise ValueError(f"relayhost {text!r}: {host!r} is not a valid host name ({exc})") from None
    if len(name.labels) < 2:
        raise ValueError(f"relayhost {text!r}: the host name is empty")
    return Relayhost(_display(name), port, mx_lookup)


# ---- internal lookup results (immutable, so they can be cached and shared) ------------------------


@dataclass(frozen=True, slots=True)
class _Host:
    name: str
    preference: int
    v4: tuple[str, ...]
    v6: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Hosts:
    hosts: tuple[_Host, ...]  # sorted by preference
    ttl: float
    implicit_mx: bool = False


@dataclass(frozen=True, slots=True)
class _Failure:
    kind: type[RoutingError]
    message: str
    ttl: float  # 0 for temporary failures: never cached

    def error(self, domain: str) -> RoutingError:
        return self.kind(domain, self.message)  # a fresh exception per raise (no growing traceback)


_Result = _Hosts | _Failure
_Status = Literal["ok", "nxdomain", "nodata", "temporary"]


@dataclass(frozen=True, slots=True)
class _Addresses:
    status: _Status
    v4: tuple[str, ...] = ()
    v6: tuple[str, ...] = ()
    ttl: float = 0.0
    detail: str = ""  # what went wrong, for the user-facing message


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    result: _Result | None = None


def _display(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _negative_ttl(exc: dns.resolver.NXDOMAIN | dns.resolver.NoAnswer) -> float:
    """RFC 2308 §5: a negative answer lives for min(SOA TTL, SOA MINIMUM) from the authority section."""
    # dnspython keeps the response(s) in the exception's kwargs (its accessors are untyped).
    response: object = exc.kwargs.get("response")
    responses: object = exc.kwargs.get("responses")
    if response is None and isinstance(responses, dict) and responses:
        response = next(iter(responses.values()))
    if not isinstance(response, dns.message.QueryMessage):
        return 0.0
    try:
        return float(response.resolve_chaining().minimum_ttl)
    except dns.exception.DNSException:
        return 0.0


def _special_addresses(name: dns.name.Name) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """Names that resolve without DNS: localhost names (RFC 6761 §6.3) and an IP address written as an MX
    target. Both only make sense on a test or private network; the public DNS has neither."""
    text = _display(name)
    if text == "localhost" or text.endswith(".localhost"):
        return ("127.0.0.1",), ("::1",)
    literal = ip_text(text)
    if literal is None:
        return None
    return ((literal,), ()) if ":" not in literal else ((), (literal,))


class Resolver:
    """dnspython's async stub resolver (it runs on Trio through sniffio), set up for mail routing.

    ``nameservers``: ``"host"`` or ``"host:port"`` IP addresses (``delivery.nameservers``); empty uses
    the system resolver from /etc/resolv.conf. Names are always absolute: no search list, no ndots
    (RFC 5321 §5.1 looks the domain up as written). ``lifetime`` bounds one whole lookup.
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        lifetime: float = DEFAULT_LIFETIME,
        prefer_ipv6: bool = False,
        max_mx_hosts: int = DEFAULT_MAX_MX_HOSTS,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # No usable /etc/resolv.conf: every lookup fails as a temporary error naming the cause, so mail
        # waits in the queue instead of the relay refusing to start. This class caches whole routes.
        resolver = stub_resolver(dns.asyncresolver.Resolver, nameservers, lifetime=lifetime)
        self._resolver = resolver
        self.lifetime = lifetime
        self.prefer_ipv6 = prefer_ipv6
        self.max_mx_hosts = max_mx_hosts
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, _Result]] = {}
        self._pending: dict[str, _Pending] = {}
        self.queries = 0  # DNS lookups started (each A, AAAA and MX counts), for tests and metrics

    @classmethod
    def from_config(cls, delivery: DeliveryConfig, *, lifetime: float = DEFAULT_LIFETIME) -> Resolver:
        return cls(delivery.nameservers, lifetime=lifetime)

    async def addresses(self, host: str) -> list[str]:
        """A and AAAA of ``host`` (relay.net.egress resolves HTTP peers with this); [] when it has none.

        Raises ValueError for a name that cannot be one, a RoutingError when DNS says there is none."""
        try:
            name = dns.name.from_text(host.rstrip(".") + ".")
        except dns.exception.DNSException as exc:
            raise ValueError(f"not a host name ({exc})") from None
        result = await self._host(name)
        if isinstance(result, _Failure):
            raise result.error(host)
        return [a for h in result.hosts for a in (*h.v4, *h.v6)]

    # ---- cache ----

    async def _cached(self, key: str, compute: Callable[[], Awaitable[_Result]]) -> _Result:
        while True:
            entry = self._cache.get(key)
            if entry is not None:
                expires, cached = entry
                if self._clock() < expires:
                    return cached
                del self._cache[key]
            pending = self._pending.get(key)
            if pending is None:
                break
            # Someone is looking this name up right now: share their answer (even a temporary failure).
            await pending.done.wait()
            if pending.result is not None:
                return pending.result
            # They were cancelled before an answer; look it up ourselves.
        pending = _Pending()
        self._pending[key] = pending
        try:
            result = await compute()
            pending.result = result
        finally:
            del self._pending[key]
            pending.done.set()
        if result.ttl > 0:
            self._store(key, result)
        return result

    def _store(self, key: str, result: _Result) -> None:
        now = self._clock()
        if len(self._cache) >= _MAX_CACHE_ENTRIES:
            for stale in [k for k, (expires, _) in self._cache.items() if expires <= now]:
                del self._cache[stale]
            while len(self._cache) >= _MAX_CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]  # oldest insertion first
        self._cache[key] = (now + result.ttl, result)

    def _positive_ttl(self, ttl: float) -> float:
        return max(0.0, min(ttl, self.cache_ttl))

    def _negative(self, ttl: float) -> float:
        return max(0.0, min(ttl, self.negative_ttl, self.cache_ttl))

    # ---- single lookups ----

    async def _rrset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer:
        self.queries += 1
        return await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=True)

    def _temporary_detail(self, exc: dns.exception.DNSException) -> str:
        if isinstance(exc, dns.exception.Timeout):
            return f"no DNS answer within {self.lifetime:g} s"
        if isinstance(exc, dns.resolver.NoNameservers):
            if not self._resolver.nameservers:
                return "no DNS server is configured (set delivery.nameservers or /etc/resolv.conf)"
            return "the DNS servers failed to answer (SERVFAIL, refused or unreachable)"
        return f"DNS error ({exc})"

    async def _address_rrset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Addresses:
        try:
            answer = await self._rrset(name, rdtype)
        except dns.resolver.NXDOMAIN as exc:
            return _Addresses("nxdomain", ttl=_negative_ttl(exc), detail="no such host")
        except dns.resolver.NoAnswer as exc:
            return _Addresses("nodata", ttl=_negative_ttl(exc), detail="no A/AAAA record")
        except dns.exception.DNSException as exc:
            return _Addresses("temporary", detail=self._temporary_detail(exc))
        values = tuple(rdata.to_text() for rdata in answer)
        ttl = float(answer.chaining_result.minimum_ttl)
        if rdtype == dns.rdatatype.A:
            return _Addresses("ok", v4=values, ttl=ttl)
        return _Addresses("ok", v6=values, ttl=ttl)

    async def _addresses(self, name: dns.name.Name) -> _Addresses:
        """A and AAAA together: usable if either has an address."""
        special = _special_addresses(name)
        if special is not None:
            return _Addresses("ok", v4=special[0], v6=special[1], ttl=self.cache_ttl)
        found: dict[dns.rdatatype.RdataType, _Addresses] = {}

        async def one(rdtype: dns.rdatatype.RdataType) -> None:
            found[rdtype] = await self._address_rrset(name, rdtype)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, dns.rdatatype.A)
            nursery.start_soon(one, dns.rdatatype.AAAA)
        a, aaaa = found[dns.rdatatype.A], found[dns.rdatatype.AAAA]
        ok = [r for r in (a, aaaa) if r.status == "ok"]
        if ok:
            return _Addresses("ok", v4=a.v4, v6=aaaa.v6, ttl=min(r.ttl for r in ok))
        for status in ("temporary", "nxdomain"):
            for r in (a, aaaa):
                if r.status == status:
                    return r
        return _Addresses("nodata", ttl=min(a.ttl, aaaa.ttl), detail="no A/AAAA record")

    # ---- routes ----

    async def _host_result(self, name: dns.name.Name) -> _Result:
        """A host used as is (no MX lookup): a bracketed relayhost."""
        shown = _display(name)
        found = await self._addresses(name)
        if found.status == "ok":
            host = _Host(shown, 0, found.v4, found.v6)
            return _Hosts((host,), self._positive_ttl(found.ttl))
        if found.status == "temporary":
            return _Failure(TemporaryDnsError, f"looking up the address of {shown} failed: {found.detail}", 0.0)
        if found.status == "nxdomain":
            return _Failure(NoSuchDomain, f"{shown} does not exist in DNS (NXDOMAIN)", self._negative(found.ttl))
        return _Failure(NoRoute, f"{shown} has no A/AAAA address", self._negative(found.ttl))

    async def _implicit_mx(self, name: dns.name.Name, nodata_ttl: float) -> _Result:
        # RFC 5321 §5.1: with no MX records, the domain itself is the mail host ("implicit MX"),
        # with preference 0. A domain with neither MX nor address records cannot receive mail.
        shown = _display(name)
        found = await self._addresses(name)
        if found.status == "ok":
            host = _Host(shown, 0, found.v4, found.v6)
            return _Hosts((host,), self._positive_ttl(min(found.ttl, nodata_ttl)), implicit_mx=True)
        if found.status == "temporary":
            return _Failure(
                TemporaryDnsError,
                f"{shown} has no MX record and looking up its own address failed: {found.detail}",
                0.0,
            )
        if found.status == "nxdomain":  # removed between the two lookups
            return _Failure(NoSuchDomain, f"{shown} does not exist in DNS (NXDOMAIN)", self._negative(found.ttl))
        return _Failure(
            NoRoute,
            f"{shown} has no MX record and no A/AAAA address: it cannot receive mail",
            self._negative(min(found.ttl, nodata_ttl)),
        )

    async def _mx_result(self, name: dns.name.Name) -> _Result:
        shown = _display(name)
        try:
            answer = await self._rrset(name, dns.rdatatype.MX)
        except dns.resolver.NXDOMAIN as exc:
            ttl = self._negative(_negative_ttl(exc))
            return _Failure(NoSuchDomain, f"{shown} does not exist in DNS (NXDOMAIN)", ttl)
        except dns.resolver.NoAnswer as exc:
            return await self._implicit_mx(name, _negative_ttl(exc))
        except dns.exception.DNSException as exc:
            return _Failure(
                TemporaryDnsError, f"looking up the MX records of {shown} failed: {self._temporary_detail(exc)}", 0.0
            )
        mx_ttl = float(answer.chaining_result.minimum_ttl)
        best: dict[dns.name.Name, int] = {}
        for rdata in answer:
            mx = cast(dns.rdtypes.ANY.MX.MX, rdata)
            exchange, preference = mx.exchange, mx.preference
            if exchange not in best or preference < best[exchange]:
                best[exchange] = preference
        # RFC 7505 §3: a null MX is a single "MX 0 ." and says the domain accepts no mail. "." is never a
        # deliverable target (§4: clients must not try to deliver to it), so a set with only "." targets is treated as
        # a null MX even if malformed (another preference); "." next to real hosts is just skipped.
        targets = sorted(((pref, exchange) for exchange, pref in best.items() if exchange != dns.name.root),
                         key=lambda t: (t[0], t[1].to_text()))
        if not targets:
            return _Failure(NullMX, f"{shown} has a null MX (RFC 7505): it accepts no mail", self._negative(mx_ttl))
        targets = targets[: self.max_mx_hosts]
        found: list[_Addresses | None] = [None] * len(targets)

        async def one(i: int, exchange: dns.name.Name) -> None:
            found[i] = await self._addresses(exchange)

        async with trio.open_nursery() as nursery:
            for i, (_, exchange) in enumerate(targets):
                nursery.start_soon(one, i, exchange)
        hosts: list[_Host] = []
        ok_ttls = [mx_ttl]
        failed_ttls = [mx_ttl]
        problems: list[str] = []
        temporary = False
        for (pref, exchange), result in zip(targets, found, strict=True):
            assert result is not None
            if result.status == "ok":
                hosts.append(_Host(_display(exchange), pref, result.v4, result.v6))
                ok_ttls.append(result.ttl)
            else:
                # RFC 5321 §5.1: an MX host whose address cannot be found is skipped; the others are tried.
                temporary = temporary or result.status == "temporary"
                failed_ttls.append(result.ttl)
                problems.append(f"{_display(exchange)}: {result.detail}")
        summary = "; ".join(problems)
        if hosts:
            # A degraded answer (some hosts skipped for now) is reused only briefly.
            ttl = self._negative(min(ok_ttls)) if temporary else self._positive_ttl(min(ok_ttls))
            return _Hosts(tuple(hosts), ttl)
        if temporary:
            return _Failure(TemporaryDnsError, f"none of the MX hosts of {shown} could be looked up now ({summary})",
                            0.0)
        # RFC 5321 §5.1: MX records present but none usable must be reported as an error.
        return _Failure(NoRoute, f"none of the MX hosts of {shown} has an address ({summary})",
                        self._negative(min(failed_ttls)))

    async def _mx(self, name: dns.name.Name) -> _Result:
        return await self._cached("mx:" + _display(name), lambda: self._mx_result(name))

    async def _host(self, name: dns.name.Name) -> _Result:
        return await self._cached("host:" + _display(name), lambda: self._host_result(name))


def _address_literal(domain: str) -> str | None:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3) -> the address; else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    return ip_text(inner)


def _build(result: _Hosts, rng: random.Random, prefer_ipv6: bool) -> list[MxHost]:
    hosts: list[MxHost] = []
    group: list[MxHost] = []

    def flush() -> None:
        rng.shuffle(group)  # RFC 5321 §5.1: random order among equal preferences spreads the load
        hosts.extend(group)
        group.clear()

    for host in result.hosts:
        if group and group[0].preference != host.preference:
            flush()
        v4, v6 = list(host.v4), list(host.v6)
        rng.shuffle(v4)
        rng.shuffle(v6)
        group.append(MxHost(host.name, host.preference, v6 + v4 if prefer_ipv6 else v4 + v6))
    flush()
    return hosts


async def route(
    domain: str,
    *,
    resolver: Resolver,
    port: int = 25,
    relayhost: str = "",
    rng: random.Random | None = None,
) -> Route:
    """Where to deliver mail for ``domain``; raises a RoutingError subclass when nowhere (see the module doc).

    ``port`` is the destination port (``delivery.port``) and the relayhost's default port;
    ``rng`` orders equal-preference hosts (tests pass a seeded one).
    """
    rng = rng or _RNG
    shown = domain.strip().rstrip(".").lower()
    if relayhost:
        return await _via_relayhost(shown, relayhost, resolver, port, rng)
    literal = _address_literal(shown)
    if literal is not None:
        return Route(shown, [MxHost(literal, 0, [literal])], port)
    try:
        name = dns.name.from_text(shown)
    except dns.exception.DNSException as exc:
        raise NoSuchDomain(domain, f"{domain!r} is not a valid domain name ({exc})") from None
    if not shown or len(name.labels) < 2:
        raise NoSuchDomain(domain, f"{domain!r} is not a valid domain name")
    result = await resolver._mx(name)
    if isinstance(result, _Failure):
        raise result.error(shown)
    return Route(shown, _build(result, rng, resolver.prefer_ipv6), port, implicit_mx=result.implicit_mx)


async def _via_relayhost(domain: str, relayhost: str, resolver: Resolver, port: int, rng: random.Random) -> Route:
    try:
        relay = parse_relayhost(relayhost, default_port=port)
    except ValueError as exc:
        # A configuration mistake, not the recipient's: keep the mail queued and say why.
        raise TemporaryDnsError(domain, f"delivery.relayhost is invalid: {exc}") from None
    if ip_text(relay.host) is not None:
        return Route(domain, [MxHost(relay.host, 0, [relay.host])], relay.port, relayhost=relayhost)
    name = dns.name.from_text(relay.host)
    result = await (resolver._mx(name) if relay.mx_lookup else resolver._host(name))
    if isinstance(result, _Failure):
        # Never permanent: the smarthost's DNS is the operator's to fix, the recipient is not at fault.
        raise TemporaryDnsError(domain, f"relayhost {relayhost}: {result.message}; mail waits until it is fixed")
    return Route(domain, _build(result, rng, resolver.prefer_ipv6), relay.port, relayhost=relayhost)
