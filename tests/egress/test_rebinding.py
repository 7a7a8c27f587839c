"""DNS rebinding against relay.net.egress, with real DNS (Knot): the address that was checked is the
address connected to; the name is never resolved a second time between check and connect."""

from __future__ import annotations

import functools
from collections.abc import Callable

import httpx
import pytest
import trio

from relay.delivery.routing import Resolver
from relay.net.egress import Egress
from tests.peers.knot import KnotServer
from tests.peers.knot import knot_fixture as knot_fixture  # registers the ``knot`` fixture


async def http_server(nursery: trio.Nursery, seen: list[bytes]) -> int:
    """A tiny HTTP/1.1 server on 127.0.0.1: records each request head, answers 200."""
    async def handler(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        seen.append(head)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.mark.trio
async def test_rebinding_to_an_internal_address_is_refused_and_never_connected(
        knot: Callable[..., KnotServer]) -> None:
    dns = knot({"rebind.test": ["hook 0 A 127.0.0.1"]})  # TTL 0: nothing may cache it
    # The test setting admits loopback (where our server is); every other internal range stays refused.
    egress = Egress(allow_loopback=True, allow_http=True, resolver=Resolver(dns.nameservers, cache_ttl=0))
    seen: list[bytes] = []
    async with trio.open_nursery() as nursery:
        port = await http_server(nursery, seen)
        url = f"http://hook.rebind.test:{port}/path"
        before = dns.queries("rebind.test").get("A", 0)
        async with egress.http_client(timeout=5) as client:
            for _ in range(3):
                r = await client.get(url, headers={"connection": "close"})
                assert r.status_code == 200 and r.text == "ok"
        # Connected to the checked address, with the name kept for Host (and SNI over https).
        assert len(seen) == 3 and all(b"\r\nhost: hook.rebind.test:" in h.lower() for h in seen)
        # One A lookup per connection: the check's answer is the connect target, nobody resolves again.
        assert dns.queries("rebind.test").get("A", 0) - before == 3

        # The attacker rebinds the name to internal addresses: refused before any connection.
        for internal in ("10.0.0.1", "169.254.169.254", "0.0.0.0"):
            dns.update("rebind.test", [f"hook 0 A {internal}"])
            async with egress.http_client(timeout=5) as client:
                with pytest.raises(httpx.ConnectError, match=f"refusing to connect .*{internal}"):
                    await client.get(url)
        assert len(seen) == 3
        # Several answers: the internal ones are dropped, only the checked public/allowed one is used.
        dns.update("rebind.test", ["hook 0 A 10.0.0.1", "hook 0 A 127.0.0.1"])
        assert await egress.resolve("hook.rebind.test", port) == ["127.0.0.1"]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_without_the_test_setting_loopback_names_are_refused_too(knot: Callable[..., KnotServer]) -> None:
    dns = knot({"rebind.test": ["hook 0 A 127.0.0.1", "hook 0 AAAA ::ffff:127.0.0.1"]})
    egress = Egress(allow_http=True, resolver=Resolver(dns.nameservers, cache_ttl=0))
    async with egress.http_client(timeout=5) as client:
        with pytest.raises(httpx.ConnectError, match="127.0.0.1 is loopback"):
            await client.get("http://hook.rebind.test:9/")
