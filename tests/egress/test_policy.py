"""relay.net.egress: which addresses the relay may connect to, and that HTTP connects to the checked one."""

from __future__ import annotations

import functools

import pytest
import trio

from relay.net.egress import Egress, EgressRefused, why_not_global

REFUSED = {
    "0.0.0.0": "unspecified", "::": "unspecified", "127.0.0.1": "loopback", "::1": "loopback",
    "::ffff:127.0.0.1": "loopback", "2002:7f00:1::1": "loopback", "64:ff9b::7f00:1": "loopback",
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "loopback",  # Teredo, client 127.0.0.1 (obfuscated)
    "10.0.0.1": "private", "172.16.5.4": "private", "192.168.1.1": "private", "::ffff:10.1.2.3": "private",
    "100.64.0.1": "carrier-grade NAT", "169.254.169.254": "link-local", "fe80::1": "link-local",
    "fd00::1": "private", "224.0.0.1": "multicast", "ff02::1": "multicast", "233.252.0.1": "multicast",
    "240.0.0.1": "reserved", "192.0.2.1": "private", "2001:db8::1": "private", "198.18.0.1": "private",
}


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_non_global_addresses_are_refused_with_the_reason(address: str) -> None:
    reason = why_not_global(address)
    assert reason is not None and reason.startswith(REFUSED[address]), (address, reason)
    assert Egress().refusal(address) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "1.1.1.1", "2a00:1450:4001::1"])
def test_global_addresses_pass(address: str) -> None:
    assert why_not_global(address) is None


def test_the_test_setting_admits_loopback_only() -> None:
    egress = Egress(allow_loopback=True)
    assert egress.allowed(["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.0.0.1", "0.0.0.0", "169.254.169.254"]) == [
        "127.0.0.1", "::1", "::ffff:127.0.0.1"]


def test_http_scheme_only_in_dev_or_to_a_loopback_test_peer() -> None:
    with pytest.raises(EgressRefused, match="must be an https URL"):
        Egress().check_url("http://127.0.0.1:8080/hook")
    with pytest.raises(EgressRefused, match="must be an https URL"):
        Egress(allow_loopback=True).check_url("http://example.com/hook")
    assert Egress(allow_loopback=True).check_url("http://127.0.0.1:9/x") == "http://127.0.0.1:9/x"
    assert Egress(allow_http=True).check_url("http://example.com/") == "http://example.com/"
    with pytest.raises(EgressRefused, match="must be an https URL"):
        Egress().check_url("ftp://example.com/")


@pytest.mark.trio
async def test_http_client_never_connects_to_a_refused_address() -> None:
    """A listener on loopback that the default policy must never reach (127.0.0.1 and its IPv6 forms)."""
    hits = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal hits
        hits += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with Egress().http_client(timeout=2) as client:
            for url in (f"https://127.0.0.1:{port}/", f"https://localhost:{port}/", f"https://[::ffff:127.0.0.1]:{port}/",
                        f"https://0.0.0.0:{port}/"):
                with pytest.raises(Exception, match="refusing to connect"):
                    await client.get(url)
        assert hits == 0
        async with Egress(allow_loopback=True).http_client(timeout=2) as client:
            with pytest.raises(Exception):  # noqa: B017 - the handler hangs up; what matters is that it was reached
                await client.get(f"http://127.0.0.1:{port}/")
        assert hits == 1
        nursery.cancel_scope.cancel()
