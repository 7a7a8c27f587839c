"""Member endpoints (DESIGN §3): standing, deliverability, reply forwarding. Same auth as /v1/send.

The API key authenticates exactly one DID (``X-Atmos-DID`` or ``?did=``); a member reads and changes
only its own data. Errors, each ``{"error", "code"}``:

    AUTH_REQUIRED 400, INVALID_DID 400, AUTH_FAILED 401 (wrong key for that DID),
    MEMBER_SUSPENDED 403 (only PUT: a suspended member may still read its standing),
    FORBIDDEN 403 (``?did=`` names another DID than the authenticated ``X-Atmos-DID``),
    DOMAIN_MISMATCH 403 (the domain is not the member's), INVALID_REQUEST 400 (names the field),
    SERVICE_UNAVAILABLE 503 (the reputation service is not running or the store is down).
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request

from relay.address import normalize_domain, split_address
from relay.errors import DomainMismatch, InvalidRequest, MemberSuspended, QueueUnavailable, RelayError
from relay.reputation import Reputation
from relay.services import Services
from relay.store.base import StoreError
from web.api import authenticate, read_json, reputation, services

blueprint = Blueprint("member", __name__)
FORWARD_FIELDS = frozenset({"domain", "forward_to"})


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
        # relay.auth checks the key before it discloses a suspension, so this DID is authenticated.
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
        from web.pages import _current_labels  # the same "labels in force" view as /account

        status["labels"] = await _current_labels(svc, did)
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
    return jsonify({"domain": updated.domain, "forward_to": updated.forward_to})


def _parse_forward(body: Any) -> tuple[str, str | None]:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with domain and forward_to")
    unknown = sorted(set(body) - FORWARD_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} (allowed: domain, forward_to)")
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
