"""atproto identity: handle -> DID -> DID document -> PDS, bidirectionally confirmed (DESIGN §3).

* Handle -> DID: DNS TXT ``_atproto.<handle>`` (``did=...``) and ``https://<handle>/.well-known/atproto-did``
  (``StandardHandleResolver``). Tests inject ``WellKnownAtResolver``, which asks one loopback server with
  ``Host: <handle>``, so no DNS query ever leaves the machine.
* DID -> document: ``did:plc`` from the PLC directory (configurable URL), ``did:web`` from
  ``https://<host>/.well-known/did.json``.
* A handle counts only when the DID document names it back (``alsoKnownAs: at://<handle>``).
* Results are cached for ``identity.cache_ttl``; every request has a timeout and a byte cap
  (``relay.net.fetch``), every lookup an overall deadline; every failure is an ``IdentityError`` whose
  message a member can act on.
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import trio

from relay.dns.checks import DnsLookup
from relay.net.egress import Egress, EgressRefused
from relay.net.fetch import DOCUMENT_BYTES, METADATA_BYTES, FetchError, fetch, get_object

if TYPE_CHECKING:
    from relay.config import Config
    from relay.dns.checks import TxtLookup

_HANDLE = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_DID = re.compile(r"did:(plc:[a-z2-7]{24}|web:[a-zA-Z0-9._%:-]+)")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class IdentityError(Exception):
    """Resolution failed; ``code`` is stable, the message says what is wrong."""

    code = "IDENTITY"


class InvalidHandle(IdentityError):
    code = "INVALID_HANDLE"


class UnknownHandle(IdentityError):
    code = "UNKNOWN_HANDLE"


class DidNotFound(IdentityError):
    code = "DID_NOT_FOUND"


class NoPds(IdentityError):
    code = "NO_PDS"


class HandleMismatch(IdentityError):
    code = "HANDLE_MISMATCH"


@dataclass(frozen=True, slots=True)
class Identity:
    did: str
    handle: str | None  # None when the document names no handle that resolves back to this DID
    pds_url: str
    doc: dict[str, Any] = field(repr=False, compare=False)


def normalize_handle(value: str) -> str:
    """``@Alice.Example.com`` -> ``alice.example.com``; ``InvalidHandle`` when it cannot be a handle."""
    handle = value.strip().lstrip("@").rstrip(".").lower()
    if not _HANDLE.fullmatch(handle):
        raise InvalidHandle(f"{value!r} is not a handle (expected something like alice.bsky.social)")
    return handle


def is_did(value: str) -> bool:
    return bool(_DID.fullmatch(value))


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, egress: Egress, what: str) -> str:
    """Only https URLs (http only in --dev or to a loopback test peer, relay.net.egress); returns the URL."""
    try:
        return egress.check_url(url, what=what)
    except EgressRefused as exc:
        raise IdentityError(str(exc)) from None


class HandleResolver(Protocol):
    async def resolve(self, handle: str) -> str | None:
        """The DID the handle claims, or None when it claims none."""
        ...


HttpFactory = Callable[[], httpx.AsyncClient]


def _did_from_text(text: str) -> str | None:
    value = text.strip()
    return value if is_did(value) else None


class StandardHandleResolver:
    """DNS TXT first, then the https well-known (the atproto handle spec)."""

    def __init__(self, txt: TxtLookup, http: HttpFactory, *, max_bytes: int = METADATA_BYTES) -> None:
        self._txt = txt
        self._http = http
        self._max_bytes = max_bytes

    async def resolve(self, handle: str) -> str | None:
        did = await self._dns(handle)
        return did if did is not None else await self._https(handle)

    async def _dns(self, handle: str) -> str | None:
        try:
            records = await self._txt.txt(f"_atproto.{handle}")
        except Exception:
            return None
        found = {s.removeprefix("did=") for r in records for s in ["".join(r)] if s.startswith("did=")}
        if len(found) != 1:
            return None  # none, or conflicting records: the spec says treat as unresolved
        return _did_from_text(found.pop())

    async def _https(self, handle: str) -> str | None:
        try:
            async with self._http() as client:
                resp = await fetch(client, "GET", f"https://{handle}/.well-known/atproto-did",
                                   max_bytes=self._max_bytes, what="handle well-known")
        except FetchError:
            return None
        return _did_from_text(resp.text) if resp.status_code == 200 else None


class WellKnownAtResolver:
    """Tests and development: ``GET <base>/.well-known/atproto-did`` with ``Host: <handle>``."""

    def __init__(self, base_url: str, http: HttpFactory, *, max_bytes: int = METADATA_BYTES) -> None:
        self._base = base_url.rstrip("/")
        self._http = http
        self._max_bytes = max_bytes

    async def resolve(self, handle: str) -> str | None:
        try:
            async with self._http() as client:
                resp = await fetch(client, "GET", f"{self._base}/.well-known/atproto-did", headers={"host": handle},
                                   max_bytes=self._max_bytes, what="handle well-known")
        except FetchError:
            return None
        return _did_from_text(resp.text) if resp.status_code == 200 else None


class DidResolver:
    def __init__(self, plc_url: str, http: HttpFactory, *, egress: Egress | None = None,
                 max_bytes: int = DOCUMENT_BYTES) -> None:
        self._plc = plc_url.rstrip("/")
        self._http = http
        self._egress = egress or Egress()
        self._max_bytes = max_bytes

    async def resolve(self, did: str) -> dict[str, Any]:
        if not is_did(did):
            raise DidNotFound(f"{did!r} is not a did:plc or did:web identifier")
        if did.startswith("did:plc:"):
            url = f"{self._plc}/{did}"
        else:
            host = urllib.parse.unquote(did.removeprefix("did:web:"))
            if ":" in host and not is_loopback_host(host.split(":")[0]):
                raise DidNotFound(f"{did}: did:web with a path or port is not supported")
            url = f"https://{host}/.well-known/did.json"
            if is_loopback_host(host.split(":")[0]):  # a local test identity: http when egress allows it
                try:
                    url = self._egress.check_url(f"http://{host}/.well-known/did.json")
                except EgressRefused:
                    pass
        try:
            async with self._http() as client:
                doc = await get_object(client, url, max_bytes=self._max_bytes, what="DID document")
        except FetchError as exc:
            raise DidNotFound(f"{did}: {exc}") from None
        if doc.get("id") != did:
            raise DidNotFound(f"{did}: the DID document names a different id")
        return doc


def pds_endpoint(doc: dict[str, Any]) -> str | None:
    for service in doc.get("service") or []:
        if not isinstance(service, dict):
            continue
        sid = str(service.get("id", ""))
        if sid.endswith("#atproto_pds") and service.get("type") == "AtprotoPersonalDataServer":
            endpoint = service.get("serviceEndpoint")
            if isinstance(endpoint, str):
                return endpoint.rstrip("/")
    return None


def claimed_handles(doc: dict[str, Any]) -> list[str]:
    out = []
    for aka in doc.get("alsoKnownAs") or []:
        if isinstance(aka, str) and aka.startswith("at://"):
            out.append(aka.removeprefix("at://").rstrip("/").lower())
    return out


class _TtlCache:
    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._items: dict[str, tuple[float, Any]] = {}

    async def get(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        now = self._clock()
        hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await make()
        if len(self._items) > 10_000:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
        self._items[key] = (now + self.ttl, value)
        return value

    def drop(self, key: str) -> None:
        self._items.pop(key, None)


class IdentityResolver:
    def __init__(
        self, handles: HandleResolver, dids: DidResolver, *, ttl: float = 600.0, timeout: float = 10.0,
        egress: Egress | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handles = handles
        self.dids = dids
        self.timeout = timeout
        self.egress = egress or Egress()
        self._handle_cache = _TtlCache(ttl, clock)
        self._doc_cache = _TtlCache(ttl, clock)

    @classmethod
    def from_config(cls, cfg: Config, *, txt: TxtLookup | None = None) -> IdentityResolver:
        ident = cfg.identity
        egress = Egress.from_config(cfg)
        http = egress.http_factory(ident.timeout)
        handles: HandleResolver
        if ident.handle_resolution == "well-known-at":
            handles = WellKnownAtResolver(ident.handle_resolver_url, http, max_bytes=ident.metadata_bytes)
        else:
            if txt is None:
                txt = DnsLookup.from_config(cfg, lifetime=ident.timeout)
            handles = StandardHandleResolver(txt, http, max_bytes=ident.metadata_bytes)
        dids = DidResolver(ident.plc_url, http, egress=egress, max_bytes=ident.document_bytes)
        return cls(handles, dids, ttl=ident.cache_ttl, timeout=ident.timeout, egress=egress)

    async def did_document(self, did: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self._doc_cache.get(did, lambda: self._timed(self.dids.resolve(did)))
        return doc

    async def resolve(self, handle_or_did: str) -> Identity:
        """A handle (bidirectionally confirmed) or a DID (handle reported only if it confirms)."""
        value = handle_or_did.strip()
        if value.startswith("did:"):
            return await self.resolve_did(value)
        return await self.resolve_handle(value)

    async def resolve_handle(self, value: str) -> Identity:
        handle = normalize_handle(value)
        did = await self._claimed_did(handle)
        if did is None:
            self._handle_cache.drop(handle)  # do not remember a miss for long: the member may be fixing it
            raise UnknownHandle(f"{handle} does not resolve to a DID (no _atproto TXT record and no "
                                "/.well-known/atproto-did)")
        doc = await self.did_document(did)
        if handle not in claimed_handles(doc):
            raise HandleMismatch(f"{handle} points to {did}, but that DID's document does not name {handle} back")
        return Identity(did=did, handle=handle, pds_url=self._pds(did, doc), doc=doc)

    async def resolve_did(self, did: str) -> Identity:
        if not is_did(did):
            raise DidNotFound(f"{did!r} is not a did:plc or did:web identifier")
        doc = await self.did_document(did)
        handle = None
        for candidate in claimed_handles(doc)[:1]:
            try:
                if _HANDLE.fullmatch(candidate) and await self._claimed_did(candidate) == did:
                    handle = candidate
            except IdentityError:
                pass
        return Identity(did=did, handle=handle, pds_url=self._pds(did, doc), doc=doc)

    async def _claimed_did(self, handle: str) -> str | None:
        did: str | None = await self._handle_cache.get(handle, lambda: self._timed(self.handles.resolve(handle)))
        return did

    def _pds(self, did: str, doc: dict[str, Any]) -> str:
        pds = pds_endpoint(doc)
        if pds is None:
            raise NoPds(f"{did} names no PDS (#atproto_pds service) in its DID document")
        try:
            return check_url(pds, egress=self.egress, what=f"{did}'s PDS")
        except IdentityError as exc:
            raise NoPds(str(exc)) from None

    async def _timed(self, work: Awaitable[Any]) -> Any:
        with trio.move_on_after(self.timeout) as scope:
            return await work
        if scope.cancelled_caught:
            raise IdentityError(f"identity lookup timed out after {self.timeout:g} s")
        return None  # unreachable


__all__ = [
    "DidNotFound", "DidResolver", "HandleMismatch", "HandleResolver", "Identity", "IdentityError",
    "IdentityResolver", "InvalidHandle", "NoPds", "StandardHandleResolver", "UnknownHandle",
    "WellKnownAtResolver", "check_url", "claimed_handles", "is_did", "normalize_handle", "pds_endpoint",
]
