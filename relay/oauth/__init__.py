"""Sign in with an atproto handle: the relay's confidential OAuth client (DESIGN §3 web pages)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.identity import IdentityResolver
from relay.oauth.client import OAuthClient, OAuthError, OAuthStateError, PendingAuth, TokenSet
from relay.oauth.keys import ClientKeys

if TYPE_CHECKING:
    from relay.config import Config
    from relay.store.aio import AsyncStore


def client_from_config(
    cfg: Config, identity: IdentityResolver | None = None, store: AsyncStore | None = None
) -> OAuthClient:
    """The relay's client: ``client_id = public_url + /oauth/client-metadata.json``, keys in the state dir."""
    keys = ClientKeys.load_or_create(cfg.state_path / "oauth")
    ident = identity or IdentityResolver.from_config(cfg)
    return OAuthClient(cfg.public_url, keys, ident, timeout=cfg.identity.timeout, egress=ident.egress,
                       max_bytes=cfg.identity.metadata_bytes, deadline=cfg.identity.deadline, store=store)


__all__ = ["ClientKeys", "OAuthClient", "OAuthError", "OAuthStateError", "PendingAuth", "TokenSet",
           "client_from_config"]
