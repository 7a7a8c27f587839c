"""Turn a validated /v1/send request into RFC 5322 / MIME bytes (RFC 2045-2047).

``html`` makes multipart/alternative (RFC 2046 §5.1.4: plain first, richest last).
Lines are CRLF-terminated, headers folded, non-ASCII text quoted-printable, so the
result can go on the wire as-is. Tests parse the output back with the stdlib email package.
"""

from __future__ import annotations

import binascii
import secrets
import time
from dataclasses import dataclass, field
from email.header import Header
from email.utils import formatdate, make_msgid

from relay.address import split_address

# Headers a member may not set through `headers`: they are composed from the
# request itself or added by the relay (DKIM, VERP, attribution).
_ADDRESS_HEADERS = frozenset({"From", "To", "Reply-To", "Cc"})
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
    """Render the message. Hand-assembled rather than through ``email.message.EmailMessage``:
    the header registry made composing ~25x slower than everything else on the /v1/send path
    (scripts/bench profile), and the structure here is fixed and small."""
    headers = [
        ("From", req.sender),
        ("To", ", ".join(req.to)),
        ("Subject", req.subject),
        ("Date", formatdate(time.time() if now is None else now, usegmt=True)),
        ("Message-ID", make_msgid(domain=split_address(req.sender)[1])),
    ]
    if req.reply_to:
        headers.append(("Reply-To", ", ".join(req.reply_to)))
    headers.extend(req.headers)
    headers.append(("MIME-Version", "1.0"))
    out = [_header(name, value) for name, value in headers]
    if req.text is not None and req.html is not None:
        # RFC 2046 §5.1.4: alternatives in increasing order of preference, plain text first.
        boundary = "=_atmos_" + secrets.token_hex(12)
        out.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n')
        for subtype, body in (("plain", req.text), ("html", req.html)):
            out.append(f"--{boundary}\r\n{_part(subtype, body)}\r\n")
        out.append(f"--{boundary}--\r\n")
    elif req.text is not None:
        out.append(_part("plain", req.text))
    else:
        assert req.html is not None
        out.append(_part("html", req.html))
    return "".join(out).encode("utf-8")


def _header(name: str, value: str) -> str:
    """One header field, folded (RFC 5322 §2.2.3); non-ASCII as RFC 2047 encoded words."""
    if value.isascii() and len(name) + len(value) < 76:
        return f"{name}: {value}\r\n"
    charset = "us-ascii" if value.isascii() else "utf-8"
    if name in _ADDRESS_HEADERS and not value.isascii():
        # Addresses are never encoded words (RFC 2047 §5): the message needs SMTPUTF8 (RFC 6532).
        return f"{name}: {value}\r\n"
    return f"{name}: " + Header(value, charset, header_name=name).encode(linesep="\r\n") + "\r\n"


def _part(subtype: str, body: str) -> str:
    """Content headers and body; 7bit when it already is, else quoted-printable UTF-8 (RFC 2045 §6.7)."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and all(len(line) <= 998 for line in text.split("\n")):
        encoded, cte = text, "7bit"
    else:
        encoded, cte = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii"), "quoted-printable"
    return (f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
            + encoded.replace("\n", "\r\n"))
