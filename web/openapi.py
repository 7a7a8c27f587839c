"""``GET /openapi.json``: the OpenAPI 3.1 description of every JSON endpoint (DESIGN §3).

One document for the member API (``/v1``, ``/member``) and the operator API (``/admin/api``), built from
the running configuration (server URL, limits). Schemas are JSON Schema 2020-12 (OpenAPI 3.1 §4.8.24);
tests/e2e/test_openapi.py checks every documented status and schema against the relay's real answers,
and fails on an answer whose status is not documented.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify

from relay.config import Config
from relay.members.webhooks import EVENT_TYPES
from relay.store.rows import MESSAGE_STATUSES
from web.api import BATCH_MAX, services

blueprint = Blueprint("openapi", __name__)

# Error codes by HTTP status, and whether a client should retry (the same request, later).
ERRORS: list[tuple[str, int, bool, str]] = [
    ("INVALID_REQUEST", 400, False, "a field is missing or wrong; the message names it"),
    ("AUTH_REQUIRED", 400, False, "no Authorization: Bearer header, or no X-Atmos-DID"),
    ("INVALID_DID", 400, False, "X-Atmos-DID is not a did:plc or did:web"),
    ("AUTH_FAILED", 401, False, "the API key does not belong to that DID"),
    ("MEMBER_SUSPENDED", 403, False, "the member is suspended; the reason is in the message"),
    ("DOMAIN_MISMATCH", 403, False, "from is not on a verified domain of this DID"),
    ("FORBIDDEN", 403, False, "the key of one DID cannot read another's data"),
    ("NOT_FOUND", 404, False, "no such message, suppression, webhook or queued message"),
    ("IDEMPOTENCY_KEY_IN_PROGRESS", 409, True, "a request with the same Idempotency-Key is still being handled "
                                                "(perhaps by another node); retry after Retry-After seconds"),
    ("PAYLOAD_TOO_LARGE", 413, False, "body over limits.json_body, attachments over limits.attachment_bytes, "
                                      "or the composed message over limits.message_size"),
    ("IDEMPOTENCY_KEY_REUSED", 422, False, "the Idempotency-Key was used with a different body"),
    ("SUPPRESSED", 422, False, "every recipient is on the suppression list"),
    ("RATE_LIMITED", 429, True, "a warming, hourly, daily or relay-wide cap; retry after Retry-After seconds"),
    ("INTERNAL", 500, True, "an unexpected error (logged); retry with the same Idempotency-Key"),
    ("QUEUE_UNAVAILABLE", 503, True, "the spool or store cannot take mail right now"),
    ("SERVICE_UNAVAILABLE", 503, True, "member statistics are unavailable right now"),
    ("INSUFFICIENT_STORAGE", 507, True, "the spool is full"),
]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        codes = [code for code, s, _, _ in ERRORS if s == status]
        out[str(status)] = _json({"allOf": [_ERROR, {"properties": {"code": {"enum": codes}}}]},
                                 ", ".join(codes) or "error")
    return out


def _obj(required: list[str], props: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": extra}


_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NULL_STR = {"type": ["string", "null"]}
_NULL_NUM = {"type": ["number", "null"]}
_ADDRESSES = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
              "description": "local@domain or Name <local@domain> (RFC 5322 name-addr); one string or an array"}

_MEMBER_AUTH: list[dict[str, list[str]]] = [{"apiKey": [], "did": []}]
_ADMIN_AUTH: list[dict[str, list[str]]] = [{"adminToken": []}]


def document(cfg: Config, server_url: str) -> dict[str, Any]:
    limits = cfg.limits
    schemas: dict[str, Any] = {
        "Error": _obj(["error", "code"], {"error": _STR, "code": _STR, "limit": {"type": "object"}}),
        "Attachment": _obj(["filename", "content"], {
            "filename": {"type": "string", "maxLength": 255},
            "content": {"type": "string", "contentEncoding": "base64", "description": "the file's bytes, base64"},
            "contentType": {"type": "string", "description": "MIME type; default from the file name"},
            "contentId": {"type": "string", "description": "makes the part inline (multipart/related), "
                                                           "referenced as cid:<contentId> in html"},
        }),
        "SendRequest": _obj(["from", "to"], {
            "from": {"type": "string", "description": "on a verified domain of the DID; may carry a display name"},
            "to": _ADDRESSES, "cc": _ADDRESSES,
            "bcc": {**_ADDRESSES, "description": "envelope only: recipients get the message, never a Bcc header"},
            "replyTo": _ADDRESSES,
            "subject": _STR, "text": _STR, "html": _STR,
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "extra header fields; reserved ones (From, To, Cc, Bcc, DKIM-Signature, "
                                       "List-Unsubscribe, ...) are refused"},
            "category": {"type": "string", "pattern": "^[a-z0-9._-]{0,64}$",
                         "description": "transactional, password-reset, login-link, mfa-otp, verification: no "
                                        "unsubscribe link, suppression list skipped; default: the domain's "
                                        "default category, else bulk"},
            "attachments": {"type": "array", "maxItems": 50, "items": {"$ref": "#/components/schemas/Attachment"},
                            "description": f"at most {limits.attachment_bytes} bytes decoded in total"},
            "tags": {"type": "array", "maxItems": 10, "items": {"type": "string", "pattern":
                                                                "^[A-Za-z0-9._:/@+-]{1,64}$"}},
            "metadata": {"type": "object", "maxProperties": 10,
                         "additionalProperties": {"type": "string", "maxLength": 256}},
        }),
        "SendResult": _obj(["accepted", "rejected"], {
            "accepted": {"type": "array", "items": _obj(["recipient", "messageId"],
                                                        {"recipient": _STR, "messageId": _INT})},
            "rejected": {"type": "array", "items": _obj(["recipient", "reason", "code"],
                                                        {"recipient": _STR, "reason": _STR, "code": _STR})},
        }),
        "BatchResult": _obj(["results"], {"results": {"type": "array", "items": {
            "type": "object", "required": ["index", "status"],
            "properties": {"index": _INT, "status": _INT, "accepted": {"type": "array"},
                           "rejected": {"type": "array"}, "error": _STR, "code": _STR}}}}),
        "MessageStatus": _obj(
            ["messageId", "status", "recipient", "from", "attempts", "createdAt", "timeline", "tags", "metadata"], {
                "messageId": _INT, "status": {"enum": list(MESSAGE_STATUSES)},
                "recipient": _STR, "from": _STR, "subject": _NULL_STR, "category": _NULL_STR, "source": _STR,
                "attempts": _INT, "lastReply": _NULL_STR, "nextAttemptAt": _NULL_NUM, "createdAt": _NUM,
                "updatedAt": _NUM, "tags": {"type": "array", "items": _STR},
                "metadata": {"type": "object", "additionalProperties": _STR},
                "timeline": {"type": "array", "items": _obj(["at", "reply", "tls", "outcome"], {
                    "at": _NUM, "mxHost": _NULL_STR, "reply": _STR, "tls": _BOOL, "outcome": _STR})},
            }),
        "Suppression": _obj(["recipient", "reason", "createdAt"], {"recipient": _STR, "reason": _STR,
                                                                   "createdAt": _NUM}),
        "Webhook": _obj(["url", "events"], {"url": _STR, "events": {"type": "array", "items": {
            "enum": list(EVENT_TYPES)}}, "secret": _STR, "created_at": _NUM}),
        "QueuedMessage": _obj(["queue_id", "did", "from", "recipients"], {
            "queue_id": _INT, "did": _STR, "from": _STR, "size": _INT, "arrival": _NUM, "age_seconds": _NUM,
            "attrs": {"type": "object", "additionalProperties": _STR},
            "recipients": {"type": "array", "items": {"type": "object", "required": ["id", "address", "state"]}},
        }),
    }
    member_errors = _errors(400, 401, 403)
    paths: dict[str, Any] = {
        "/v1/send": {"post": {
            "summary": "Send one message", "security": _MEMBER_AUTH,
            "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255},
                            "description": "same key + same body within 24 h: the first answer is replayed"}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/SendRequest"}}}},
            "responses": {"200": _json({"$ref": "#/components/schemas/SendResult"}, "accepted (durable)"),
                          **member_errors, **_errors(409, 413, 422, 429, 503, 507)}}},
        "/v1/send/batch": {"post": {
            "summary": f"Send up to {BATCH_MAX} messages, one result each", "security": _MEMBER_AUTH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "array", "minItems": 1, "maxItems": BATCH_MAX,
                "items": {"$ref": "#/components/schemas/SendRequest"}}}}},
            "responses": {"200": _json({"$ref": "#/components/schemas/BatchResult"}, "one result per element"),
                          **member_errors, **_errors(413)}}},
        "/v1/messages/{messageId}": {"get": {
            "summary": "Status and delivery timeline of one recipient", "security": _MEMBER_AUTH,
            "parameters": [{"name": "messageId", "in": "path", "required": True, "schema": _INT}],
            "responses": {"200": _json({"$ref": "#/components/schemas/MessageStatus"}, "the message"),
                          **member_errors, **_errors(404)}}},
        "/v1/suppressions": {
            "get": {"summary": "The member's suppression list", "security": _MEMBER_AUTH,
                    "responses": {"200": _json(_obj(["suppressions"], {"suppressions": {
                        "type": "array", "items": {"$ref": "#/components/schemas/Suppression"}}}), "the list"),
                        **member_errors}},
            "post": {"summary": "Suppress a recipient", "security": _MEMBER_AUTH,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                         ["recipient"], {"recipient": _STR, "reason": {"type": "string", "maxLength": 200}})}}},
                     "responses": {
                         "200": _json(_obj(["recipient", "reason", "created"], {
                             "recipient": _STR, "reason": _STR, "created": {"const": False}}), "already there"),
                         "201": _json(_obj(["recipient", "reason", "created"], {
                             "recipient": _STR, "reason": _STR, "created": {"const": True}}), "added"),
                         **member_errors}}},
        "/v1/suppressions/{recipient}": {"delete": {
            "summary": "Remove a suppression", "security": _MEMBER_AUTH,
            "parameters": [{"name": "recipient", "in": "path", "required": True, "schema": _STR}],
            "responses": {"200": _json(_obj(["recipient", "removed"], {"recipient": _STR, "removed": _BOOL}),
                                       "removed"), **member_errors, **_errors(404)}}},
        "/healthz": {"get": {"summary": "Whether the relay takes mail, and spool figures", "responses": {
            "200": _json(_obj(["status", "node"], {"status": {"const": "ok"}, "node": _STR,
                                                   "spool": {"type": "object"}}), "taking mail (node: which answered)"),
            "503": _json(_obj(["status", "reasons", "node"], {
                "status": {"const": "refusing"}, "node": _STR, "reasons": {"type": "array", "items": _STR},
                "spool": {"type": "object"}}), "refusing mail, with the reasons")}}},
        "/member/status": {"get": {"summary": "Standing, budgets, labels", "security": _MEMBER_AUTH, "responses": {
            "200": _json(_obj(["did", "status", "domains", "standing", "labels"], {
                "did": _STR, "handle": _NULL_STR, "status": {"enum": ["active", "suspended"]},
                "suspensionReason": _NULL_STR, "totals": {"type": "object"}, "domains": {"type": "array"},
                "standing": {"type": "object"}, "labels": {"type": "array"}}), "the member"),
            **member_errors, **_errors(503)}}},
        "/member/deliverability": {"get": {
            "summary": "Daily sends, bounces, complaints", "security": _MEMBER_AUTH,
            "parameters": [{"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                      "maximum": 14}}],
            "responses": {"200": _json(_obj(["did", "days"], {"did": _STR, "days": {"type": "array"}},
                                            extra=True), "per day"),
                          **member_errors, **_errors(503)}}},
        "/member/forward-to": {"put": {
            "summary": "Forward replies to a sending domain to an address", "security": _MEMBER_AUTH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                ["domain", "forward_to"], {"domain": _STR, "forward_to": _NULL_STR})}}},
            "responses": {"200": _json(_obj(
                ["domain", "forward_to", "confirmed", "confirmation_sent"],
                {"domain": _STR, "forward_to": _NULL_STR, "confirmed": _BOOL, "confirmation_sent": _BOOL}),
                "saved; replies are forwarded once the link mailed to the new address is opened"),
                **member_errors}}},
        "/member/category": {"put": {
            "summary": "Default category of a sending domain's mail", "security": _MEMBER_AUTH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                ["domain", "category"], {"domain": _STR, "category": {"type": "string",
                                                                      "pattern": "^[a-z0-9._-]{0,64}$"}})}}},
            "responses": {"200": _json(_obj(["domain", "category", "transactional"], {
                "domain": _STR, "category": _STR, "transactional": _BOOL}), "saved"), **member_errors}}},
        "/member/webhook": {
            "put": {"summary": "Register the webhook endpoint (a new secret each time)", "security": _MEMBER_AUTH,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(["url"], {
                        "url": _STR, "events": {"type": "array", "items": {"enum": list(EVENT_TYPES)}}})}}},
                    "responses": {"200": _json({"$ref": "#/components/schemas/Webhook"}, "registered"),
                                  **member_errors}},
            "get": {"summary": "The registered endpoint", "security": _MEMBER_AUTH,
                    "responses": {"200": _json({"$ref": "#/components/schemas/Webhook"}, "registered"),
                                  **member_errors, **_errors(404)}},
            "delete": {"summary": "Remove the endpoint", "security": _MEMBER_AUTH,
                       "responses": {"200": _json(_obj(["deleted"], {"deleted": {"const": True}}), "removed"),
                                     **member_errors, **_errors(404)}}},
        "/admin/api/queue": {"get": {
            "summary": "Live spool messages", "security": _ADMIN_AUTH,
            "parameters": [{"name": "state", "in": "query", "schema": _STR}],
            "responses": {"200": _json(_obj(["node", "messages", "stats"], {
                "node": _STR,
                "messages": {"type": "array", "items": {"$ref": "#/components/schemas/QueuedMessage"}},
                "stats": {"type": "object"}}), "the queue of the node that answered"), **_errors(400, 401)}}},
        "/admin/api/queue/{queueId}": {"get": {
            "summary": "One queued message and its store rows", "security": _ADMIN_AUTH,
            "parameters": [{"name": "queueId", "in": "path", "required": True, "schema": _INT}],
            "responses": {"200": _json(_obj(["node", "owner", "queued", "store"], {
                "node": _STR, "owner": _INT,
                "queued": {"oneOf": [{"$ref": "#/components/schemas/QueuedMessage"}, {"type": "null"}]},
                "store": {"type": "array"}}),
                "found (queued: null when another node holds it; owner: the number of that node)"),
                **_errors(400, 401, 404)}}},
        "/admin/api/queue/{queueId}/{action}": {"post": {
            "summary": "retry | hold | release | delete", "security": _ADMIN_AUTH,
            "parameters": [{"name": "queueId", "in": "path", "required": True, "schema": _INT},
                           {"name": "action", "in": "path", "required": True,
                            "schema": {"enum": ["retry", "hold", "release", "delete"]}}],
            "responses": {"200": _json(_obj(["queue_id", "action", "changed", "node"], {
                "queue_id": _INT, "action": _STR, "changed": _INT, "node": _STR}),
                "done (by the node holding the message; node: the one that answered)"), **_errors(400, 401, 404)}}},
        "/admin/api/nodes": {"get": {
            "summary": "Every node of the relay and the running ones' totals", "security": _ADMIN_AUTH,
            "responses": {"200": _json(_obj(["node", "nodes", "totals"], {
                "node": _STR, "totals": {"type": "object"},
                "nodes": {"type": "array", "items": _obj(
                    ["node", "number", "host", "pid", "state", "jobs", "started_at", "heartbeat_age_seconds"],
                    {"node": _STR, "number": _INT, "host": _STR, "pid": _INT,
                     "state": {"enum": ["running", "stopped", "silent"]}, "jobs": _BOOL, "started_at": _NUM,
                     "heartbeat_age_seconds": _NUM, "queue_messages": _INT, "queue_recipients": _INT,
                     "spool_bytes": _INT, "in_flight": _INT, "accepted": _INT, "delivered": _INT,
                     "deferred": _INT, "bounced": _INT})}}), "the nodes"), **_errors(400, 401)}}},
        "/admin/api/destinations/{domain}/{action}": {"post": {
            "summary": "Pause or resume delivery to a destination domain", "security": _ADMIN_AUTH,
            "parameters": [{"name": "domain", "in": "path", "required": True, "schema": _STR},
                           {"name": "action", "in": "path", "required": True,
                            "schema": {"enum": ["pause", "resume"]}}],
            "responses": {"200": _json(_obj(["domain", "paused"], {"domain": _STR, "paused": _BOOL}), "done"),
                          **_errors(400, 401)}}},
        "/admin/api/command": {"post": {
            "summary": "An operator command, as on /admin/ws", "security": _ADMIN_AUTH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
                ["id", "action", "target"], {"id": _STR, "action": _STR, "target": _STR, "reason": _STR})}}},
            "responses": {
                "200": _json(_obj(["id", "ok", "message"], {"id": _STR, "ok": {"const": True}, "message": _STR}),
                             "done"),
                "400": _json({"oneOf": [
                    _obj(["id", "ok", "message"], {"id": _STR, "ok": {"const": False}, "message": _STR}),
                    _ERROR]}, "refused command or missing token"),
                **_errors(401)}}},
        "/admin/api/tls-reports": {"get": {
            "summary": "TLS reports (RFC 8460) received about the operator domain, newest first",
            "security": _ADMIN_AUTH,
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                       "maximum": 500}}],
            "responses": {"200": _json(_obj(["reports"], {"reports": {"type": "array", "items": _obj(
                ["organization", "report_id", "policy_domain", "start", "end", "successes", "failures",
                 "failure_types", "received_at"],
                {"organization": _STR, "report_id": _STR, "policy_domain": _STR, "start": _STR, "end": _STR,
                 "successes": _INT, "failures": _INT, "failure_types": _STR, "received_at": _NUM})}}),
                "reports"), **_errors(400, 401)}}},
        "/admin/api/snapshot": {"get": {
            "summary": "The event stream's snapshot frame", "security": _ADMIN_AUTH,
            "responses": {"200": _json(_obj(["v", "type", "ts", "data"], {
                "v": {"const": 1}, "type": {"const": "snapshot"}, "ts": _NUM, "data": {"type": "object"}}),
                "snapshot"), **_errors(400, 401)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Atmosphere Relay API", "version": "1",
                 "description": "Send mail as an atproto member; operator queue control. Errors are "
                                "{error, code}; see /docs/api for every code and whether to retry."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "the member's API key"},
                "did": {"type": "apiKey", "in": "header", "name": "X-Atmos-DID"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "ATMOS_ADMIN_TOKEN"},
            },
        },
    }


@blueprint.get("/openapi.json")
async def openapi() -> Response:
    svc = services()
    return jsonify(document(svc.cfg, svc.cfg.public_url))


__all__ = ["ERRORS", "blueprint", "document"]
