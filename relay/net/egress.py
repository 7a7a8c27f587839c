"""Egress: the one address policy for every connection the relay opens on someone's behalf (DESIGN §5).

MX delivery, member webhooks, OAuth (PDS, authorization server), did:web documents and handle
well-knowns all go through here. The rule is the same everywhere:

1. resolve the name once;
2. refuse every address that is not globally routable: unspecified, loopback, private (RFC 1918),
   CGNAT (RFC 6598), link-local, ULA (RFC 4193), multicast, reserved and documentation ranges,
   with the IPv6 forms that carry an IPv4 address unwrapped first (IPv4-mapped ``::ffff:a.b.c.d``,
   6to4 ``2002::/16`` RFC 3056, Teredo ``2001::/32`` RFC 4380, NAT64 ``64:ff9b::/96`` RFC 6052), so
   ``::ffff:127.0.0.1`` or ``2002:7f00:1::`` is judged as 127.0.0.1;
3. connect to exactly the address that was checked, never re-resolving the name (a second lookup
   is where DNS rebinding answers with an internal address). For HTTP the pinned connection keeps
   the URL's host for TLS SNI, certificate checking and the Host header.

``http://`` URLs are allowed only in ``--dev``. The test suite reaches its loopback peers through
one explicit setting, ``[testing] allow_loopback_peers``, which admits loopback addresses (and
``http://`` to them) and nothing else; it is never on by default.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpcore
import httpx
import trio

from relay.delivery.routing import Resolver, RoutingError

if TYPE_CHECKING:
    from relay.config import Config

log = logging.getLogger("relay.net.egress")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class EgressRefused(Exception):
    """A connection the policy does not allow; the message names the host, the address and why."""


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 transition form carries (mapped, 6to4, Teredo client, NAT64), else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]  # (server, client): the client is where packets end up
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def why_not_global(address: str) -> str | None:
    """Why ``address`` is not a globally routable unicast address, or None when it is one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    inner = unwrap(ip)
    shown = "" if inner == ip else f" (carries {inner})"
    for reason, hit in (("unspecified", inner.is_unspecified), ("loopback", inner.is_loopback),
                        ("link-local", inner.is_link_local), ("multicast", inner.is_multicast),
                        ("carrier-grade NAT", isinstance(inner, ipaddress.IPv4Address) and inner in _CGNAT),
                        ("reserved", inner.is_reserved), ("private", inner.is_private),
                        ("not globally routable", not inner.is_global)):
        if hit:
            return reason + shown
    if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None and not ip.teredo[0].is_global:
        return f"not globally routable (Teredo server {ip.teredo[0]})"
    return None


@dataclass(frozen=True, slots=True)
class Egress:
    """The policy itself: which addresses and URL schemes the relay may connect to.

    ``allow_loopback``: loopback addresses too (``[testing] allow_loopback_peers``, and ``--dev``);
    ``allow_http``: ``http://`` URLs (``--dev``; with ``allow_loopback`` also http to loopback hosts).
    ``resolver`` looks names up (dnspython, ``delivery.nameservers``); None: the system resolver.
    """

    allow_loopback: bool = False
    allow_http: bool = False
    resolver: Resolver | None = None
    timeout: float = 10.0

    @classmethod
    def from_config(cls, cfg: Config, *, resolver: Resolver | None = None) -> Egress:
        if resolver is None and cfg.delivery.nameservers:
            resolver = Resolver(cfg.delivery.nameservers)
        return cls(allow_loopback=cfg.dev or cfg.testing.allow_loopback_peers, allow_http=cfg.dev,
                   resolver=resolver, timeout=cfg.identity.timeout)

    # ---- pure checks -------------------------------------------------------------------------

    def refusal(self, address: str) -> str | None:
        """Why a connection to ``address`` is refused, or None when it is allowed."""
        reason = why_not_global(address)
        if reason is None:
            return None
        if self.allow_loopback and reason.startswith("loopback"):
            return None
        return reason

    def allowed(self, addresses: Iterable[str]) -> list[str]:
        return [a for a in addresses if self.refusal(a) is None]

    def check_url(self, url: str, *, what: str = "URL") -> str:
        """``url`` if its scheme may be used (https; http only in --dev or to a loopback test peer)."""
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise EgressRefused(f"{what} {url!r} names no host")
        if parts.scheme == "https":
            return url
        if parts.scheme == "http" and (self.allow_http or (self.allow_loopback and _loopback_name(parts.hostname))):
            return url
        raise EgressRefused(f"{what} {url!r} must be an https URL")

    # ---- resolution --------------------------------------------------------------------------

    async def resolve(self, host: str, port: int) -> list[str]:
        """The allowed addresses of ``host``; EgressRefused naming every refused one when none is left."""
        literal = _literal(host)
        if literal is not None:
            found = [literal]
        elif _loopback_name(host):
            found = ["127.0.0.1", "::1"]  # RFC 6761 §6.3: never asked of DNS
        else:
            looked_up: list[str] | None = None
            with trio.move_on_after(self.timeout):
                looked_up = await self._lookup(host, port)
            if looked_up is None:
                raise EgressRefused(f"{host}: no address within {self.timeout:g} s")
            found = looked_up
        if not found:
            raise EgressRefused(f"{host}: no address")
        usable = self.allowed(found)
        if not usable:
            why = "; ".join(f"{a} is {self.refusal(a)}" for a in found)
            raise EgressRefused(f"{host}: refusing to connect ({why})")
        return usable

    async def _lookup(self, host: str, port: int) -> list[str]:
        if self.resolver is not None:
            try:
                return await self.resolver.addresses(host)
            except (ValueError, RoutingError) as exc:
                raise EgressRefused(f"{host}: {exc}") from None
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            raise EgressRefused(f"{host}: cannot resolve ({exc})") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    # ---- HTTP --------------------------------------------------------------------------------

    def http_client(self, **kw: Any) -> httpx.AsyncClient:
        """An httpx client whose every connection goes through this policy (no redirects followed)."""
        kw.setdefault("follow_redirects", False)
        kw.setdefault("headers", {"user-agent": "atmosphere-relay"})
        return httpx.AsyncClient(transport=PinnedTransport(self), **kw)

    def http_factory(self, timeout: float) -> Callable[[], httpx.AsyncClient]:
        return lambda: self.http_client(timeout=timeout)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport over a network backend that resolves through the Egress policy and
    connects to the checked address; TLS still uses the URL's host (SNI, certificate, Host header)."""

    def __init__(self, egress: Egress, *, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(verify=verify, trust_env=False)
        ctx = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        self.egress = egress
        # The pool httpx builds, rebuilt with our backend (httpx exposes no network_backend option).
        self._pool = httpcore.AsyncConnectionPool(ssl_context=ctx, http1=True, http2=False,
                                                  network_backend=_PinnedBackend(egress))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            self.egress.check_url(str(request.url))
        except EgressRefused as exc:
            raise httpx.ConnectError(str(exc), request=request) from None
        return await super().handle_async_request(request)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, egress: Egress) -> None:
        self._egress = egress
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore API)
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._egress.resolve(host, port)
        except EgressRefused as exc:
            log.warning("outbound connection refused: %s", exc)
            raise httpcore.ConnectError(str(exc)) from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not an outbound destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def _loopback_name(host: str) -> bool:
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    literal = _literal(name)
    return literal is not None and ipaddress.ip_address(literal).is_loopback


__all__ = ["Egress", "EgressRefused", "PinnedTransport", "unwrap", "why_not_global"]
