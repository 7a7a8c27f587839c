"""Turn a validated /v1/send request into RFC 5322 bytes with the stdlib email package.

``html`` makes multipart/alternative (RFC 2046 §5.1.4: plain first, richest last).
Lines are CRLF-terminated and long lines are folded/encoded by the SMTP policy,
so the result can go on the wire as-is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import formatdate, make_msgid

from relay.address import split_address
from relay.errors import InvalidRequest

# Headers a member may not set through `headers`: they are composed from the
# request itself or added by the relay (DKIM, VERP, attribution).
RESERVED = frozenset({
    "from", "to", "cc", "bcc", "subject", "reply-to", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "dkim-signature", "x-atmos-member-did",
    "feedback-id", "list-unsubscribe", "list-unsubscribe-post", "return-path", "received",
    "sender", "x-atmos-category",
})


@dataclass(frozen=True, slots=True)
class SendRequest:
    sender: str
    to: tuple[str, ...]
    subject: str
    text: str | None
    html: str | None
    reply_to: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    category: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def compose(req: SendRequest, *, now: float | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = req.sender
    msg["To"] = ", ".join(req.to)
    msg["Subject"] = req.subject
    msg["Date"] = formatdate(time.time() if now is None else now, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=split_address(req.sender)[1])
    if req.reply_to:
        msg["Reply-To"] = ", ".join(req.reply_to)
    for name, value in req.headers:
        msg[name] = value
    if req.text is not None:
        msg.set_content(req.text)
        if req.html is not None:
            msg.add_alternative(req.html, subtype="html")
    else:
        assert req.html is not None
        msg.set_content(req.html, subtype="html")
    utf8 = any(not part.isascii() for part in (req.sender, *req.to, *req.reply_to))
    try:
        return msg.as_bytes(policy=SMTPUTF8 if utf8 else SMTP)
    except (ValueError, TypeError) as exc:  # e.g. a header the email package refuses to fold
        raise InvalidRequest(f"message cannot be composed: {exc}") from None

