"""The operator event stream over a websocket, and its commands over HTTP (DESIGN §3).

``/admin/ws``
    Auth: ``Authorization: Bearer <ATMOS_ADMIN_TOKEN>`` or ``?token=<ATMOS_ADMIN_TOKEN>`` (browsers
    cannot set headers on a websocket; prefer the header, a query string ends up in proxy logs),
    compared in constant time. Without a valid token the handshake is refused with HTTP 401 and a
    JSON body ``{"error", "code"}`` (``AUTH_REQUIRED`` / ``AUTH_FAILED``); no websocket is opened.

    Then, one JSON text frame per ``relay.events`` event: first a ``snapshot``, then every event the
    relay publishes (``accepted``, ``delivery``, ``queue_changed``, ``queue_depth`` and ``throughput``
    every second, ``warming``, ``member_suspended``/``member_unsuspended``, ``complaint``) and a
    ``heartbeat`` every 5 s. Frames from the client are ``command``s, each answered by a
    ``command_result`` with the same id (a bad frame gets ``ok: false`` and the reason; the stream
    goes on). The server closes with 1013 (try again later) when the client fell more than
    ``EventBus.buffer`` events behind (it was dropped: reconnect for a fresh snapshot) and 1001 when
    the relay shuts down.

``POST /admin/api/command`` (admin bearer token, like all of /admin/api)
    JSON body: the Command fields ``{"action", "target", "reason"?, "id"?}``. Answers the
    CommandResult ``{"id", "ok", "message"}``: 200 when ok, 400 when not.

``GET /admin/api/snapshot`` (admin bearer token): the snapshot frame a websocket client gets first.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request, websocket

from relay.app.services import Services
from relay.errors import InvalidRequest
from relay.events import CommandResult, encode
from relay.operator.eventstream import CommandError, build_snapshot, command_from_json, execute, handle_frame
from web.admin import require_admin
from web.api import services
from web.jsonbody import parse_json

log = logging.getLogger("web.adminws")
blueprint = Blueprint("adminws", __name__)

CLOSE_TOO_SLOW = 1013  # RFC 6455 registry: "Try Again Later"
CLOSE_GOING_AWAY = 1001


def _token_ok(svc: Services, header: str, query: str) -> str | None:
    """None when authorized; else the refusal code (AUTH_REQUIRED / AUTH_FAILED)."""
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    token = token or query
    if not token:
        return "AUTH_REQUIRED"
    expected = svc.cfg.admin_token.encode()
    # An empty configured token never matches (compare_digest(b"", b"") would).
    if not expected or not hmac.compare_digest(token.encode(), expected):
        return "AUTH_FAILED"
    return None


def _refusal(code: str) -> Response:
    message = "admin token required: Authorization: Bearer <token> or ?token=" if code == "AUTH_REQUIRED" \
        else "admin token rejected"
    resp = jsonify({"error": message, "code": code})
    resp.status_code = 401
    resp.headers["WWW-Authenticate"] = 'Bearer realm="atmos-admin"'
    return resp


@blueprint.websocket("/admin/ws")
async def admin_ws() -> Response | None:
    svc = services()
    refused = _token_ok(svc, websocket.headers.get("Authorization", ""), websocket.args.get("token", ""))
    if refused is not None:
        log.warning("/admin/ws refused (%s) from %s", refused, websocket.remote_addr)
        return _refusal(refused)  # before accept: the handshake is answered 401
    await websocket.accept()
    lock = trio.Lock()  # the event pump and the command reader share one socket

    async def send(text: str) -> None:
        async with lock:
            await websocket.send(text)

    # Subscribe before building the snapshot: nothing published meanwhile is missed.
    with svc.bus.subscribe() as sub:
        await send(encode(await build_snapshot(svc)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_commands, svc, send)
            async for event in sub:
                await send(encode(event))
            nursery.cancel_scope.cancel()  # the stream ended: dropped, or the relay is stopping
        # Still inside the subscription: at shutdown the supervisor waits (bus.aclose) for this frame.
        if sub.dropped:
            log.warning("/admin/ws client %s fell behind and was dropped", websocket.remote_addr)
            await websocket.close(CLOSE_TOO_SLOW, "too slow: events were dropped; reconnect for a fresh snapshot")
        else:
            await websocket.close(CLOSE_GOING_AWAY, "relay shutting down")
    return None


async def _commands(svc: Services, send: Any) -> None:
    while True:
        frame = await websocket.receive()
        result = await handle_frame(svc, frame)
        await send(encode(result))


@blueprint.post("/admin/api/command")
async def command() -> Response:
    svc = require_admin()
    try:
        body = parse_json(await request.get_data())
    except InvalidRequest:
        body = None  # command_from_json names what is wrong with it
    try:
        parsed = command_from_json(body)
    except CommandError as exc:
        raw_id = body.get("id") if isinstance(body, dict) else None
        result = CommandResult(id=raw_id if isinstance(raw_id, str) else "", ok=False, message=str(exc))
    else:
        result = await execute(svc, parsed)
    resp = jsonify({"id": result.id, "ok": result.ok, "message": result.message})
    resp.status_code = 200 if result.ok else 400
    return resp


@blueprint.get("/admin/api/snapshot")
async def snapshot() -> Response:
    svc = require_admin()
    return Response(encode(await build_snapshot(svc)), content_type="application/json")
