"""The /v1 HTTP API: send, per-message status, health (DESIGN §3)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from functools import partial
from typing import Any

import trio
from quart import Blueprint, Response, current_app, jsonify, request

from relay.accept import sendmeta
from relay.accept.category import is_transactional
from relay.accept.intake import admit
from relay.accept.sender import check_sender, header_section
from relay.app.services import Services
from relay.errors import AuthRequired, InvalidDid, InvalidRequest, PayloadTooLarge, RelayError
from relay.members.auth import Principal
from relay.operator.health import refusals
from relay.reputation import RateLimitExceeded, Reputation
from relay.store.base import IdempotentResponse, StoreError
from relay.store.mirror import IDEMPOTENCY_KEY, REJECTED, REQUEST_HASH, send_response
from spool import SpoolError
from web.compose import compose
from web.jsonbody import parse_json
from web.validate import parse_send_request

log = logging.getLogger("web.api")
blueprint = Blueprint("api", __name__)
IDEMPOTENCY_TTL = 24 * 3600
# Across nodes (issue 17) a key is claimed in the store before its request sends: a claim lives CLAIM_TTL s
# (a node that died mid-request loses it then), a duplicate waits up to CLAIM_WAIT s for the answer.
CLAIM_TTL = 30.0
CLAIM_WAIT = 5.0
CLAIM_POLL = 0.05
BATCH_MAX = 100  # messages per POST /v1/send/batch
_idem_locks: dict[tuple[str, str], trio.Lock] = {}


def services() -> Services:
    svc: Services = current_app.extensions["atmos"]
    return svc


def reputation(svc: Services) -> Reputation | None:
    """The rate-limit and suspension service (None only where a test builds Services without one)."""
    return svc.reputation


def rate_limited(exc: RateLimitExceeded) -> Response:
    """429 RATE_LIMITED with Retry-After and RateLimit-* (draft-ietf-httpapi-ratelimit-headers)."""
    resp = jsonify(exc.http_body())
    resp.status_code = exc.http_status
    for name, value in exc.headers.items():
        resp.headers[name] = value
    return resp


async def authenticate() -> Principal:
    """Bearer API key + X-Atmos-DID header (or ?did=)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthRequired("Authorization: Bearer <api key> header required")
    did = request.headers.get("X-Atmos-DID") or request.args.get("did") or ""
    if not did:
        raise AuthRequired("X-Atmos-DID header or ?did= parameter required")
    if not did.startswith("did:"):
        raise InvalidDid()
    return await services().auth.authenticate(did, key.strip(), peer=request.remote_addr or "")


async def read_json() -> Any:
    limit = services().cfg.limits.json_body
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return parse_json(await request.get_data(cache=True))


@blueprint.post("/v1/send")
async def send() -> Response:
    svc = services()
    if (request.content_length or 0) > svc.cfg.limits.json_body:
        raise PayloadTooLarge(f"request body larger than {svc.cfg.limits.json_body} bytes")
    principal = await authenticate()
    try:
        return await _send_keyed(svc, principal)
    except RateLimitExceeded as exc:
        return rate_limited(exc)


async def _send_keyed(svc: Services, principal: Principal) -> Response:
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        return await _send_plain(svc, principal)
    if len(key) > 255:
        raise InvalidRequest("Idempotency-Key: at most 255 characters")
    # One request per key at a time: a concurrent duplicate waits and then replays.
    lock = _idem_locks.setdefault((principal.did, key), trio.Lock())
    try:
        async with lock:
            return await _send_idempotent(svc, principal, key)
    finally:
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            _idem_locks.pop((principal.did, key), None)


async def _send_idempotent(svc: Services, principal: Principal, key: str) -> Response:
    """The key and the request hash travel in the spooled message's envelope, and the stored answer
    is derived from it (relay.store.mirror): it exists exactly when the message does, also after a
    crash, and no store failure after the accept can turn a sent message into a 500 (issue 14).

    Several nodes (issue 17): before sending, the request claims (did, key) in the store
    (``Store.claim_idempotent``). A duplicate that finds another node's live claim polls the store for
    the stored answer and replays it; still in progress after ``CLAIM_WAIT`` s it is answered 409
    ``IDEMPOTENCY_KEY_IN_PROGRESS`` (retry later). The claim is dropped once the answer is stored (or the
    request failed: a retry must be able to send); a node that dies keeps it until ``CLAIM_TTL``."""
    body = await request.get_data(cache=True, as_text=False)
    digest = hashlib.sha256(body if isinstance(body, bytes) else body.encode()).hexdigest()
    prior = await svc.store.get_idempotent(principal.did, key)
    if prior is None:
        await svc.writer.flush()  # an accept a moment ago may still be on its way to the store
        prior = await svc.store.get_idempotent(principal.did, key)
    if prior is not None and prior.created_at > time.time() - IDEMPOTENCY_TTL:
        return _replay(prior, digest)
    holder = secrets.token_hex(8)
    deadline = trio.current_time() + CLAIM_WAIT
    while True:
        now = time.time()
        claim = await svc.store.claim_idempotent(principal.did, key, holder, digest, now, CLAIM_TTL,
                                                 now - IDEMPOTENCY_TTL)
        if claim.state == "mine":
            break
        if claim.response is not None:
            return _replay(claim.response, digest)
        if claim.request_hash != digest:
            return _reused()
        if trio.current_time() >= deadline:
            resp = jsonify({"error": "a request with this Idempotency-Key is still in progress; retry later",
                            "code": "IDEMPOTENCY_KEY_IN_PROGRESS"})
            resp.status_code = 409
            resp.headers["Retry-After"] = "1"
            return resp
        await trio.sleep(CLAIM_POLL)
    keep_claim = False
    try:
        resp, spooled = await _send(svc, principal, idempotency=(key, digest))
        if resp.status_code == 200 and not spooled:
            # Nothing was spooled (every recipient refused), so there is no envelope to carry the key:
            # remember the answer here. Errors are not remembered: fixing the input and retrying must work.
            try:
                await svc.store.put_idempotent(principal.did, key, digest, resp.status_code,
                                               (await resp.get_data(as_text=True)), time.time())
            except StoreError:
                log.exception("could not remember Idempotency-Key %r of %s (nothing was spooled)", key,
                              principal.did)
                keep_claim = True  # keep the claim: until it expires a duplicate waits rather than sends
        elif spooled:
            # The answer reaches the store with the message's row (relay.store.mirror): only then may the
            # claim go, or a duplicate on another node would find neither and send again.
            with trio.move_on_after(CLAIM_TTL / 2) as waited:
                await svc.writer.flush()
            keep_claim = waited.cancelled_caught  # not yet stored: the claim keeps duplicates waiting
        return resp
    finally:
        if not keep_claim:
            with trio.CancelScope(shield=True):
                try:
                    await svc.store.release_idempotent(principal.did, key, holder)
                except StoreError as exc:  # the claim expires by itself
                    log.warning("Idempotency-Key claim %r of %s not released: %s", key, principal.did, exc)


def _replay(prior: IdempotentResponse, digest: str) -> Response:
    if prior.request_hash != digest:
        return _reused()
    resp = Response(prior.response_json, status=prior.status_code, content_type="application/json")
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


def _reused() -> Response:
    resp = jsonify({"error": "Idempotency-Key was already used with a different request body",
                    "code": "IDEMPOTENCY_KEY_REUSED"})
    resp.status_code = 422
    return resp


async def _send_plain(svc: Services, principal: Principal) -> Response:
    resp, _ = await _send(svc, principal)
    return resp


async def _send(
    svc: Services, principal: Principal, *, idempotency: tuple[str, str] | None = None
) -> tuple[Response, bool]:
    """The answer, and whether a message was spooled."""
    body, headers, spooled = await send_one(svc, principal, await read_json(), idempotency=idempotency)
    resp = jsonify(body)
    for name, value in headers.items():
        resp.headers[name] = value
    return resp, spooled


async def send_one(
    svc: Services, principal: Principal, payload: Any, *, idempotency: tuple[str, str] | None = None
) -> tuple[dict[str, object], dict[str, str], bool]:
    """One /v1/send body: (the JSON answer, rate-limit headers, spooled?). Raises RelayError (incl. 429)."""
    limits = svc.cfg.limits
    parse = partial(parse_send_request, payload, max_recipients=limits.recipients_per_message,
                    max_attachment_bytes=limits.attachment_bytes)
    # Decoding 10 MiB of base64 attachments takes ~0.1 s (composing them ~0.3 s): off the event loop.
    has_attachments = isinstance(payload, dict) and bool(payload.get("attachments"))
    req = await trio.to_thread.run_sync(parse) if has_attachments else parse()
    sender_domain = check_sender(principal, req.sender.address, what="from")
    category = req.category or principal.default_category(sender_domain)
    transactional = is_transactional(category)

    async def build(rcpts: list[str], suppressed: list[str]) -> tuple[bytes, dict[str, str]]:
        data = await trio.to_thread.run_sync(compose, req) if req.attachments else compose(req)
        if len(data) > limits.message_size:
            raise PayloadTooLarge("composed message larger than the message size limit")
        header_section(data, limits.header_size)  # 400 HEADER_TOO_LARGE past limits.header_size
        attrs = {"source": "http", "subject": req.subject, "category": category,
                 "transactional": "1" if transactional else "", **sendmeta.attrs(req.tags, dict(req.metadata))}
        if idempotency is not None:
            attrs |= {IDEMPOTENCY_KEY: idempotency[0], REQUEST_HASH: idempotency[1],
                      REJECTED: json.dumps(_rejected(suppressed), separators=(",", ":"))}
        return data, attrs

    # The recipients are to + cc + bcc: bcc only in the envelope, never a header.
    admission = await admit(svc.store, svc.acceptor, reputation(svc), principal, mail_from=req.sender.address,
                            sender_domain=sender_domain, rcpts=req.recipients, transactional=transactional,
                            build=build)
    body = send_response(admission.accepted, admission.ids, _rejected(admission.suppressed))
    return body, admission.headers, bool(admission.ids)


def _rejected(suppressed: list[str]) -> list[dict[str, Any]]:
    return [{"recipient": r, "reason": "suppressed recipient", "code": "SUPPRESSED"} for r in suppressed]


@blueprint.post("/v1/send/batch")
async def send_batch() -> Response:
    """Up to BATCH_MAX send bodies; one result per element, in order, each with its own checks.

    An element's result is its /v1/send answer with ``"status": 200``, or its error body
    (``error``, ``code``, ``status``); the batch itself answers 200 once it is a valid array.
    """
    svc = services()
    if (request.content_length or 0) > svc.cfg.limits.json_body:
        raise PayloadTooLarge(f"request body larger than {svc.cfg.limits.json_body} bytes")
    principal = await authenticate()
    if request.headers.get("Idempotency-Key", "").strip():
        raise InvalidRequest("Idempotency-Key: not supported on /v1/send/batch (send elements to /v1/send)")
    payload = await read_json()
    if not isinstance(payload, list) or not payload:
        raise InvalidRequest("request body must be a non-empty JSON array of /v1/send bodies")
    if len(payload) > BATCH_MAX:
        raise InvalidRequest(f"batch: at most {BATCH_MAX} messages, got {len(payload)}")
    results: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    for i, element in enumerate(payload):
        try:
            body, headers, _ = await send_one(svc, principal, element)
            results.append({"index": i, "status": 200, **body})
        except RateLimitExceeded as exc:
            headers = exc.headers
            results.append({"index": i, "status": exc.http_status, **exc.http_body()})
        except RelayError as exc:
            results.append({"index": i, "status": exc.http_status, **exc.http_body()})
    resp = jsonify({"results": results})
    for name, value in headers.items():
        resp.headers[name] = value
    return resp


@blueprint.get("/v1/messages/<int:message_id>")
async def message_status(message_id: int) -> Response:
    svc = services()
    principal = await authenticate()
    row = await svc.store.get_message(message_id)
    if row is None:
        await svc.writer.flush()  # status rows are batched: the message may be a few ms old
        row = await svc.store.get_message(message_id)
    if row is None or row.did != principal.did:
        resp = jsonify({"error": f"no message {message_id} for this DID", "code": "NOT_FOUND"})
        resp.status_code = 404
        return resp
    attempts = await svc.store.attempts_for(message_id)
    return jsonify({
        "messageId": row.id, "status": row.status, "recipient": row.recipient, "from": row.mail_from,
        "subject": row.subject, "category": row.category, "source": row.source,
        "tags": sendmeta.tags_of(row.tags), "metadata": sendmeta.metadata_of(row.metadata),
        "attempts": row.attempts, "lastReply": row.last_reply, "nextAttemptAt": row.next_attempt_at,
        "createdAt": row.created_at, "updatedAt": row.updated_at,
        "timeline": [{"at": a.at, "mxHost": a.mx_host, "reply": a.reply, "tls": a.tls, "outcome": a.outcome}
                     for a in attempts],
    })


@blueprint.get("/healthz")
async def healthz() -> Response:
    """200 ``{"status": "ok"}`` while the relay takes mail; 503 ``{"status": "refusing", "reasons": [...]}``
    while it refuses it (relay.operator.health), so a load balancer or monitor learns the truth."""
    svc = services()
    reasons = await refusals(svc)
    body: dict[str, Any] = {"status": "refusing" if reasons else "ok", "node": svc.node.name}
    if reasons:
        body["reasons"] = reasons
    try:
        stats = svc.spool.stats()
        body["spool"] = {"liveMessages": stats.live_messages, "liveRecipients": stats.live_recipients}
    except SpoolError:
        pass  # already a reason
    resp = jsonify(body)
    resp.status_code = 503 if reasons else 200
    return resp


__all__ = ["RelayError", "blueprint"]
