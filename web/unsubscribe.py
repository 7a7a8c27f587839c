"""One-click unsubscribe (RFC 8058) and the member suppression-list API.

``POST /u/<token>`` suppresses at once: no login, no cookie, no confirmation (RFC 8058 §3.2;
mailbox providers send ``List-Unsubscribe=One-Click`` here). ``GET /u/<token>`` never changes
anything (link scanners follow GETs), it shows a page with a confirm button.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, render_template, request

from relay.address import split_address
from relay.errors import InvalidRequest
from relay.events import Unsubscribed
from relay.mail.unsubscribe import read_token
from web.api import authenticate, read_json, services

blueprint = Blueprint("unsubscribe", __name__)


@blueprint.get("/u/<token>")
async def confirm(token: str) -> tuple[str, int]:
    found = read_token(services().cfg.secret_key, token)
    if found is None:
        return await render_template("unsubscribe.html", state="invalid"), 404
    return await render_template("unsubscribe.html", state="confirm", recipient=found[1]), 200


@blueprint.post("/u/<token>")
async def one_click(token: str) -> tuple[str, int]:
    svc = services()
    found = read_token(svc.cfg.secret_key, token)
    if found is None:
        return await render_template("unsubscribe.html", state="invalid"), 404
    did, recipient = found
    if await svc.store.add_suppression(did, recipient, "unsubscribed (one-click)"):
        svc.bus.publish(Unsubscribed(did=did, recipient=recipient))  # webhooks; the console skips it
    return await render_template("unsubscribe.html", state="done", recipient=recipient), 200


@blueprint.get("/v1/suppressions")
async def list_suppressions() -> Response:
    principal = await authenticate()
    rows = await services().store.list_suppressions(principal.did)
    return jsonify({"suppressions": [{"recipient": r.recipient, "reason": r.reason, "createdAt": r.created_at}
                                     for r in rows]})


@blueprint.post("/v1/suppressions")
async def add_suppression() -> Response:
    principal = await authenticate()
    body = await read_json()
    if not isinstance(body, dict) or not isinstance(body.get("recipient"), str):
        raise InvalidRequest("recipient: required (a string)")
    recipient = body["recipient"].strip()
    try:
        split_address(recipient)
    except ValueError as exc:
        raise InvalidRequest(f"recipient: {exc}") from None
    reason = body.get("reason", "added by member")
    if not isinstance(reason, str) or len(reason) > 200:
        raise InvalidRequest("reason: a string of at most 200 characters")
    created = await services().store.add_suppression(principal.did, recipient, reason)
    resp = jsonify({"recipient": recipient.lower(), "reason": reason, "created": created})
    resp.status_code = 201 if created else 200
    return resp


@blueprint.delete("/v1/suppressions/<path:recipient>")
async def remove_suppression(recipient: str) -> Response:
    principal = await authenticate()
    removed = await services().store.remove_suppression(principal.did, recipient)
    if not removed:
        resp = jsonify({"error": f"{recipient} is not on your suppression list", "code": "NOT_FOUND"})
        resp.status_code = 404
        return resp
    return jsonify({"recipient": recipient.lower(), "removed": True})


__all__ = ["blueprint", "request"]
