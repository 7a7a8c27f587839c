"""Validate a /v1/send JSON body; every error names the bad field (DESIGN §3).

Addresses (``from``, ``to``, ``cc``, ``bcc``, ``replyTo``) are an addr-spec or an RFC 5322 §3.4
name-addr: ``a@example.com``, ``Ann <a@example.com>``, ``"Doe, Ann" <a@example.com>``; ``to``, ``cc``,
``bcc`` and ``replyTo`` take one string or an array. The limits below are Postmark's order of magnitude.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from typing import Any

from relay.address import split_address
from relay.category import parse_category
from relay.errors import InvalidRequest, PayloadTooLarge
from web.compose import RESERVED, Attachment, Mailbox, SendRequest

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext: printable ASCII except ':'
KNOWN_FIELDS = frozenset({"from", "to", "cc", "bcc", "subject", "text", "html", "replyTo", "headers", "category",
                          "attachments", "tags", "metadata"})
ATTACHMENT_FIELDS = frozenset({"filename", "content", "contentType", "contentId"})
MAX_ATTACHMENTS = 50
MAX_TAGS, MAX_METADATA = 10, 10
_NAME_ADDR = re.compile(r"(?P<name>.*?)\s*<(?P<addr>[^<>]*)>", re.DOTALL)
_TAG = re.compile(r"[A-Za-z0-9._:/@+-]{1,64}")
_META_KEY = re.compile(r"[A-Za-z0-9._-]{1,40}")
_MAX_META_VALUE = 256
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}")


def parse_send_request(body: Any, *, max_recipients: int, max_attachment_bytes: int = 10 << 20) -> SendRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(KNOWN_FIELDS))})")
    sender = mailbox(_required_str(body, "from"), "from")
    to = _address_list(body.get("to"), "to", required=True)
    cc = _address_list(body.get("cc"), "cc", required=False)
    bcc = _address_list(body.get("bcc"), "bcc", required=False)
    envelope = {m.address.lower() for m in (*to, *cc, *bcc)}
    if len(envelope) > max_recipients:
        raise InvalidRequest(f"to: at most {max_recipients} recipients per message (to, cc and bcc together), "
                             f"got {len(envelope)}")
    subject = _optional_str(body, "subject") or ""
    _no_newlines(subject, "subject")
    text = _optional_str(body, "text")
    html = _optional_str(body, "html")
    if text is None and html is None:
        raise InvalidRequest("text: required unless html is given")
    reply_to = _address_list(body.get("replyTo"), "replyTo", required=False)
    category = parse_category(body.get("category"))
    return SendRequest(sender, to, subject, text, html, reply_to, _headers(body.get("headers")), category,
                       cc=cc, bcc=bcc, attachments=_attachments(body.get("attachments"), max_attachment_bytes),
                       tags=_tags(body.get("tags")), metadata=_metadata(body.get("metadata")))


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


def mailbox(value: str, name: str) -> Mailbox:
    """``addr`` or ``Display Name <addr>`` (RFC 5322 §3.4); the name may be a quoted-string."""
    value = value.strip()
    _no_newlines(value, name)
    display = ""
    match = _NAME_ADDR.fullmatch(value)
    if match is not None:
        display, value = _display_name(match.group("name").strip(), name), match.group("addr").strip()
    elif "<" in value or ">" in value:
        raise InvalidRequest(f"{name}: expected local@domain or Name <local@domain>")
    try:
        split_address(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
    return Mailbox(value, display)


def _display_name(raw: str, name: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = re.sub(r"\\(.)", r"\1", raw[1:-1])  # RFC 5322 §3.2.4 quoted-pair
    elif '"' in raw or "<" in raw or ">" in raw:
        raise InvalidRequest(f"{name}: a display name with quotes or <> must be one quoted string")
    if len(raw) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise InvalidRequest(f"{name}: display name too long or with control characters")
    return " ".join(raw.split())


def _address_list(value: Any, name: str, *, required: bool) -> tuple[Mailbox, ...]:
    if value is None:
        if required:
            raise InvalidRequest(f"{name}: required")
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InvalidRequest(f"{name}: must be a string or an array of strings")
    if required and not items:
        raise InvalidRequest(f"{name}: at least one recipient is required")
    out = tuple(mailbox(v, f"{name}[{i}]") for i, v in enumerate(items))
    if len({m.address.lower() for m in out}) != len(out):
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
            raise InvalidRequest(f"headers.{name}: reserved header (set from/to/cc/bcc/replyTo/subject/category "
                                 "as fields; the relay adds the rest)")
        if not isinstance(val, str):
            raise InvalidRequest(f"headers.{name}: value must be a string")
        _no_newlines(val, f"headers.{name}")
        out.append((name, val))
    return tuple(out)


def _attachments(value: Any, max_bytes: int) -> tuple[Attachment, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest("attachments: must be an array of {filename, content, contentType, contentId}")
    if len(value) > MAX_ATTACHMENTS:
        raise InvalidRequest(f"attachments: at most {MAX_ATTACHMENTS}, got {len(value)}")
    out: list[Attachment] = []
    total = 0
    for i, item in enumerate(value):
        where = f"attachments[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where}: must be an object with filename and content")
        unknown = sorted(set(item) - ATTACHMENT_FIELDS)
        if unknown:
            allowed = ", ".join(sorted(ATTACHMENT_FIELDS))
            raise InvalidRequest(f"{where}.{unknown[0]}: unknown field (allowed: {allowed})")
        filename = item.get("filename")
        if not isinstance(filename, str) or not filename.strip() or len(filename) > 255:
            raise InvalidRequest(f"{where}.filename: required, a string of at most 255 characters")
        _no_newlines(filename, f"{where}.filename")
        content = item.get("content")
        if not isinstance(content, str):
            raise InvalidRequest(f"{where}.content: required, the file's bytes in base64")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}.content: not valid base64") from None
        total += len(data)
        if total > max_bytes:
            raise PayloadTooLarge(f"attachments: more than {max_bytes} bytes decoded in total")
        ctype = item.get("contentType")
        if ctype is None:
            ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if not isinstance(ctype, str) or not _CONTENT_TYPE.fullmatch(ctype):
            raise InvalidRequest(f"{where}.contentType: a MIME type such as application/pdf")
        cid = item.get("contentId")
        if cid is not None:
            if not isinstance(cid, str) or not _CONTENT_ID.fullmatch(cid.strip().strip("<>")):
                raise InvalidRequest(f"{where}.contentId: letters, digits and .@_-+ (at most 200), no spaces")
            cid = cid.strip().strip("<>")
        out.append(Attachment(filename.strip(), data, ctype.lower(), cid or ""))
    ids = [a.content_id for a in out if a.content_id]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("attachments: duplicate contentId")
    return tuple(out)


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InvalidRequest("tags: must be an array of strings")
    if len(value) > MAX_TAGS:
        raise InvalidRequest(f"tags: at most {MAX_TAGS}")
    for i, tag in enumerate(value):
        if not _TAG.fullmatch(tag):
            raise InvalidRequest(f"tags[{i}]: 1-64 of letters, digits and ._:/@+-")
    return tuple(dict.fromkeys(value))


def _metadata(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidRequest("metadata: must be an object of string keys to string values")
    if len(value) > MAX_METADATA:
        raise InvalidRequest(f"metadata: at most {MAX_METADATA} keys")
    out = []
    for key, val in value.items():
        if not _META_KEY.fullmatch(key):
            raise InvalidRequest(f"metadata.{key[:40]}: keys are 1-40 of letters, digits and ._-")
        if not isinstance(val, str) or len(val) > _MAX_META_VALUE:
            raise InvalidRequest(f"metadata.{key}: a string of at most {_MAX_META_VALUE} characters")
        out.append((key, val))
    return tuple(out)


def _no_newlines(value: str, name: str) -> None:
    # Header injection: a CR or LF would let a value start new header lines (RFC 5322 §2.2).
    if "\r" in value or "\n" in value or "\x00" in value:
        raise InvalidRequest(f"{name}: must not contain line breaks or NUL")
