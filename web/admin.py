"""The operator's HTTP API (/admin/api): queue inspection and actions (DESIGN §3).

Bearer admin token (``ATMOS_ADMIN_TOKEN``), compared in constant time. The
``atmos admin queue ...`` commands and the console use these endpoints, because
only the running relay may write its spool.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from quart import Blueprint, Response, jsonify, request

from relay.app.services import Services
from relay.cluster.identity import owner
from relay.cluster.status import JOBS_LEASE, node_view, totals
from relay.errors import AuthFailed, AuthRequired, InvalidRequest
from relay.operator.eventstream import CommandError, UnknownMessage, destination_everywhere, queue_command
from spool import QueuedMessage
from web.api import services

blueprint = Blueprint("admin", __name__)


def require_admin() -> Services:
    svc = services()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthRequired("Authorization: Bearer <admin token> required")
    if not hmac.compare_digest(token.strip().encode(), svc.cfg.admin_token.encode()):
        raise AuthFailed("admin token rejected")
    return svc


def queued_json(msg: QueuedMessage, now: float) -> dict[str, Any]:
    env = msg.envelope
    return {
        "queue_id": msg.queue_id, "did": env.did, "from": env.mail_from, "size": msg.length,
        "arrival": env.arrival, "age_seconds": round(now - env.arrival, 1), "attrs": dict(env.attrs),
        "recipients": [{"id": rid, "address": addr, "state": st.state.value, "attempts": st.attempts,
                        "next_attempt_at": st.next_attempt_at, "last_reply": st.reply, "info": st.info}
                       for rid, addr, st in msg.recipients()],
    }


@blueprint.get("/admin/api/queue")
async def queue_list() -> Response:
    svc = require_admin()
    now = time.time()
    state = request.args.get("state")
    items = [queued_json(m, now) for m in svc.spool.live()]
    if state:
        items = [i for i in items if any(r["state"] == state for r in i["recipients"])]
    return jsonify({"node": svc.node.name, "messages": items, "stats": _stats(svc)})


@blueprint.get("/admin/api/nodes")
async def nodes() -> Response:
    """Every node of the relay (relay.cluster.status), with the running ones' totals."""
    svc = require_admin()
    view = await node_list(svc)
    return jsonify({"node": svc.node.name, "nodes": view, "totals": totals(view)})


async def node_list(svc: Services) -> list[dict[str, Any]]:
    rows, holder = await svc.store.call(lambda s: (s.list_nodes(), s.lease_holder(JOBS_LEASE)))
    return node_view(rows, holder, time.time(), svc.cfg.node.lease_ttl)


@blueprint.get("/admin/api/tls-reports")
async def tls_reports() -> Response:
    """TLS reports (RFC 8460) other senders sent about the operator domain, newest first."""
    svc = require_admin()
    try:
        limit = max(1, min(int(request.args.get("limit", "50")), 500))
    except ValueError:
        raise InvalidRequest("limit: expected a number from 1 to 500") from None
    reports = await svc.store.list_tlsrpt_inbound(limit)
    return jsonify({"reports": [{"organization": r.organization, "report_id": r.report_id,
                                 "policy_domain": r.policy_domain, "start": r.start, "end": r.end,
                                 "successes": r.successes, "failures": r.failures,
                                 "failure_types": r.failure_types, "received_at": r.received_at}
                                for r in reports]})


@blueprint.get("/admin/api/queue/<int:queue_id>")
async def queue_show(queue_id: int) -> Response:
    svc = require_admin()
    msg = svc.spool.get(queue_id)
    rows = []
    ids = msg.rcpt_ids if msg is not None else (queue_id,)
    for rid in ids:
        row = await svc.store.get_message(rid)
        if row is None:
            continue
        attempts = await svc.store.attempts_for(rid)
        rows.append({"id": rid, "recipient": row.recipient, "status": row.status, "last_reply": row.last_reply,
                     "timeline": [{"at": a.at, "mx_host": a.mx_host, "reply": a.reply, "tls": a.tls,
                                   "outcome": a.outcome} for a in attempts]})
    if msg is None and not rows:
        return _not_found(queue_id)
    # "queued": this node's spool view; null for a message another node holds (relay.cluster.identity).
    return jsonify({"node": svc.node.name, "owner": owner(queue_id),
                    "queued": queued_json(msg, time.time()) if msg else None, "store": rows})


@blueprint.post("/admin/api/queue/<int:queue_id>/<action>")
async def queue_action(queue_id: int, action: str) -> Response:
    svc = require_admin()
    try:
        changed = await queue_command(svc, action, queue_id)
    except UnknownMessage:
        return _not_found(queue_id)
    except CommandError as exc:
        raise InvalidRequest(str(exc)) from None
    return jsonify({"queue_id": queue_id, "action": action, "changed": changed, "node": svc.node.name})


@blueprint.post("/admin/api/destinations/<domain>/<action>")
async def destination_action(domain: str, action: str) -> Response:
    svc = require_admin()
    try:
        normalized = await destination_everywhere(svc, action, domain)
    except CommandError as exc:
        raise InvalidRequest(str(exc)) from None
    return jsonify({"domain": normalized, "paused": action == "pause"})


def _stats(svc: Services) -> dict[str, Any]:
    st = svc.spool.stats()
    out: dict[str, Any] = {"live_messages": st.live_messages, "live_recipients": st.live_recipients,
                           "bytes": st.bytes, "segments": st.segments}
    if svc.scheduler is not None:
        out.update(in_flight=svc.scheduler.in_flight, delivered=svc.scheduler.delivered,
                   deferred=svc.scheduler.deferred, bounced=svc.scheduler.bounced,
                   paused_destinations=list(svc.scheduler.paused_destinations))
    return out


def _not_found(queue_id: int) -> Response:
    resp = jsonify({"error": f"no queued message {queue_id}", "code": "NOT_FOUND"})
    resp.status_code = 404
    return resp
