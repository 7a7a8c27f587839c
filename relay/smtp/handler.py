"""The application side of the SMTP server: a per-session record and the hooks.

The server (``relay.smtp.server``) calls these hooks; the relay's real handler
(``relay.submission.SubmissionHandler``) checks credentials, policy and spools.
A hook returns the Reply to send, or raises ``RelayError`` whose ``smtp_reply``
is sent (421/521 also close the connection). Any other exception is logged with
its traceback and answered ``451 4.3.0`` without its text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from relay.smtp.reply import Reply


@dataclass(slots=True)
class Session:
    """What is known about one connection; the server keeps it in step with the protocol.

    ``mail_from``/``rcpts`` hold the accepted envelope of the current transaction and
    are cleared when it ends (final dot, RSET, EHLO). After STARTTLS, ``ehlo`` and
    ``did`` are cleared (RFC 3207 §4.2); ``extra`` is the handler's own and is kept.
    """

    peer: tuple[str, int]
    tls: bool = False
    tls_version: str = ""  # e.g. "TLSv1.3", for the Received: field (relay.smtp.trace)
    tls_cipher: str = ""
    tls_bits: int = 0
    ehlo: str | None = None
    extended: bool = True  # EHLO (not HELO): the Received: protocol is ESMTP
    did: str | None = None  # set by on_auth on success
    mail_from: str | None = None  # "" for the null reverse-path <>
    rcpts: list[str] = field(default_factory=list)
    message_limit: int | None = None  # on_rcpt may lower the size limit of this transaction (RFC 1870)
    extra: dict[str, object] = field(default_factory=dict)


class SessionHandler(Protocol):
    async def on_connect(self, session: Session) -> Reply | None:
        """None: the normal 220 greeting; a Reply (554/521): sent, then the connection closes."""
        ...

    async def on_auth(self, session: Session, username: str, password: str) -> Reply:
        """Check credentials; on success set ``session.did`` and return 235 2.7.0."""
        ...

    async def on_mail(self, session: Session, address: str, params: dict[str, str]) -> Reply: ...

    async def on_rcpt(self, session: Session, address: str, params: dict[str, str]) -> Reply: ...

    async def on_message(self, session: Session, data: bytes) -> Reply:
        """``data`` is the unstuffed message; return 250 only once it is durable."""
        ...
