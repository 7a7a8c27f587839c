"""Abuse Reporting Format complaints (RFC 5965) as mailbox providers send them to our FBL address.

An ARF report is a ``multipart/report; report-type=feedback-report`` (RFC 6522) with

1. a human-readable part (ignored here),
2. a ``message/feedback-report`` part: ``Name: value`` fields (RFC 5965 §3.1-3.3) such as
   ``Feedback-Type``, ``User-Agent``, ``Version``, ``Original-Mail-From``, ``Original-Rcpt-To``
   (may repeat), ``Arrival-Date``, ``Source-IP``, ``Reported-Domain``;
3. the reported message as ``message/rfc822`` or only its header section as
   ``text/rfc822-headers`` (both optional in practice; some providers redact).

``parse_arf`` returns the feedback type, the reported recipients, and the enclosed message's
``Return-Path`` (the VERP address attribution relies on), ``Message-ID``, ``To`` and
``X-Atmos-Member-Did`` (shown to the operator only: anyone can write that header, it never attributes).

Pure: no I/O. Raises ``ArfParseError`` (a ValueError) and nothing else.
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, field

from relay.mail.parsing import parse_untrusted, report_type

_FEEDBACK_TYPE = re.compile(rb"message/feedback-report", re.IGNORECASE)
_RENAMED = "text/x-atmos-feedback-report"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FOLD = re.compile(r"\r?\n[ \t]+")
_ANGLE = re.compile(r"<([^<>\s]*)>")


class ArfParseError(ValueError):
    """The bytes are not an ARF feedback report we can read."""


@dataclass(frozen=True, slots=True)
class ArfReport:
    feedback_type: str  # lowercased: abuse, fraud, virus, other, not-spam, auth-failure, ...
    fields: dict[str, list[str]]  # every report field, lowercased name -> values in order
    original_rcpt_to: tuple[str, ...] = ()
    original_mail_from: str | None = None
    member_did: str | None = None  # X-Atmos-Member-Did of the enclosed message
    message_id: str | None = None  # Message-ID of the enclosed message, without <>
    return_path: str | None = None  # Return-Path of the enclosed message, without <>
    enclosed_to: tuple[str, ...] = field(default=())  # To addresses of the enclosed message
    has_enclosed: bool = False

    @property
    def recipient(self) -> str | None:
        """The complainer: the first Original-Rcpt-To, else the enclosed message's single To."""
        if self.original_rcpt_to:
            return self.original_rcpt_to[0]
        if len(self.enclosed_to) == 1:
            return self.enclosed_to[0]
        return None


def is_arf(data: bytes) -> bool:
    """A cheap check on the top-level Content-Type: multipart/report; report-type=feedback-report."""
    return report_type(data) == "feedback-report"


def parse_arf(data: bytes) -> ArfReport:
    return parse_untrusted(_parse, data, ArfParseError, "an ARF report")


def _parse(data: bytes) -> ArfReport:
    # As relay.delivery.dsn does for delivery-status: the stdlib would parse message/feedback-report
    # as an embedded message before undoing any transfer encoding; as a leaf type it stays whole.
    msg = email.message_from_bytes(_FEEDBACK_TYPE.sub(_RENAMED.encode(), data), policy=email.policy.compat32)
    report = next((p for p in msg.walk() if p.get_content_type() == _RENAMED), None)
    if report is None:
        raise ArfParseError("no message/feedback-report part")
    payload = report.get_payload(decode=True)
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    fields = _fields(text)
    feedback_type = (fields.get("feedback-type") or [""])[0].split()
    if not feedback_type:
        raise ArfParseError("the feedback report has no Feedback-Type")
    enclosed = _enclosed(msg)
    rcpts = tuple(a for a in (_bare(v) for v in fields.get("original-rcpt-to", [])) if a)
    mail_from = _bare((fields.get("original-mail-from") or [""])[0]) or None
    if enclosed is None:
        return ArfReport(feedback_type[0].lower(), fields, rcpts, mail_from)
    to = tuple(addr for _, addr in email.utils.getaddresses([str(v) for v in enclosed.get_all("To", [])]) if addr)
    did = str(enclosed.get("X-Atmos-Member-Did", "")).strip() or None
    return ArfReport(
        feedback_type=feedback_type[0].lower(),
        fields=fields,
        original_rcpt_to=rcpts,
        original_mail_from=mail_from,
        member_did=did,
        message_id=_bare(str(enclosed.get("Message-ID", ""))) or None,
        return_path=_bare(str(enclosed.get("Return-Path", ""))) or None,
        enclosed_to=to,
        has_enclosed=True,
    )


def _enclosed(msg: email.message.Message) -> email.message.Message | None:
    """The reported message (or its header section), parsed."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
                return inner[0]
            if isinstance(inner, str):
                return email.message_from_string(inner, policy=email.policy.compat32)
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(payload)
    return None


def _fields(text: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    unfolded = _FOLD.sub(" ", text)
    for line in _LINE_BREAK.split(unfolded):
        if not line.strip() or line[0] in " \t" or ":" not in line:
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


def _bare(value: str) -> str:
    """``<a@b>`` or ``a@b`` (possibly with a comment or a ``type;`` prefix) -> ``a@b``."""
    value = value.strip()
    m = _ANGLE.search(value)
    if m is not None:
        return m.group(1).strip()
    if ";" in value and "@" not in value.partition(";")[0]:
        value = value.partition(";")[2].strip()
    return value.split()[0] if value.split() else ""
