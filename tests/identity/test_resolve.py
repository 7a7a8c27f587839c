"""Handle -> DID -> document, bidirectional confirmation, cache, errors (local PLC + PDS; fakes for the rest)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from relay.config import Config, IdentityConfig, TestingConfig
from relay.identity import (
    DidNotFound,
    DidResolver,
    HandleMismatch,
    IdentityError,
    IdentityResolver,
    InvalidHandle,
    NoPds,
    StandardHandleResolver,
    UnknownHandle,
    normalize_handle,
)
from tests.localpds.fixture import LocalPds

DID = "did:plc:abcdefghijklmnopqrstuvwx"


def local_resolver(pds: LocalPds) -> IdentityResolver:
    return IdentityResolver.from_config(Config(identity=IdentityConfig(
        plc_url=pds.plc_url, handle_resolution="well-known-at", handle_resolver_url=pds.pds_url,
        ), testing=TestingConfig(allow_loopback_peers=True)))


@pytest.mark.trio
async def test_handle_resolves_against_the_local_network(local_pds: LocalPds) -> None:
    ident = await local_resolver(local_pds).resolve("@" + local_pds.handle.upper())
    assert ident.did == local_pds.did and ident.handle == local_pds.handle
    assert ident.pds_url == local_pds.pds_url
    by_did = await local_resolver(local_pds).resolve(local_pds.did)
    assert by_did.handle == local_pds.handle


@pytest.mark.trio
async def test_unknown_handle_and_unknown_did(local_pds: LocalPds) -> None:
    resolver = local_resolver(local_pds)
    with pytest.raises(UnknownHandle, match="nobody.test does not resolve"):
        await resolver.resolve("nobody.test")
    with pytest.raises(DidNotFound, match="no DID document"):
        await resolver.resolve(DID)


@pytest.mark.trio
async def test_handle_claiming_someone_elses_did_is_a_mismatch(local_pds: LocalPds) -> None:
    class Liar:
        async def resolve(self, handle: str) -> str | None:
            return local_pds.did

    base = local_resolver(local_pds)
    resolver = IdentityResolver(Liar(), base.dids, egress=base.egress)
    with pytest.raises(HandleMismatch, match="does not name mallory.test back"):
        await resolver.resolve("mallory.test")


def test_handle_syntax() -> None:
    assert normalize_handle(" @Alice.Example.COM. ") == "alice.example.com"
    for bad in ("alice", "alice..example.com", "-a.com", "a.1com", "a b.com", ""):
        with pytest.raises(InvalidHandle):
            normalize_handle(bad)


def _mock(docs: dict[str, Any], calls: list[str]) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if request.url.path == "/.well-known/atproto-did":
            return httpx.Response(200, text=DID + "\n") if request.url.host == "alice.example.com" else httpx.Response(404)
        doc = docs.get(request.url.path.lstrip("/"))
        return httpx.Response(200, json=doc) if doc else httpx.Response(404)
    return lambda: httpx.AsyncClient(transport=httpx.MockTransport(handler))


class FakeTxt:
    def __init__(self, records: dict[str, list[tuple[str, ...]]]) -> None:
        self.records = records

    async def txt(self, name: str) -> list[tuple[str, ...]]:
        return self.records.get(name, [])

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return []


def _doc(handle: str, pds: str | None = "https://pds.example.net") -> dict[str, Any]:
    doc: dict[str, Any] = {"id": DID, "alsoKnownAs": [f"at://{handle}"], "service": []}
    if pds:
        doc["service"] = [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}]
    return doc


@pytest.mark.trio
async def test_standard_resolution_dns_then_https_and_ttl_cache() -> None:
    calls: list[str] = []
    http = _mock({DID: _doc("alice.example.com")}, calls)
    now = [1000.0]
    resolver = IdentityResolver(StandardHandleResolver(FakeTxt({}), http), DidResolver("https://plc.test", http),
                                ttl=60, clock=lambda: now[0])
    ident = await resolver.resolve("alice.example.com")
    assert ident.did == DID and ident.pds_url == "https://pds.example.net"
    assert calls == ["https://alice.example.com/.well-known/atproto-did", f"https://plc.test/{DID}"]
    await resolver.resolve("alice.example.com")
    assert len(calls) == 2  # cached
    now[0] += 61
    await resolver.resolve("alice.example.com")
    assert len(calls) == 4  # expired

    calls.clear()
    dns_first = IdentityResolver(StandardHandleResolver(FakeTxt({"_atproto.alice.example.com": [(f"did={DID}",)]}),
                                                        http), DidResolver("https://plc.test", http))
    assert (await dns_first.resolve("alice.example.com")).did == DID
    assert calls == [f"https://plc.test/{DID}"]  # DNS answered; no https well-known fetch


@pytest.mark.trio
async def test_did_without_pds_and_http_pds_refused() -> None:
    for doc, match in ((_doc("alice.example.com", None), "names no PDS"),
                       (_doc("alice.example.com", "http://pds.example.net"), "must be an https URL")):
        http = _mock({DID: doc}, [])
        resolver = IdentityResolver(StandardHandleResolver(FakeTxt({}), http), DidResolver("https://plc.test", http))
        with pytest.raises(NoPds, match=match):
            await resolver.resolve("alice.example.com")


@pytest.mark.trio
async def test_timeout_is_an_identity_error() -> None:
    import trio

    class Slow:
        async def resolve(self, handle: str) -> str | None:
            await trio.sleep(5)
            return None

    resolver = IdentityResolver(Slow(), DidResolver("https://plc.test", _mock({}, [])), timeout=0.05)
    with pytest.raises(IdentityError, match="timed out"):
        await resolver.resolve("slow.example.com")
