"""Turn a validated /v1/send request into RFC 5322 / MIME bytes (RFC 2045-2047, 2183, 2231, 2387).

Structure, outermost first (each level only when needed)::

    multipart/mixed          the body, then the attachments (Content-Disposition: attachment)
      multipart/related      the body, then inline parts referenced as cid: (RFC 2387)
        multipart/alternative  text/plain, then text/html (RFC 2046 §5.1.4: plain first, richest last)

Lines are CRLF-terminated, headers folded, non-ASCII text quoted-printable, text attachments as text
(7bit or quoted-printable, base64 only when shorter), other attachments base64 in 76-character lines
(RFC 2045 §6.8), so the result can go on the wire as-is. Display names go out as
``"Name" <addr>``, non-ASCII ones as RFC 2047 encoded words. ``bcc`` never becomes a header: it is
only part of the envelope (RFC 5322 §3.6.3). Tests parse the output back with the stdlib email package.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass, field
from email.header import Header
from email.utils import encode_rfc2231, formataddr, formatdate, make_msgid

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
class Mailbox:
    """RFC 5322 §3.4 name-addr or addr-spec: an optional display name and the address."""

    address: str
    name: str = ""

    def header(self) -> str:
        if not self.name:
            return self.address
        # formataddr quotes specials (RFC 5322 §3.2.3) and encodes non-ASCII names (RFC 2047 §5(3)).
        return formataddr((self.name, self.address), charset="utf-8")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes = field(repr=False)
    content_type: str = "application/octet-stream"
    content_id: str = ""  # set: an inline part of multipart/related, referenced as cid:<content_id>


@dataclass(frozen=True, slots=True)
class SendRequest:
    sender: Mailbox
    to: tuple[Mailbox, ...]
    subject: str
    text: str | None
    html: str | None
    reply_to: tuple[Mailbox, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    category: str = ""
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    tags: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def recipients(self) -> tuple[str, ...]:
        """The envelope: to, cc and bcc, each address once (RFC 5321 RCPT TO)."""
        seen: dict[str, str] = {}
        for box in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(box.address.lower(), box.address)
        return tuple(seen.values())


def compose(req: SendRequest, *, now: float | None = None) -> bytes:
    """Render the message. Hand-assembled rather than through ``email.message.EmailMessage``:
    the header registry made composing ~25x slower than everything else on the /v1/send path
    (scripts/bench profile), and the structure here is fixed and small."""
    headers = [
        ("From", req.sender.header()),
        ("To", ", ".join(m.header() for m in req.to)),
    ]
    if req.cc:
        headers.append(("Cc", ", ".join(m.header() for m in req.cc)))
    headers += [
        ("Subject", req.subject),
        ("Date", formatdate(time.time() if now is None else now, usegmt=True)),
        ("Message-ID", make_msgid(domain=split_address(req.sender.address)[1])),
    ]
    if req.reply_to:
        headers.append(("Reply-To", ", ".join(m.header() for m in req.reply_to)))
    headers.extend(req.headers)
    headers.append(("MIME-Version", "1.0"))
    head = "".join(_header(name, value) for name, value in headers)
    inline = [a for a in req.attachments if a.content_id]
    attached = [a for a in req.attachments if not a.content_id]
    entity = _body(req)
    if inline:
        root_type = "multipart/alternative" if req.text is not None and req.html is not None else (
            "text/html" if req.html is not None else "text/plain")
        entity = _multipart(f'related; type="{root_type}"', [entity, *(_attachment(a) for a in inline)])
    if attached:
        entity = _multipart("mixed", [entity, *(_attachment(a) for a in attached)])
    return (head + entity).encode("utf-8")


def _body(req: SendRequest) -> str:
    if req.text is not None and req.html is not None:
        return _multipart("alternative", [_part("plain", req.text), _part("html", req.html)])
    if req.text is not None:
        return _part("plain", req.text)
    assert req.html is not None
    return _part("html", req.html)


def _multipart(subtype: str, entities: list[str]) -> str:
    """A multipart entity (headers + body) of already rendered entities (RFC 2046 §5.1.1)."""
    boundary = "=_atmos_" + secrets.token_hex(12)  # random: cannot occur in the parts
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n']
    for entity in entities:
        out.append(f"--{boundary}\r\n{entity}\r\n")
    out.append(f"--{boundary}--\r\n")
    return "".join(out)


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


def _param(name: str, value: str) -> str:
    """A MIME parameter: quoted-string when ASCII (RFC 2045 §5.1), else RFC 2231 §4 ``name*=utf-8''…``."""
    if value.isascii():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{name}="{escaped}"'
    return f"{name}*={encode_rfc2231(value, 'utf-8')}"


def _attachment(att: Attachment) -> str:
    disposition = "inline" if att.content_id else "attachment"
    cte, body = _attachment_body(att)
    ctype = att.content_type
    if _is_text(ctype) and not att.content.isascii() and _utf8(att.content):
        # The API takes no media type parameters, and text without one is US-ASCII (RFC 2046 §4.1.2).
        ctype += "; charset=utf-8"
    lines = [f"Content-Type: {ctype}; {_param('name', att.filename)}",
             f"Content-Disposition: {disposition}; {_param('filename', att.filename)}",
             f"Content-Transfer-Encoding: {cte}"]
    if att.content_id:
        lines.append(f"Content-ID: <{att.content_id}>")  # RFC 2392: cid:<content_id> in the HTML
    return "\r\n".join(lines) + "\r\n\r\n" + body


def _attachment_body(att: Attachment) -> tuple[str, str]:
    """The Content-Transfer-Encoding and the encoded body (CRLF line breaks) of an attachment.

    Text (``text/*``) goes as text: its line breaks become CRLF, its canonical form (RFC 2046 §4.1.1);
    then 7bit when it already is (RFC 2045 §2.7: no NUL, no bare CR, lines of at most 998 octets), else
    quoted-printable (RFC 2045 §6.7: each line on its own, so a bare CR is encoded, never taken for a
    line break), unless base64 is shorter (mostly non-ASCII text, which quoted-printable triples).
    Base64 text that need not be is a spam sign to receivers (Rspamd's MIME_BASE64_TEXT).
    Everything else is base64 (RFC 2045 §6.8)."""
    b64 = base64.encodebytes(att.content).decode("ascii").replace("\n", "\r\n")
    if not _is_text(att.content_type):
        return "base64", b64
    lines = att.content.replace(b"\r\n", b"\n").split(b"\n")
    if att.content.isascii() and all(b"\r" not in line and b"\0" not in line and len(line) <= 998 for line in lines):
        return "7bit", "\r\n".join(line.decode("ascii") for line in lines)
    qp = "\r\n".join(binascii.b2a_qp(line).decode("ascii").replace("\n", "\r\n") for line in lines)
    return ("quoted-printable", qp) if len(qp) <= len(b64) else ("base64", b64)


def _is_text(content_type: str) -> bool:
    return content_type.lower().startswith("text/")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
