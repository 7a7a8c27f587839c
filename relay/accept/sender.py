"""Sender policy: MAIL FROM and the From: header must be on a domain the DID owns (DESIGN §3).

Pure functions over a Principal; they raise typed errors that know their replies.
DMARC alignment (RFC 7489 §3.1) is why the header From matters as much as the
envelope: mail whose From: names someone else's domain would fail DMARC at the
receiver and burn the shared IP's reputation.
"""

from __future__ import annotations

from email.header import decode_header, make_header
from email.utils import getaddresses

from relay.address import split_address
from relay.errors import DomainMismatch, HeaderTooLarge, InvalidRequest
from relay.mail import headers
from relay.mail.text import display_text
from relay.members.auth import Principal

# RFC 5322 sets no limit on the header section; we do (limits.header_size), and a message over it is
# refused whole: policy that read only a prefix would miss a second From: placed after it.
HEADER_LIMIT = 256 * 1024


def check_sender(principal: Principal, address: str, *, what: str = "MAIL FROM") -> str:
    """Return the normalized sender domain, or raise DomainMismatch naming it."""
    try:
        _, domain = split_address(address)
    except ValueError as exc:
        raise InvalidRequest(f"{what}: {exc}") from None
    if domain in principal.domains:
        return domain
    if domain in principal.pending:
        raise DomainMismatch(f"{what} domain {domain} is enrolled but not yet verified (publish the DNS records)")
    raise DomainMismatch(f"{what} domain {domain} is not enrolled under {principal.did}")


def header_section(data: bytes, limit: int = HEADER_LIMIT) -> bytes:
    """The whole header section (RFC 5322 §2.1, up to the first empty line, CRLF-terminated; see
    ``relay.mail.headers``); HeaderTooLarge when it is longer than ``limit`` bytes. The search is
    bounded by the limit."""
    size = headers.header_size(data, limit)
    if size > limit:
        raise HeaderTooLarge(f"header section too large (over {limit} bytes; limits.header_size)")
    return data[:size]


def header_fields(data: bytes, limit: int = HEADER_LIMIT) -> list[tuple[str, str]]:
    """(lower-cased name, unfolded value) of each header field; tolerant of junk (policy only).

    Hand-split rather than ``email.parser``: the header registry cost 17 % of the accept path's
    CPU under load (scripts/bench profile) and policy needs only names and raw values.
    Raises HeaderTooLarge for a header section over ``limit``.
    """
    out = []
    for raw in headers.fields(header_section(data, limit)):
        name, sep, value = raw.partition(b":")
        if not sep:
            continue
        text = value.decode("utf-8", "surrogateescape")
        out.append((name.strip().decode("ascii", "replace").lower(), " ".join(text.split())))
    return out


def parse_headers(data: bytes, limit: int = HEADER_LIMIT) -> dict[str, str]:
    """The first value of each header, RFC 2047 encoded words decoded (for display only: undecodable
    8-bit bytes become U+FFFD here, the message keeps them)."""
    out: dict[str, str] = {}
    for name, value in header_fields(data, limit):
        if name not in out:
            out[name] = display_text(_decode_words(value) if "=?" in value else value)
    return out


def _decode_words(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def check_header_from(principal: Principal, data: bytes, limit: int = HEADER_LIMIT) -> None:
    """RFC 5322 §3.6.2: exactly one From: header in the whole header section; every author on an
    owned domain. HeaderTooLarge for a header section over ``limit``."""
    values = [v for n, v in header_fields(data, limit) if n == "from"]
    if len(values) != 1:
        raise DomainMismatch("message must have exactly one From: header")
    addresses = [addr for _, addr in getaddresses(values) if addr]
    if not addresses:
        raise DomainMismatch("From: header has no address")
    for address in addresses:
        check_sender(principal, address, what="From:")
