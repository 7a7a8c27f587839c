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

from relay.mail.headers import CRLF, field_name, fields, header_size

# Removed from every member message: the relay's own attribution and instructions.
_ALWAYS_REMOVED = frozenset({b"x-atmos-member-did", b"feedback-id", b"x-atmos-category"})
# Removed from bulk mail, where the relay supplies its own one-click pair.
_BULK_REMOVED = frozenset({b"list-unsubscribe", b"list-unsubscribe-post"})


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded continuation lines, CRLF-terminated) and the rest, from the
    empty line on: ``b"".join(fields) + rest`` is ``data`` again when it has an empty line. The cut is
    ``relay.mail.headers``'; this is the shape that rewrites a message field by field."""
    size = header_size(data)
    return [f + CRLF for f in fields(data[:size])], data[size:]


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
