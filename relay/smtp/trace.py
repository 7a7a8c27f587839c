"""The ``Received:`` trace field a relay adds to every message it accepts (RFC 5321 §4.4).

Written the way Postfix writes it, so the tools that read trace fields (and people) find what they
expect::

    Received: from client.example ([192.0.2.7])
        (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
        by mx1.relay.example.net (Atmosphere Relay) with ESMTPSA for <rcpt@example.org>;
        Wed, 2 Dec 2026 07:00:00 +0000

The protocol is one of RFC 3848's ``ESMTP``/``ESMTPA``/``ESMTPS``/``ESMTPSA`` (``UTF8SMTP...``
under SMTPUTF8, RFC 6531 §3.7.3; ``SMTP`` after HELO). ``for`` names the recipient only when there
is exactly one: listing several would show every recipient the others (Postfix does the same).
The client's EHLO name is the client's claim; characters outside a host name's are dropped so it
can neither fold the header nor open a comment.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from relay.smtp.handler import Session

_EHLO_SAFE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")


def protocol(*, extended: bool, tls: bool, authenticated: bool, smtputf8: bool = False) -> str:
    """The ``with`` keyword (RFC 3848 §1, RFC 6531 §3.7.3)."""
    if not extended:
        return "SMTP"
    return ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if tls else "") + ("A" if authenticated else "")


def received(
    session: Session,
    *,
    by: str,
    rcpts: Sequence[str],
    authenticated: bool,
    smtputf8: bool = False,
    now: float | None = None,
) -> bytes:
    """The folded ``Received:`` field (CRLF-terminated) for a message accepted on ``session``."""
    helo = _EHLO_SAFE.sub("", session.ehlo or "")[:255] or "unknown"
    ip = session.peer[0] or "unknown"
    literal = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
    lines = [f"Received: from {helo} ({literal})"]
    if session.tls and session.tls_version:
        bits = f" ({session.tls_bits}/{session.tls_bits} bits)" if session.tls_bits else ""
        lines.append(f"\t(using {session.tls_version} with cipher {session.tls_cipher}{bits})")
    with_ = protocol(extended=session.extended, tls=session.tls, authenticated=authenticated, smtputf8=smtputf8)
    date = format_datetime(datetime.fromtimestamp(time.time() if now is None else now, UTC))
    target = f" for <{rcpts[0]}>" if len(rcpts) == 1 else ""
    lines += [f"\tby {by} (Atmosphere Relay) with {with_}{target};", f"\t{date}"]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


__all__ = ["protocol", "received"]
