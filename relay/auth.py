"""Member authentication shared by SMTP AUTH and the HTTP API (DESIGN §3-4).

Username is a DID or the handle of an enrolled DID; password is the API key.
The bcrypt check runs off the event loop and successful checks are cached
(relay.apikey.ApiKeyCache), so a reconnecting client costs microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from relay.address import is_did
from relay.apikey import ApiKeyCache
from relay.errors import AuthFailed, InvalidDid, MemberSuspended
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.rows import Domain, Member


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated member and the sending domains it may use."""

    did: str
    handle: str | None
    domains: frozenset[str]  # verified domains: sending allowed
    pending: frozenset[str]  # enrolled, ownership not yet proven
    key_hash: str = field(default="", repr=False, compare=False)  # the stored hash the key matched


class Authenticator:
    def __init__(self, store: AsyncStore, keys: ApiKeyCache) -> None:
        self._store = store
        self._keys = keys

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

    async def authenticate(self, username: str, api_key: str) -> Principal:
        did = await self.resolve_did(username)
        member, stored, domains = await self._store.call(partial(_lookup, did))
        if member is None or stored is None or not await self._keys.verify(did, api_key, stored):
            raise AuthFailed()
        # Checked only after the key: a suspension is not disclosed to someone without the key.
        if member.status == "suspended":
            reason = f"member suspended: {member.suspension_reason}" if member.suspension_reason else None
            raise MemberSuspended(reason)
        return Principal(
            did=did,
            handle=member.handle,
            domains=frozenset(d.domain for d in domains if d.state == "verified"),
            pending=frozenset(d.domain for d in domains if d.state != "verified"),
            key_hash=stored,
        )


def _lookup(did: str, store: Store) -> tuple[Member | None, str | None, list[Domain]]:
    member = store.get_member(did)
    if member is None:
        return None, None, []
    return member, store.get_api_key_hash(did), store.domains_for(did)
