"""Events the SMTP core hands to the application (h11 style).

Every event except ``ConnectionClosed`` (and the ``NEED_DATA`` sentinel, which is
not an event) waits for exactly one ``Reply`` from the application, passed to
``ServerConnection.send``. Events that carry a ``reply`` (``ProtocolError``,
``AuthChallenge``) were already decided by the core: the application sends that
reply as is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from relay.smtp.reply import Reply


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event`` when more bytes are needed (call ``receive_data``).
NEED_DATA = _NeedData.NEED_DATA
NeedData = _NeedData


@dataclass(frozen=True, slots=True)
class Ehlo:
    """EHLO (``extended``) or HELO; answer with ``ServerConnection.ehlo_reply(event)``."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    """RFC 3207: reply 220, then run the TLS handshake and call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """RFC 4954 §4: the core wants to send a 334 continuation (already in ``reply``)."""

    mechanism: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Credentials:
    """A complete, decoded SASL PLAIN/LOGIN exchange; answer 235 2.7.0 or 535 5.7.8."""

    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""  # PLAIN authorization identity (RFC 4616); "" when absent


@dataclass(frozen=True, slots=True)
class MailFrom:
    address: str  # "" for the null reverse-path <>
    params: dict[str, str]  # upper-case keys; "" for keyword-only params (SMTPUTF8)


@dataclass(frozen=True, slots=True)
class RcptTo:
    address: str
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Data:
    """DATA: reply 354 to start reading the message, anything else to refuse."""


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """The final dot arrived; ``data`` is the unstuffed message (lines end in CRLF)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Vrfy:
    argument: str


@dataclass(frozen=True, slots=True)
class Help:
    argument: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol; send ``reply``. ``close``: the core closes after it."""

    reply: Reply
    close: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (EOF) or the session ended; needs no reply."""


Event = (
    Ehlo
    | StartTls
    | AuthChallenge
    | Credentials
    | MailFrom
    | RcptTo
    | Data
    | MessageComplete
    | Rset
    | Noop
    | Quit
    | Vrfy
    | Help
    | ProtocolError
    | ConnectionClosed
)
