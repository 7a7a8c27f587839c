"""Member authentication shared by SMTP AUTH and the HTTP API (DESIGN §3-4).

The user name is the DID, the member's handle, or one of its verified sending domains; the
password is the API key. Clients that split ``user:password`` at the first colon (Postfix's
``smtp_sasl_password_maps``, ``curl --user``, nodemailer 6.x inside ``@atproto/pds`` parsing an
``smtp://did:plc:...:key@host`` URL) turn ``did:plc:abc`` + ``key`` into user ``did`` and password
``plc:abc:key``; that shape is put back together (split at the last colon: API keys are base64url
and a DID's method-specific id never ends in one). Docs lead with the domain form: no colon at all.
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
from dataclasses import dataclass, field
from functools import partial

from relay.address import is_did, normalize_domain
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
    categories: tuple[tuple[str, str], ...] = ()  # (domain, default category) where one is set
    key_hash: str = field(default="", repr=False, compare=False)  # the stored hash the key matched

    def default_category(self, domain: str) -> str:
        """The category for mail from ``domain`` that names none (``X-Atmos-Category``, ``category``)."""
        return dict(self.categories).get(domain.lower(), "")


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

    async def candidates(self, username: str) -> list[str]:
        """The DIDs a user name may stand for: the DID itself, or the owner of a handle and of a
        verified sending domain of that name (two members at most; the API key decides)."""
        username = username.strip()
        if username.startswith("did:"):
            if not is_did(username):
                raise InvalidDid()
            return [username]
        name = username.lower().lstrip("@").rstrip(".")
        return await self._store.call(partial(_dids_named, name))

    async def authenticate(self, username: str, api_key: str, *, peer: str = "") -> Principal:
        """``peer``: the client address (rate limits and logs)."""
        username, api_key = unmangle(username, api_key)
        if self._ips.retry_after(peer) > 0:
            raise self._throttled(peer, username, self._ips.retry_after(peer), "address")
        candidates = await self.candidates(username)
        if not candidates:
            self._ips.take(peer)  # guessing names costs like guessing keys
            log.warning("auth failed: unknown user name %r peer=%s", username[:100], peer)
            raise AuthFailed()
        for i, did in enumerate(candidates):
            try:
                return await self._principal(did, api_key, peer)
            except AuthFailed:
                if i == len(candidates) - 1:
                    raise
        raise AuthFailed()  # not reached: the loop returns or raises

    async def _principal(self, did: str, api_key: str, peer: str) -> Principal:
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
            categories=tuple((d.domain, d.default_category) for d in domains if d.default_category),
            key_hash=stored,
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


def unmangle(username: str, password: str) -> tuple[str, str]:
    """Undo a split at the first colon: user ``did`` + ``plc:<id>:<key>`` -> ``did:plc:<id>``, ``<key>``."""
    if username.strip().lower() != "did" or ":" not in password:
        return username, password
    rest, _, key = password.rpartition(":")
    return f"did:{rest}", key


def _dids_named(name: str, store: Store) -> list[str]:
    out: list[str] = []
    member = store.get_member_by_handle(name)
    if member is not None:
        out.append(member.did)
    domain = store.get_domain(normalize_domain(name))
    if domain is not None and domain.state == "verified" and domain.did not in out:
        out.append(domain.did)
    return out


def _lookup(did: str, store: Store) -> tuple[Member | None, str | None, list[Domain]]:
    member = store.get_member(did)
    if member is None:
        return None, None, []
    return member, store.get_api_key_hash(did), store.domains_for(did)
