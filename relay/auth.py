"""Member authentication shared by SMTP AUTH and the HTTP API (DESIGN §3-4).

Username is a DID or the handle of an enrolled DID; password is the API key.
The bcrypt check runs off the event loop and successful checks are cached
(relay.apikey.ApiKeyCache), so a reconnecting client costs microseconds.

Abuse (issue: 40 wrong keys at once delayed a member by 6.5 s): every check
that would run bcrypt first takes a token from the client address's bucket
and from the DID's (``[auth]`` per_ip_* / per_did_*; given back when the key
is right), and one address may have at most ``per_ip_concurrency`` checks
running or queued at once, so a flood is refused with ``AuthThrottled``
(454 4.7.0 / 429) before it reaches bcrypt and never queues ahead of others.
A throttled address is refused before the store is asked; a DID under attack
still lets in a member whose key is cached. Every failure is logged once, with
the peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from relay.address import is_did
from relay.apikey import ApiKeyCache
from relay.config import AuthConfig
from relay.errors import AuthBusy, AuthFailed, AuthThrottled, InvalidDid, MemberSuspended
from relay.ratelimit import TokenBuckets, source_key
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.rows import Domain, Member

log = logging.getLogger("relay.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated member and the sending domains it may use."""

    did: str
    handle: str | None
    domains: frozenset[str]  # verified domains: sending allowed
    pending: frozenset[str]  # enrolled, ownership not yet proven


class Authenticator:
    def __init__(self, store: AsyncStore, keys: ApiKeyCache, limits: AuthConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        limits = limits or AuthConfig()
        self._store = store
        self._keys = keys
        self._ips = TokenBuckets(limits.per_ip_per_minute, limits.per_ip_burst, clock=clock)
        self._dids = TokenBuckets(limits.per_did_per_minute, limits.per_did_burst, clock=clock)
        self._per_ip_concurrency = limits.per_ip_concurrency
        self._checking: dict[str, int] = {}  # bcrypt checks running or queued, per source_key

    async def resolve_did(self, username: str) -> str:
        """DID as given, or the DID enrolled under this handle."""
        username = username.strip()
        if username.startswith("did:"):
            if not is_did(username):
                raise InvalidDid()
            return username
        member = await self._store.get_member_by_handle(username.lower().lstrip("@"))
        if member is None:
            raise AuthFailed()
        return member.did

    async def authenticate(self, username: str, api_key: str, *, peer: str = "") -> Principal:
        """``peer``: the client address (rate limits and logs)."""
        if self._ips.retry_after(peer) > 0:
            raise self._throttled(peer, username, self._ips.retry_after(peer), "address")
        try:
            did = await self.resolve_did(username)
        except AuthFailed:
            self._ips.take(peer)  # guessing handles costs like guessing keys
            log.warning("auth failed: unknown handle %r peer=%s", username[:100], peer)
            raise
        member, stored, domains = await self._store.call(partial(_lookup, did))
        if member is None or stored is None:
            self._ips.take(peer)
            log.warning("auth failed: no member %s peer=%s", did, peer)
            raise AuthFailed()
        if not self._keys.cached(did, api_key, stored):
            await self._check_key(did, api_key, stored, peer)
        # Checked only after the key: a suspension is not disclosed to someone without the key.
        if member.status == "suspended":
            reason = f"member suspended: {member.suspension_reason}" if member.suspension_reason else None
            raise MemberSuspended(reason)
        return Principal(
            did=did,
            handle=member.handle,
            domains=frozenset(d.domain for d in domains if d.state == "verified"),
            pending=frozenset(d.domain for d in domains if d.state != "verified"),
        )


    async def _check_key(self, did: str, api_key: str, stored: str, peer: str) -> None:
        """The bcrypt check, behind the per-address and per-DID buckets."""
        if self._keys.running(did, api_key, stored):  # shares a check already paid for
            if not await self._keys.verify(did, api_key, stored):
                log.warning("auth failed: wrong API key did=%s peer=%s", did, peer)
                raise AuthFailed()
            return
        source = source_key(peer)
        if self._checking.get(source, 0) >= self._per_ip_concurrency:
            raise self._throttled(peer, did, 1.0, "address (checks in progress)")
        if not self._ips.take(peer):
            raise self._throttled(peer, did, self._ips.retry_after(peer), "address")
        if not self._dids.take(did):
            self._ips.refund(peer)
            raise self._throttled(peer, did, self._dids.retry_after(did), "DID")
        self._checking[source] = self._checking.get(source, 0) + 1
        try:
            ok = await self._keys.verify(did, api_key, stored)
        except AuthBusy:
            self._ips.refund(peer)
            self._dids.refund(did)
            log.warning("auth refused: bcrypt queue full (%d waiting) did=%s peer=%s", self._keys.waiting, did, peer)
            raise
        finally:
            left = self._checking.pop(source) - 1
            if left:
                self._checking[source] = left
        if not ok:
            log.warning("auth failed: wrong API key did=%s peer=%s", did, peer)
            raise AuthFailed()
        self._ips.refund(peer)  # a right key costs nothing: only failures use up the budget
        self._dids.refund(did)

    def _throttled(self, peer: str, who: str, wait: float, what: str) -> AuthThrottled:
        log.warning("auth refused: too many attempts for this %s (%s) peer=%s, retry in %.0f s", what, who[:100],
                    peer, wait)
        return AuthThrottled(retry_after=max(1, round(wait + 0.5)))


def _lookup(did: str, store: Store) -> tuple[Member | None, str | None, list[Domain]]:
    member = store.get_member(did)
    if member is None:
        return None, None, []
    return member, store.get_api_key_hash(did), store.domains_for(did)
