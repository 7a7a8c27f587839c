"""The relay's OAuth client documents: ``/oauth/client-metadata.json`` and ``/oauth/jwks.json``.

An atproto authorization server fetches the metadata document from the ``client_id`` URL
(``public_url`` + ``/oauth/client-metadata.json``) and the keys from ``jwks_uri`` to verify the
relay's ``private_key_jwt`` client assertions. The sign-in routes themselves live in ``web.pages``.
"""

from __future__ import annotations

from functools import partial

import trio
from quart import Blueprint, Response, current_app, jsonify

from relay.oauth import OAuthClient, client_from_config
from relay.services import Services

blueprint = Blueprint("oauth", __name__)
_lock = trio.Lock()


async def oauth_client() -> OAuthClient:
    """``services.oauth`` when the supervisor provides one, else one built from the config (once per app)."""
    svc: Services = current_app.extensions["atmos"]
    client: OAuthClient | None = getattr(svc, "oauth", None) or current_app.extensions.get("atmos.oauth")
    if client is not None:
        return client
    async with _lock:
        client = current_app.extensions.get("atmos.oauth")
        if client is None:
            identity = getattr(svc, "identity", None)
            client = await trio.to_thread.run_sync(partial(client_from_config, svc.cfg, identity, store=svc.store))
            current_app.extensions["atmos.oauth"] = client
    return client


def _json(body: object) -> Response:
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "public, max-age=300"
    resp.headers["Access-Control-Allow-Origin"] = "*"
    return resp


@blueprint.get("/oauth/client-metadata.json")
async def client_metadata() -> Response:
    return _json((await oauth_client()).client_metadata())


@blueprint.get("/oauth/jwks.json")
async def jwks() -> Response:
    return _json((await oauth_client()).jwks())
