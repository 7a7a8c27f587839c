"""The Quart-Trio application: JSON API now; pages, XRPC and /admin/ws later (DESIGN §2-3).

Every error leaves as ``{"error": ..., "code": ...}`` with its status; an
unexpected exception is logged and answered with a generic 500, never a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from relay.errors import PayloadTooLarge, RelayError
from relay.services import Services
from relay.slots import Slots
from web import admin, adminws, api, auth, forwardto, member, metrics, openapi, pages, unsubscribe, xrpc

log = logging.getLogger("web")


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("web")  # the package: templates/ and static/ live beside this module
    app.config["MAX_CONTENT_LENGTH"] = services.cfg.limits.json_body
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["atmos"] = services
    app.extensions["atmos.signins"] = Slots(services.cfg.identity.signins, services.cfg.identity.signins_per_ip)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(admin.blueprint)
    app.register_blueprint(unsubscribe.blueprint)
    app.register_blueprint(forwardto.blueprint)
    app.register_blueprint(auth.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(member.blueprint)
    app.register_blueprint(adminws.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(xrpc.blueprint)
    app.register_blueprint(openapi.blueprint)

    @app.errorhandler(RelayError)
    async def relay_error(exc: RelayError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            return error_response(PayloadTooLarge("request body larger than the limit"))
        code = (exc.name or "error").upper().replace(" ", "_")
        resp = jsonify({"error": exc.description or exc.name, "code": code})
        resp.status_code = exc.code or 500
        return resp

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in HTTP handler")
        resp = jsonify({"error": "internal error", "code": "INTERNAL"})
        resp.status_code = 500
        return resp

    return app


def error_response(exc: RelayError, extra_headers: dict[str, Any] | None = None) -> Response:
    resp = jsonify(exc.http_body())
    resp.status_code = exc.http_status
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    for name, value in (extra_headers or {}).items():
        resp.headers[name] = str(value)
    return resp
