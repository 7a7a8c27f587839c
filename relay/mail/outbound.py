"""What the relay adds to a member's message on its way out (DESIGN §5), before DKIM signing.

- ``X-Atmos-Member-Did`` names the sending DID, for people reading the mail. It attributes nothing:
  anyone can write that header into a forged report, so complaints are tied to a member only through
  the HMAC-tagged VERP envelope sender (relay.inbound.handler).
- ``Feedback-ID`` in Gmail's format ``campaign:customer:type:sender`` (stable per member and category).
- ``Message-ID`` and ``Date`` when the member left them out (RFC 5322 §3.6: Date is required,
  Message-ID should be present).
- Bulk mail only: ``List-Unsubscribe`` with a signed one-click URL and ``List-Unsubscribe-Post:
  List-Unsubscribe=One-Click`` (RFC 8058 §3.1), as Gmail and Yahoo require of bulk senders.

Members cannot forge what the relay vouches for: any copies of these headers (and the
``X-Atmos-Category`` instruction) in the submitted message are removed first.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from email.utils import formatdate

# Removed from every member message: the relay's own attribution and instructions.
_ALWAYS_REMOVED = frozenset({b"x-atmos-member-did", b"feedback-id", b"x-atmos-category"})
# Removed from bulk mail, where the relay supplies its own one-click pair.
_BULK_REMOVED = frozenset({b"list-unsubscribe", b"list-unsubscribe-post"})


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded continuation lines, CRLF-terminated) and the rest."""
    end = data.find(b"\r\n\r\n")
    head, body = (data[: end + 2], data[end + 2 :]) if end >= 0 else (data, b"")
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"  # RFC 5322 §2.2.3 folding
        else:
            fields.append(line + b"\r\n")
    return fields, body


def field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def feedback_id(did: str, category: str, member_domain: str) -> str:
    # The DID itself contains ':' (Gmail's separator), so the customer part is a stable hash of it.
    customer = hashlib.sha256(did.encode()).hexdigest()[:16]
    return f"{category or 'bulk'}:{customer}:{member_domain}:atmos"


def rewrite(
    data: bytes,
    *,
    did: str,
    category: str,
    transactional: bool,
    member_domain: str,
    unsubscribe_url: str | None,
    now: float | None = None,
) -> bytes:
    fields, body = split_message(data)
    removed = _ALWAYS_REMOVED | (_BULK_REMOVED if not transactional else frozenset())
    kept = [f for f in fields if field_name(f) not in removed]
    names = {field_name(f) for f in kept}
    added = [f"X-Atmos-Member-Did: {did}", f"Feedback-ID: {feedback_id(did, category, member_domain)}"]
    if b"message-id" not in names:
        added.append(f"Message-ID: <{uuid.uuid4().hex}@{member_domain}>")
    if b"date" not in names:
        added.append(f"Date: {formatdate(time.time() if now is None else now, usegmt=True)}")
    if not transactional and unsubscribe_url:
        added.append(f"List-Unsubscribe: <{unsubscribe_url}>")
        added.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    head = b"".join(kept) + "".join(f"{line}\r\n" for line in added).encode("utf-8")
    return head + (body if body.startswith(b"\r\n") else b"\r\n" + body)
