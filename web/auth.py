"""The relay's OAuth client documents: ``/oauth/client-metadata.json`` and ``/oauth/jwks.json``.

An atproto authorization server fetches the metadata document from the ``client_id`` URL
(``public_url`` + ``/oauth/client-metadata.json``) and the keys from ``jwks_uri`` to verify the
relay's ``private_key_jwt`` client assertions. The sign-in routes themselves live in ``web.pages``.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, jsonify
from werkzeug.exceptions import ServiceUnavailable

from relay.app.services import Services
from relay.oauth import OAuthClient

blueprint = Blueprint("oauth", __name__)


async def oauth_client() -> OAuthClient:
    """``services.oauth``: the supervisor builds it (and its keys) before the HTTP server starts."""
    svc: Services = current_app.extensions["atmos"]
    if svc.oauth is None:
        raise ServiceUnavailable("sign-in is not configured on this relay")
    return svc.oauth


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
