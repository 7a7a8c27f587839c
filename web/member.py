"""Member endpoints (DESIGN §3): standing, deliverability, reply forwarding, webhooks. Same auth as /v1/send.

The API key authenticates exactly one DID (``X-Atmos-DID`` or ``?did=``); a member reads and changes
only its own data. Errors, each ``{"error", "code"}``:

    AUTH_REQUIRED 400, INVALID_DID 400, AUTH_FAILED 401 (wrong key for that DID),
    MEMBER_SUSPENDED 403 (only PUT: a suspended member may still read its standing),
    FORBIDDEN 403 (``?did=`` names another DID than the authenticated ``X-Atmos-DID``),
    DOMAIN_MISMATCH 403 (the domain is not the member's), INVALID_REQUEST 400 (names the field),
    SERVICE_UNAVAILABLE 503 (the reputation service is not running or the store is down),
    NOT_FOUND 404 (GET/DELETE /member/webhook when none is registered).

Default category: ``PUT /member/category`` ``{"domain": "…", "category": "transactional"}`` sets the
category of mail from that domain that names none (``X-Atmos-Category`` / ``category``); ``""`` is bulk.
A PDS, which cannot add headers, sets ``transactional`` so its resets never carry an unsubscribe link.

Webhooks (relay.members.webhooks): ``PUT /member/webhook`` ``{"url": "https://…", "events": [...]}`` (events
optional, default all of relay.members.webhooks.EVENT_TYPES) answers ``{url, events, secret}``; the ``whsec_``
secret is shown only here and a new one is made on every PUT. The URL must be https; plain http is
accepted only for loopback hosts (localhost, 127.0.0.0/8, ::1), for local development and tests.
``GET`` shows ``{url, events, created_at}`` (never the secret); ``DELETE`` removes it.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, Response, jsonify, request

from relay.accept.category import is_transactional, parse_category
from relay.address import normalize_domain, split_address
from relay.app.services import Services
from relay.errors import DomainMismatch, InvalidRequest, MemberSuspended, QueueUnavailable, RelayError
from relay.mail.dkimkeys import SecretBox
from relay.members.webhooks import EVENT_TYPES, new_secret, seal_secret
from relay.net.egress import Egress, EgressRefused
from relay.reputation import Reputation
from relay.store.base import StoreError
from relay.store.rows import Webhook
from web import forwardto
from web.api import authenticate, read_json, reputation, services

blueprint = Blueprint("member", __name__)
FORWARD_FIELDS = frozenset({"domain", "forward_to"})
CATEGORY_FIELDS = frozenset({"domain", "category"})
WEBHOOK_FIELDS = frozenset({"url", "events"})


class Forbidden(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 550, "5.7.1", 403, "FORBIDDEN"
    default_message = "a member may only see its own data"


class ServiceUnavailable(QueueUnavailable):
    code = "SERVICE_UNAVAILABLE"
    default_message = "member statistics are unavailable right now, try again later"


async def _member(*, allow_suspended: bool = True) -> tuple[Services, str]:
    """Authenticate like /v1/send and return the member's DID.

    A suspended member's key still opens the read-only endpoints: the suspension reason and the
    numbers behind it are what it needs to see.
    """
    try:
        did = (await authenticate()).did
    except MemberSuspended:
        if not allow_suspended:
            raise
        # relay.members.auth checks the key before it discloses a suspension, so this DID is authenticated.
        did = (request.headers.get("X-Atmos-DID") or request.args.get("did") or "").strip()
    query = request.args.get("did", "").strip()
    if query and query != did:
        raise Forbidden(f"did: the API key of {did} cannot read {query}")
    return services(), did


def _reputation(svc: Services) -> Reputation:
    rep = reputation(svc)
    if rep is None:
        raise ServiceUnavailable("member statistics are not available on this relay")
    return rep


@blueprint.get("/member/status")
async def status() -> Response:
    svc, did = await _member()
    try:
        status = await _reputation(svc).member_status(did)
        status["labels"] = [] if svc.labeler is None else await svc.labeler.labels_in_force(did)
        return jsonify(status)
    except StoreError:
        raise ServiceUnavailable() from None


@blueprint.get("/member/deliverability")
async def deliverability() -> Response:
    svc, did = await _member()
    raw = request.args.get("days", "14")
    if not raw.isdigit() or not 1 <= int(raw) <= 14:
        raise InvalidRequest("days: a whole number from 1 to 14")
    try:
        return jsonify(await _reputation(svc).deliverability(did, int(raw)))
    except StoreError:
        raise ServiceUnavailable() from None


@blueprint.put("/member/forward-to")
async def forward_to() -> Response:
    svc, did = await _member(allow_suspended=False)
    domain, target = _parse_forward(await read_json())
    row = await svc.store.get_domain(domain)
    if row is None or row.did != did:
        raise DomainMismatch(f"domain: {domain} is not enrolled under {did}")
    updated = await svc.store.set_forward_to(domain, target)
    sent = await forwardto.after_change(svc, updated)
    return jsonify({"domain": updated.domain, "forward_to": updated.forward_to,
                    "confirmed": updated.forward_confirmed_at is not None, "confirmation_sent": sent})


@blueprint.put("/member/category")
async def default_category() -> Response:
    """``{"domain", "category"}``: the category of mail from that domain that names none ("" = bulk)."""
    svc, did = await _member(allow_suspended=False)
    body = await read_json()
    body = _json_object(body, CATEGORY_FIELDS, "domain and category", "domain, category")
    raw = body.get("domain")
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidRequest("domain: required, a string naming one of your sending domains")
    if "category" not in body:
        raise InvalidRequest("category: required (e.g. transactional, or \"\" for bulk)")
    category = parse_category(body["category"])
    domain = normalize_domain(raw)
    row = await svc.store.get_domain(domain)
    if row is None or row.did != did:
        raise DomainMismatch(f"domain: {domain} is not enrolled under {did}")
    updated = await svc.store.set_default_category(domain, category)
    return jsonify({"domain": updated.domain, "category": updated.default_category,
                    "transactional": is_transactional(updated.default_category)})


@blueprint.put("/member/webhook")
async def put_webhook() -> Response:
    svc, did = await _member(allow_suspended=False)
    url, events = _parse_webhook(await read_json(), Egress.from_config(svc.cfg))
    secret = new_secret()
    sealed = seal_secret(SecretBox(svc.cfg.secret_key), did, url, secret)  # never stored in clear
    hook = await svc.store.set_webhook(Webhook(did=did, url=url, secret=sealed, events=events))
    _forget(svc, did)
    return jsonify({"url": hook.url, "events": list(hook.events), "secret": secret})


@blueprint.get("/member/webhook")
async def get_webhook() -> Response:
    svc, did = await _member()
    hook = await svc.store.get_webhook(did)
    if hook is None:
        return _not_found()
    return jsonify({"url": hook.url, "events": list(hook.events), "created_at": hook.created_at})


@blueprint.delete("/member/webhook")
async def delete_webhook() -> Response:
    svc, did = await _member()
    if not await svc.store.delete_webhook(did):
        return _not_found()
    _forget(svc, did)
    return jsonify({"deleted": True})


def _forget(svc: Services, did: str) -> None:
    if svc.webhooks is not None:  # the dispatcher's cached endpoint is stale now
        svc.webhooks.forget(did)


def _not_found() -> Response:
    resp = jsonify({"error": "no webhook is registered", "code": "NOT_FOUND"})
    resp.status_code = 404
    return resp


def _json_object(body: Any, fields: frozenset[str], shape: str, allowed: str) -> dict[str, Any]:
    """``body`` as a JSON object of only ``fields``; 400 naming the shape or the first unknown field."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object with {shape}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} (allowed: {allowed})")
    return body


def _parse_webhook(body: Any, egress: Egress) -> tuple[str, tuple[str, ...]]:
    body = _json_object(body, WEBHOOK_FIELDS, "url and optional events", "url, events")
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest("url: required, an https:// URL")
    url = url.strip()
    if len(url) > 2048:
        raise InvalidRequest("url: longer than 2048 characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidRequest(f"url: not a valid URL ({exc})") from None
    if not host or parts.username is not None or parts.password is not None:
        raise InvalidRequest("url: must name a host and carry no user name or password")
    try:
        egress.check_url(url)
    except EgressRefused:
        raise InvalidRequest("url: must be an https:// URL (plain http only in --dev)") from None
    literal = _literal(host)
    if literal is not None and egress.refusal(literal) is not None:
        # Names are checked again at every connection (they can change); an address can be refused now.
        raise InvalidRequest(f"url: {literal} is {egress.refusal(literal)}, not a public address")
    events: Any = body.get("events")
    if events is None:
        return url, EVENT_TYPES
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidRequest(f"events: a non-empty list of event types ({', '.join(EVENT_TYPES)})")
    bad = [e for e in events if e not in EVENT_TYPES]
    if bad:
        raise InvalidRequest(f"events: unknown event type {bad[0]!r} (allowed: {', '.join(EVENT_TYPES)})")
    return url, tuple(e for e in EVENT_TYPES if e in events)


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _parse_forward(body: Any) -> tuple[str, str | None]:
    body = _json_object(body, FORWARD_FIELDS, "domain and forward_to", "domain, forward_to")
    domain = body.get("domain")
    if not isinstance(domain, str) or not domain.strip():
        raise InvalidRequest("domain: required, a string naming one of your sending domains")
    domain = normalize_domain(domain)
    if "forward_to" not in body:
        raise InvalidRequest("forward_to: required (an address, or null to stop forwarding)")
    target = body["forward_to"]
    if target is None or target == "":
        return domain, None
    if not isinstance(target, str):
        raise InvalidRequest("forward_to: must be a string address or null")
    target = target.strip()
    try:
        local, target_domain = split_address(target)
    except ValueError as exc:
        raise InvalidRequest(f"forward_to: {exc}") from None
    if len(target) > 254:
        raise InvalidRequest("forward_to: longer than 254 characters")
    if target_domain == domain:
        # Replies to this domain come to the relay; forwarding them back to it would loop.
        raise InvalidRequest(f"forward_to: must not be on {domain} itself (forwarded replies would loop)")
    return domain, f"{local}@{target_domain}"
