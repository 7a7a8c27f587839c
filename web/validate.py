"""Validate a /v1/send JSON body; every error names the bad field (DESIGN §3)."""

from __future__ import annotations

import re
from typing import Any

from relay.address import split_address
from relay.errors import InvalidRequest
from web.compose import RESERVED, SendRequest

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext: printable ASCII except ':'
KNOWN_FIELDS = frozenset({"from", "to", "subject", "text", "html", "replyTo", "headers", "category"})


def parse_send_request(body: Any, *, max_recipients: int) -> SendRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(KNOWN_FIELDS))})")
    sender = _address(_required_str(body, "from"), "from")
    to = _address_list(body.get("to"), "to", required=True)
    if len(to) > max_recipients:
        raise InvalidRequest(f"to: at most {max_recipients} recipients per message, got {len(to)}")
    subject = _optional_str(body, "subject") or ""
    _no_newlines(subject, "subject")
    text = _optional_str(body, "text")
    html = _optional_str(body, "html")
    if text is None and html is None:
        raise InvalidRequest("text: required unless html is given")
    reply_to = _address_list(body.get("replyTo"), "replyTo", required=False)
    category = (_optional_str(body, "category") or "").strip().lower()
    if len(category) > 64 or not re.fullmatch(r"[a-z0-9._-]*", category):
        raise InvalidRequest("category: use letters, digits, '.', '_' or '-' (at most 64)")
    return SendRequest(sender, to, subject, text, html, reply_to, _headers(body.get("headers")), category)


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"{name}: required")
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: must be a string")
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{name}: must be a string")
    return value


def _address(value: str, name: str) -> str:
    value = value.strip()
    _no_newlines(value, name)
    if "<" in value or ">" in value:
        raise InvalidRequest(f"{name}: give a bare address (local@domain), not a display name")
    try:
        split_address(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
    return value


def _address_list(value: Any, name: str, *, required: bool) -> tuple[str, ...]:
    if value is None:
        if required:
            raise InvalidRequest(f"{name}: required")
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InvalidRequest(f"{name}: must be a string or an array of strings")
    if required and not items:
        raise InvalidRequest(f"{name}: at least one recipient is required")
    out = tuple(_address(v, f"{name}[{i}]") for i, v in enumerate(items))
    if len({a.lower() for a in out}) != len(out):
        raise InvalidRequest(f"{name}: duplicate address")
    return out


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRequest("headers: must be an object of name → string value")
    out = []
    for name, val in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidRequest(f"headers.{name}: not a valid header name")
        if name.lower() in RESERVED:
            raise InvalidRequest(f"headers.{name}: reserved header (use its own field, or the relay adds it)")
        if not isinstance(val, str):
            raise InvalidRequest(f"headers.{name}: value must be a string")
        _no_newlines(val, f"headers.{name}")
        out.append((name, val))
    return tuple(out)


def _no_newlines(value: str, name: str) -> None:
    # Header injection: a CR or LF would let a value start new header lines (RFC 5322 §2.2).
    if "\r" in value or "\n" in value or "\x00" in value:
        raise InvalidRequest(f"{name}: must not contain line breaks or NUL")
