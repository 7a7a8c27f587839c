"""Delivery status notifications: build ours (RFC 3464), read anyone's.

``build_dsn`` makes the bounce (or delay warning) the relay sends to a
member's envelope sender: a ``multipart/report; report-type=delivery-status``
(RFC 6522 §3) with three parts:

1. ``text/plain``: what failed, the remote's answer verbatim, what to do;
2. ``message/delivery-status`` (RFC 3464 §2): the machine-readable report;
3. ``text/rfc822-headers`` (RFC 6522 §4): the original message's header
   section only, never its body. DESIGN §5 says "message/rfc822-headers",
   which is not a registered media type; text/rfc822-headers is the one
   RFC 6522 defines and the one Postfix and others send.

Sending it is the caller's business, and so is never bouncing a bounce: a DSN
goes out with the null reverse-path ``MAIL FROM:<>`` (RFC 5321 §4.5.5),
and a message that arrived with ``<>`` gets no DSN at all
(``build_dsn`` refuses an empty original sender as a last guard).

The output is 7bit-safe wire format: CRLF line endings, no line over 998
octets (RFC 5322 §2.1.1), ASCII only. Non-ASCII in the report fields is
written with RFC 6533 §3's ``\\x{HEX}`` escapes (EmbeddedUnicodeChar); a
non-ASCII address becomes a ``utf-8`` address type (RFC 6533 §3); the text
parts go quoted-printable (RFC 2045 §6.7) when they need to. Everything is
derived from the inputs (Message-ID and MIME boundary are hashes of them), so
the same inputs give the same bytes.

``parse_dsn`` reads a DSN back: ours in tests, anyone's (Postfix, Exim, Gmail,
Exchange...) for inbound bounce processing. It is tolerant of the usual
variations (folding, missing address types, comments after the status,
``message/global-delivery-status``) and raises only ``DsnParseError``.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import quopri
import re
import textwrap
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal

from relay.mail.headers import header_size
from relay.mail.parsing import parse_untrusted

Action = Literal["failed", "delayed"]

_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z", re.ASCII)
_STATUS_IN_TEXT = re.compile(r"(?<![0-9.])([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.])", re.ASCII)
_SMTP_REPLY = re.compile(r"[2-5][0-9][0-9](?:[ -]|\Z)", re.ASCII)
_TOKEN = re.compile(r"[!-~]+", re.ASCII)  # printable ASCII, no space: hosts, domains, addresses
_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FOLD = re.compile(r"\r?\n[ \t]+")
_SOFT_LIMIT = 78  # RFC 5322 §2.1.1 SHOULD
_HARD_LIMIT = 998  # RFC 5322 §2.1.1 MUST


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient to report on (RFC 3464 §2.3).

    ``status`` is the RFC 3463 code (``"5.1.1"``). ``diagnostic`` is the
    remote's reply verbatim (``"550 5.1.1 <x@y>: user unknown"``), reported as
    ``Diagnostic-Code: smtp; ...``; anything that does not start with a reply
    code (a DNS failure, say) is reported with the type ``X-Atmos``.
    ``will_retry_until`` only makes sense with ``action="delayed"``.
    """

    recipient: str
    status: str
    action: Action
    remote_mta: str | None = None
    diagnostic: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None


@dataclass(frozen=True, slots=True)
class ParsedRecipient:
    """One per-recipient block of a DSN; values unfolded, the ``type;`` prefix removed."""

    final_recipient: str
    action: str | None  # lowercased: failed, delayed, delivered, relayed, expanded
    status: str | None  # the bare RFC 3463 code when one is there
    original_recipient: str | None = None
    remote_mta: str | None = None
    diagnostic_type: str | None = None  # "smtp" mostly
    diagnostic: str | None = None  # the text after "smtp;", e.g. "550 5.1.1 ... user unknown"
    last_attempt_date: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedDsn:
    reporting_mta: str | None
    arrival_date: str | None
    recipients: tuple[ParsedRecipient, ...]


class DsnParseError(ValueError):
    """The bytes are not a delivery status notification we can read."""


# --------------------------------------------------------------------------- building


def build_dsn(
    *,
    reporting_mta: str,
    original_envelope_from: str,
    original_headers: bytes,
    failed: list[FailedRecipient],
    arrival: float,
    now: float,
    message_id_domain: str,
    from_address: str,
) -> bytes:
    """Build an RFC 3464 DSN to ``original_envelope_from`` about ``failed``.

    ``original_headers`` is the original header section; if a whole message is
    passed, everything from the first empty line on is dropped, so the body
    never leaves. ``from_address`` is the relay's mailer-daemon address (a
    bare ``addr-spec``, or a full ``Name <addr>``). Send the result with
    ``MAIL FROM:<>`` (RFC 5321 §4.5.5).
    """
    sender = original_envelope_from.strip().removeprefix("<").removesuffix(">").strip()
    if not sender:
        raise ValueError("the original envelope sender is null: never bounce a bounce (RFC 5321 §4.5.5)")
    if not failed:
        raise ValueError("a DSN needs at least one recipient to report on")
    for name, value in (("reporting_mta", reporting_mta), ("message_id_domain", message_id_domain)):
        if _TOKEN.fullmatch(value) is None:
            raise ValueError(f"{name} must be an ASCII host name, got {value!r}")
    if not from_address.isascii() or _LINE_BREAK.search(from_address) or "@" not in from_address:
        raise ValueError(f"from_address must be an ASCII address, got {from_address!r}")
    for rcpt in failed:
        if _STATUS.match(rcpt.status) is None:
            raise ValueError(f"not an RFC 3463 status code: {rcpt.status!r}")
        if rcpt.action not in ("failed", "delayed"):
            raise ValueError(f"action must be 'failed' or 'delayed', got {rcpt.action!r}")

    headers = _header_section(original_headers)
    any_failed = any(r.action == "failed" for r in failed)
    digest = _digest(reporting_mta, sender, headers, failed, arrival, now)

    notice = _text_part(_human_text(reporting_mta, failed, arrival, any_failed))
    report = _report_part(reporting_mta, failed, arrival)
    returned = _headers_part(headers)
    parts = [notice, report, returned]
    boundary = _boundary(digest, parts)

    from_field = from_address.strip()
    if "<" not in from_field:
        from_field = f"Mail Delivery System <{from_field}>"
    # RFC 5322 §3.4 needs an ASCII addr-spec here; an SMTPUTF8 sender cannot be
    # written in a 7bit header, so the DSN goes to it unnamed (the envelope routes it).
    to_field = f"<{sender}>" if _TOKEN.fullmatch(sender) else "undisclosed-recipients:;"
    lines: list[str] = []
    lines += _field("From", from_field)
    lines += _field("To", to_field)
    lines += _field("Subject", "Undelivered Mail Returned to Sender" if any_failed else "Delayed Mail")
    lines += _field("Date", _date(now))
    lines += _field("Message-ID", f"<{digest[:32]}.dsn@{message_id_domain}>")
    lines += _field("Auto-Submitted", "auto-replied")  # RFC 3834 §5
    lines += _field("MIME-Version", "1.0")
    lines += _field("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"')
    lines += ["", "This is a MIME-encapsulated message.", ""]
    out = "\r\n".join(lines) + "\r\n"
    for part in parts:
        out += f"--{boundary}\r\n{part}\r\n"
    out += f"--{boundary}--\r\n"
    return out.encode("ascii")


def _header_section(original: bytes) -> bytes:
    """The header section alone (RFC 5322 §2.1), CRLF line endings, ending in CRLF. Every bare CR or LF
    becomes a line end first: the returned part (RFC 6522) must be CRLF text, whatever was stored."""
    text = _LINE_BREAK.sub("\r\n", original.decode("latin-1")).encode("latin-1")
    head = text[: header_size(text)]
    return head if not head or head.endswith(b"\r\n") else head + b"\r\n"


def _digest(
    reporting_mta: str,
    sender: str,
    headers: bytes,
    failed: Sequence[FailedRecipient],
    arrival: float,
    now: float,
) -> str:
    h = hashlib.sha256()
    h.update(repr((reporting_mta, sender, arrival, now, [astuple(r) for r in failed])).encode())
    h.update(headers)
    return h.hexdigest()


def _boundary(digest: str, parts: Sequence[str]) -> str:
    # "=_" cannot occur in quoted-printable text (RFC 2045 §6.7), and the
    # other parts are checked: a boundary must not appear in the content
    # (RFC 2046 §5.1.1).
    for n in range(100):
        candidate = f"=_atmos_dsn_{digest[:24]}_{n}"
        if not any(candidate in part for part in parts):
            return candidate
    raise AssertionError("no free MIME boundary")  # pragma: no cover - 100 hash collisions


def _date(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, UTC))  # RFC 5322 §3.3, "+0000"


def _escape(text: str) -> str:
    """ASCII for a report field: ``\\x{HEX}`` (RFC 6533 §3) for anything outside printable ASCII.

    The backslash itself is escaped too, so ``_unescape`` gives the text back exactly.
    """
    return "".join(ch if " " <= ch <= "~" and ch != "\\" else f"\\x{{{ord(ch):02X}}}" for ch in text)


def _address(addr: str) -> str:
    """``rfc822; addr`` or, for an internationalized address, ``utf-8; <xtext>`` (RFC 6533 §3)."""
    if _TOKEN.fullmatch(addr):
        return f"rfc822; {addr}"
    # utf-8-addr-xtext: QCHAR (%x21-2a / %x2c-3c / %x3e-5b / %x5d-7e) or EmbeddedUnicodeChar.
    out = []
    for ch in addr:
        if "!" <= ch <= "~" and ch not in "+=\\":
            out.append(ch)
        else:
            out.append(f"\\x{{{ord(ch):02X}}}")
    return "utf-8; " + "".join(out)


def _host(host: str) -> str:
    return "dns; " + _escape(host.strip()).replace(" ", "")


def _diagnostic(text: str) -> str:
    one_line = " ".join(_LINE_BREAK.split(text.strip()))
    kind = "smtp" if _SMTP_REPLY.match(one_line) else "X-Atmos"  # RFC 3464 §2.3.6
    return f"{kind}; {_escape(one_line)}"


def _field(name: str, value: str) -> list[str]:
    """One header field, folded (RFC 5322 §2.2.3) at single spaces to keep lines short.

    A fold replaces one space between two non-space characters with CRLF +
    space, so unfolding (dropping the CRLF) gives the value back exactly. A run
    of over 998 octets with no such space is cut by force (pathological input).
    """
    pieces = re.split(r"(?<=\S) (?=\S)", f"{name}: {value}")
    lines: list[str] = []
    current = pieces[0]
    for piece in pieces[1:]:
        if len(current) + 1 + len(piece) > _SOFT_LIMIT:
            lines.append(current)
            current = " " + piece
        else:
            current += " " + piece
    lines.append(current)
    out: list[str] = []
    for line in lines:
        while len(line) > _HARD_LIMIT:
            out.append(line[:_HARD_LIMIT])
            line = " " + line[_HARD_LIMIT:]
        out.append(line)
    return out


def _report_part(reporting_mta: str, failed: Sequence[FailedRecipient], arrival: float) -> str:
    """The message/delivery-status part (RFC 3464 §2.2 per-message, §2.3 per-recipient fields)."""
    lines = ["Content-Description: Delivery report", "Content-Type: message/delivery-status", ""]
    lines += _field("Reporting-MTA", _host(reporting_mta))
    lines += _field("Arrival-Date", _date(arrival))
    for rcpt in failed:
        lines.append("")
        lines += _field("Final-Recipient", _address(rcpt.recipient))
        lines += _field("Action", rcpt.action)
        lines += _field("Status", rcpt.status)
        if rcpt.remote_mta:
            lines += _field("Remote-MTA", _host(rcpt.remote_mta))
        if rcpt.diagnostic and rcpt.diagnostic.strip():
            lines += _field("Diagnostic-Code", _diagnostic(rcpt.diagnostic))
        if rcpt.last_attempt is not None:
            lines += _field("Last-Attempt-Date", _date(rcpt.last_attempt))
        if rcpt.will_retry_until is not None and rcpt.action == "delayed":
            lines += _field("Will-Retry-Until", _date(rcpt.will_retry_until))
    return "\r\n".join(lines) + "\r\n"


def _needs_encoding(data: bytes) -> bool:
    if not data.isascii() or b"\0" in data:
        return True
    return any(len(line) > _HARD_LIMIT or b"\r" in line for line in data.split(b"\r\n"))


def _qp(data: bytes) -> str:
    """Quoted-printable (RFC 2045 §6.7) with CRLF line breaks; ``data`` has CRLF breaks."""
    encoded = quopri.encodestring(data.replace(b"\r\n", b"\n"))
    return encoded.decode("ascii").replace("\n", "\r\n")


def _text_part(text: str) -> str:
    data = "".join(line + "\r\n" for line in _LINE_BREAK.split(text.rstrip("\r\n"))).encode("utf-8")
    head = ["Content-Description: Notification"]
    if _needs_encoding(data):
        head += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"]
        body = _qp(data)
    else:
        head += ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
        body = data.decode("ascii")
    return "\r\n".join(head) + "\r\n\r\n" + body


def _headers_part(headers: bytes) -> str:
    head = ["Content-Description: Undelivered Message Headers", "Content-Type: text/rfc822-headers"]
    if _needs_encoding(headers):
        # RFC 6522 §4: headers that are not 7bit MAY be sent quoted-printable.
        head.append("Content-Transfer-Encoding: quoted-printable")
        body = _qp(headers)
    else:
        head.append("Content-Transfer-Encoding: 7bit")
        body = headers.decode("ascii")
    return "\r\n".join(head) + "\r\n\r\n" + body


_HINTS: tuple[tuple[str, str], ...] = (
    ("1", "The address may be mistyped or may no longer exist. Check it before sending again."),
    ("2.2", "The recipient's mailbox is full. Try again later, or reach them another way."),
    ("2", "The recipient's mailbox is not accepting mail right now."),
    ("3.4", "The message is larger than the receiving system accepts. Send a smaller one."),
    (
        "7",
        "The receiving system refused the message by its policy (spam filtering or sender "
        "authentication, for example). Check your domain's SPF, DKIM and DMARC records and "
        "the message content; the answer above may say more.",
    ),
    (
        "4",
        "The receiving mail system could not be found or reached. Check the domain part of "
        "the address; if it is right, try again later.",
    ),
)


def _hint(status: str) -> str:
    _, subject, detail = status.split(".")
    for key, hint in _HINTS:
        if key in (subject, f"{subject}.{detail}"):
            return hint
    return "The answer above gives the reason. If it is unclear, ask the recipient's mail administrator."


def _human_text(reporting_mta: str, failed: Sequence[FailedRecipient], arrival: float, any_failed: bool) -> str:
    wrap = textwrap.TextWrapper(width=72, break_long_words=False, break_on_hyphens=False)
    paras = [f"This is the mail delivery system at {reporting_mta}."]
    if any_failed:
        paras.append(
            "Your message could not be delivered to one or more recipients. Details are below; "
            "the headers of your message are attached."
        )
    else:
        paras.append(
            "Your message has not been delivered yet to the recipients below. This is only a warning: "
            "the relay keeps trying, and you do not need to send the message again."
        )
    paras.append(f"The message arrived at {_date(arrival)}.")
    lines: list[str] = []
    for para in paras:
        lines += [*wrap.wrap(para), ""]
    for rcpt in failed:
        what = "delivery failed" if rcpt.action == "failed" else "delivery delayed, still trying"
        if rcpt.action == "failed" and rcpt.status.startswith("4."):
            what = "delivery failed after repeated temporary errors"
        lines.append(f"<{rcpt.recipient}>: {what} (status {rcpt.status})")
        if rcpt.diagnostic and rcpt.diagnostic.strip():
            where = f"The server {rcpt.remote_mta}" if rcpt.remote_mta else "The delivery system"
            lines.append(f"    {where} answered:")
            lines += [f"    {line}" for line in _LINE_BREAK.split(rcpt.diagnostic.strip())]
        elif rcpt.remote_mta:
            lines.append(f"    Remote server: {rcpt.remote_mta}")
        if rcpt.will_retry_until is not None and rcpt.action == "delayed":
            lines.append(f"    The relay will keep trying until {_date(rcpt.will_retry_until)}.")
        if rcpt.action == "failed":
            lines += [f"    {line}" for line in wrap.wrap(_hint(rcpt.status))]
        lines.append("")
    return "\r\n".join(lines)


# --------------------------------------------------------------------------- parsing

# The stdlib parser splits a message/delivery-status part into header blocks on sight, before any
# Content-Transfer-Encoding is undone (and parses message/global-delivery-status as an embedded
# message). Renamed to a leaf type before parsing, the part stays whole: the stdlib decodes it
# (7bit, 8bit, base64, quoted-printable) and the blocks are split here. The rename is one global
# byte substitution, so a boundary that happened to contain the name changes consistently too.
_REPORT_TYPE = re.compile(rb"message/((?:global-)?delivery-status)", re.IGNORECASE)
_RENAMED = frozenset({"text/x-atmos-delivery-status", "text/x-atmos-global-delivery-status"})


def parse_dsn(data: bytes) -> ParsedDsn:
    """Read the machine-readable part of a DSN (RFC 3464 §2), ours or anyone's.

    Finds the first ``message/delivery-status`` (or RFC 6533
    ``message/global-delivery-status``) part anywhere in the message; the
    first field block gives the per-message fields, every block with a
    Final-Recipient (or, failing that, an Original-Recipient) is a recipient.
    Folded values are unfolded with each fold (CRLF + whitespace) read as one
    space, as Postfix writes them. ``\\x{HEX}`` escapes (RFC 6533 §3) are
    decoded in addresses and diagnostics; raw 8-bit text is read as UTF-8.
    The report part may be 7bit, 8bit, base64 or quoted-printable.

    Raises ``DsnParseError`` (a ``ValueError``), and nothing else, when there
    is no such part or the bytes cannot be parsed at all.
    """
    return parse_untrusted(_parse, data, DsnParseError, "a DSN")


def _parse(data: bytes) -> ParsedDsn:
    msg = email.message_from_bytes(_REPORT_TYPE.sub(rb"text/x-atmos-\1", data), policy=email.policy.compat32)
    part = next((p for p in msg.walk() if p.get_content_type() in _RENAMED), None)
    if part is None:
        raise DsnParseError("no message/delivery-status part")
    payload = part.get_payload(decode=True)  # raw bytes, transfer encoding undone
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    blocks = [_block(fields) for fields in _split_blocks(text)]
    first = blocks[0] if blocks else {}
    reporting_mta = _first(blocks, "reporting-mta")
    recipients: list[ParsedRecipient] = []
    for block in blocks:
        final = block.get("final-recipient") or block.get("original-recipient")
        if not final:
            continue
        original = block.get("original-recipient")
        diag_type, diagnostic = _typed(block["diagnostic-code"]) if "diagnostic-code" in block else (None, None)
        status = block.get("status")
        if status is not None:
            m = _STATUS_IN_TEXT.search(status)
            status = m.group(1) if m else (status or None)
        action = block.get("action")
        recipients.append(
            ParsedRecipient(
                final_recipient=_address_value(final),
                action=action.split()[0].lower() if action and action.split() else None,
                status=status,
                original_recipient=_address_value(original) if original else None,
                remote_mta=_typed(block["remote-mta"])[1] if "remote-mta" in block else None,
                diagnostic_type=diag_type.lower() if diag_type else None,
                diagnostic=_unescape(diagnostic) if diagnostic else None,
                last_attempt_date=block.get("last-attempt-date") or None,
            )
        )
    return ParsedDsn(
        reporting_mta=_typed(reporting_mta)[1] if reporting_mta else None,
        arrival_date=first.get("arrival-date") or _first(blocks, "arrival-date"),
        recipients=tuple(recipients),
    )


def _block(fields: Sequence[tuple[str, str]]) -> dict[str, str]:
    """{lowercased name: unfolded value}; the first field of a name wins."""
    block: dict[str, str] = {}
    for name, value in fields:
        block.setdefault(name.strip().lower(), _FOLD.sub(" ", value).strip())
    return block


def _split_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Blocks of ``Name: value`` fields separated by empty lines; continuation lines folded back in."""
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in _LINE_BREAK.split(text):
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
        elif line[0] in " \t":
            if current:
                name, value = current[-1]
                current[-1] = (name, value + "\n" + line)
        elif ":" in line:
            name, _, value = line.partition(":")
            current.append((name, value))
    if current:
        blocks.append(current)
    return blocks


def _first(blocks: Sequence[dict[str, str]], name: str) -> str | None:
    return next((b[name] for b in blocks if b.get(name)), None)


def _typed(value: str) -> tuple[str | None, str]:
    """Split ``type; value`` (RFC 3464 §2.2.2, §2.3.2, §2.3.6); a value without ``;`` has no type."""
    kind, sep, rest = value.partition(";")
    if not sep:
        return None, value.strip()
    return kind.strip() or None, rest.strip()


def _address_value(value: str) -> str:
    kind, addr = _typed(value)
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if kind is not None and kind.lower() == "utf-8":
        addr = _unescape(addr)
    return addr


def _unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = int(m.group(1), 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:  # not a Unicode scalar value: left as written
            return m.group(0)
        return chr(code)

    return _ESCAPE.sub(one, text)
