"""Reading bounces that come back to VERP addresses: RFC 3464 DSNs and the usual non-standard kinds.

``analyze(data, recipient)`` returns a ``Bounce`` (what happened to ``recipient``, classified) or
None when the message is not recognisably a bounce (an auto-reply, a challenge, a human).

1. A DSN (``multipart/report`` with ``message/delivery-status``, RFC 3464) is read with
   ``relay.delivery.dsn.parse_dsn``; the recipient block that names ``recipient`` is used (else
   the first ``failed`` one, else the first).
2. Otherwise, if the message looks like a bounce (null or MAILER-DAEMON/postmaster sender, a
   bounce subject, ``Auto-Submitted`` with a failure subject, or an ``X-Failed-Recipients``
   header), its text before the returned message (qmail's "--- Below this line is a copy",
   Exim's "------ This is a copy of the message", ...) is scanned for an RFC 3463 status code,
   then for an SMTP reply code, then for well-known phrases.

Classes (``BounceClass``): ``hard`` (5.1.x, other permanent failures such as 5.0.0 "user
unknown"), ``soft`` (4.x.x: temporary, e.g. a queue lifetime expired), ``policy`` (5.7.x, or a
permanent failure naming spam, a block list, reputation...), ``mailbox-full`` (5.2.2, 4.2.2, or
"quota"/"mailbox full" in the text).

Pure: no I/O; never raises for any input.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from dataclasses import dataclass
from typing import Literal

from relay.delivery.dsn import DsnParseError, ParsedRecipient, parse_dsn

BounceClass = Literal["hard", "soft", "policy", "mailbox-full"]

_STATUS = re.compile(r"(?<![0-9.])([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![0-9.])", re.ASCII)
_REPLY = re.compile(r"(?<![0-9.\w])([45][0-9][0-9])(?:[ -]|$)(?![0-9.])", re.ASCII | re.MULTILINE)
_QUOTA = re.compile(
    r"quota|mailbox (?:is )?full|mailbox has exceeded|mail ?box size|storage (?:limit|allocation|space)|"
    r"insufficient (?:system )?storage|out of storage|over the storage|too many messages",
    re.IGNORECASE,
)
_POLICY = re.compile(
    r"spam|junk|blocked|block ?list|black ?list|banned|reputation|dnsbl|\brbl\b|spamhaus|barracuda|"
    r"\bpolicy\b|policies|\bspf\b|\bdkim\b|\bdmarc\b|not authori[sz]ed to send|suspicious|"
    r"content rejected|message rejected|virus|malware",
    re.IGNORECASE,
)
_UNKNOWN_USER = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)|does not exist|doesn't exist|"
    r"not exist|invalid (?:recipient|mailbox|address)|recipient (?:address )?rejected|mailbox unavailable|"
    r"mailbox not found|unknown (?:recipient|mailbox|address)|address rejected|account (?:is )?disabled|"
    r"no mailbox here|user not found|unrouteable|unroutable|host (?:or domain name )?not found",
    re.IGNORECASE,
)
_DELAY = re.compile(
    r"delayed|delivery delay|will (?:keep|continue) trying|still trying|has not (?:yet )?been delivered|"
    r"not yet been delivered|warning: message|will retry",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status notification|failure|has failed|failed|problem|report)|"
    r"returned (?:mail|to sender)|failure notice|mail delivery (?:failed|failure|system|subsystem)|"
    r"could not be delivered|non.?delivery|delivery notification|rejected|bounce",
    re.IGNORECASE,
)
_DAEMON_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery (?:system|subsystem)|mail administrator",
                          re.IGNORECASE)
# Where the returned original starts in common non-standard bounces: the scan stops there, so
# codes and phrases quoted in the returned message are never read as the failure.
_RETURNED = re.compile(
    r"^-+ ?(?:below this line is a copy|this is a copy of (?:the|your) message|original message|"
    r"the header of the original message|undelivered message|returned message|message header follows)|"
    r"^original message headers|^-+ ?forwarded message|^received: from",
    re.IGNORECASE | re.MULTILINE,
)
_SCAN_LIMIT = 16_384


@dataclass(frozen=True, slots=True)
class Bounce:
    recipient: str | None  # the failed recipient the report names, when it names one
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str | None  # RFC 3463 code, e.g. "5.1.1"
    diagnostic: str  # the remote's words (Diagnostic-Code, or the line the code was found on)
    klass: BounceClass
    standard: bool  # read from an RFC 3464 message/delivery-status part

    @property
    def failed(self) -> bool:
        return self.action == "failed"


def classify(status: str | None, diagnostic: str = "", *, reply_code: int | None = None) -> BounceClass:
    """The class of a failure from its RFC 3463 status (and the text, for the generic codes)."""
    text = diagnostic or ""
    m = _STATUS.search(status or "")
    if m is None:
        m = _STATUS.search(text)
    if m is not None:
        klass, subject, detail = m.group(1), int(m.group(2)), int(m.group(3))
    elif reply_code is not None:
        klass, subject, detail = str(reply_code)[0], 0, 0
    else:
        r = _REPLY.search(text)
        klass, subject, detail = (r.group(1)[0] if r else "5"), 0, 0
    if subject == 2 and detail == 2:
        return "mailbox-full"
    if klass == "4":
        return "mailbox-full" if _QUOTA.search(text) else "soft"
    if klass == "2":  # a success code in a failure report: trust the words, default hard
        klass = "5"
    if subject == 7:
        return "policy"
    if subject == 1:
        return "hard"
    if _QUOTA.search(text):
        return "mailbox-full"
    if _POLICY.search(text) and not _UNKNOWN_USER.search(text):
        return "policy"
    return "hard"


def analyze(data: bytes, recipient: str | None = None, *, null_sender: bool = False) -> Bounce | None:
    """What ``data`` reports about ``recipient``; None when it is not a bounce (see the module doc)."""
    try:
        return _from_dsn(parse_dsn(data), recipient)
    except DsnParseError:
        pass
    try:
        return _non_standard(data, null_sender)
    except Exception:  # hostile input: not a bounce we can read
        return None


def _from_dsn(dsn: object, recipient: str | None) -> Bounce | None:
    recipients: tuple[ParsedRecipient, ...] = getattr(dsn, "recipients", ())
    if not recipients:
        return None
    chosen = None
    if recipient:
        want = recipient.lower()
        chosen = next((r for r in recipients if want in (r.final_recipient.lower(),
                                                         (r.original_recipient or "").lower())), None)
    if chosen is None:
        chosen = next((r for r in recipients if r.action == "failed"), recipients[0])
    diagnostic = chosen.diagnostic or ""
    status = chosen.status if chosen.status and _STATUS.fullmatch(chosen.status) else None
    if status is None:
        m = _STATUS.search(diagnostic)
        status = m.group(0) if m else None
    action = chosen.action or ("failed" if (status or "5").startswith(("5", "4")) else "delivered")
    if action not in ("failed", "delayed", "delivered", "relayed", "expanded"):
        action = "failed" if (status or "").startswith("5") else "delayed"
    return Bounce(
        recipient=chosen.final_recipient or None,
        action=action,
        status=status,
        diagnostic=diagnostic or (f"status {status}" if status else ""),
        klass=classify(status, diagnostic),
        standard=True,
    )


def _looks_like_bounce(msg: email.message.Message, null_sender: bool) -> bool:
    subject = str(msg.get("Subject", ""))
    sender = str(msg.get("From", ""))
    if msg.get("X-Failed-Recipients"):
        return True
    if _BOUNCE_SUBJECT.search(subject) and (null_sender or _DAEMON_FROM.search(sender)
                                            or msg.get("Auto-Submitted", "no").lower() != "no"):
        return True
    return bool(_DAEMON_FROM.search(sender) and _BOUNCE_SUBJECT.search(subject))


def _text_of(msg: email.message.Message) -> str:
    """The report's own words: the first text parts, before any returned message."""
    chunks: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            break  # the returned original: stop here
        if part.get_content_maintype() != "text" or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            charset = part.get_content_charset() or "utf-8"
            try:
                chunks.append(payload.decode(charset, "replace"))
            except LookupError:
                chunks.append(payload.decode("utf-8", "replace"))
        if sum(len(c) for c in chunks) > _SCAN_LIMIT:
            break
    text = "\n".join(chunks)[:_SCAN_LIMIT]
    cut = _RETURNED.search(text)
    return text[: cut.start()] if cut else text


def _line_with(text: str, start: int) -> str:
    begin = text.rfind("\n", 0, start) + 1
    end = text.find("\n", start)
    line = text[begin : end if end >= 0 else len(text)].strip()
    return " ".join(line.split())[:500]


def _non_standard(data: bytes, null_sender: bool) -> Bounce | None:
    msg = email.message_from_bytes(data[:1_000_000], policy=email.policy.compat32)
    if not _looks_like_bounce(msg, null_sender):
        return None
    text = _text_of(msg)
    recipient = str(msg.get("X-Failed-Recipients", "")).split(",")[0].strip() or None
    status: str | None = None
    found: re.Match[str] | None = None
    m = _STATUS.search(text)
    if m is not None and m.group(1) != "2":
        status, found = m.group(0), m
    elif (r := _REPLY.search(text)) is not None:
        status, found = f"{r.group(1)[0]}.0.0", r
    else:
        for pattern, code in ((_QUOTA, "5.2.2"), (_UNKNOWN_USER, "5.1.1"), (_DELAY, "4.0.0")):
            if (p := pattern.search(text)) is not None:
                status, found = code, p
                break
    if status is None or found is None:
        return None  # bounce-shaped but nothing readable: do not guess
    diagnostic = _line_with(text, found.start())
    subject = str(msg.get("Subject", ""))
    delayed = status.startswith("4") and bool(_DELAY.search(subject) or _DELAY.search(text[:2000]))
    return Bounce(
        recipient=recipient,
        action="delayed" if delayed else "failed",
        status=status,
        diagnostic=diagnostic,
        klass=classify(status, diagnostic),
        standard=False,
    )
