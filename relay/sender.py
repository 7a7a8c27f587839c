"""Sender policy: MAIL FROM and the From: header must be on a domain the DID owns (DESIGN §3).

Pure functions over a Principal; they raise typed errors that know their replies.
DMARC alignment (RFC 7489 §3.1) is why the header From matters as much as the
envelope: mail whose From: names someone else's domain would fail DMARC at the
receiver and burn the shared IP's reputation.
"""

from __future__ import annotations

from email.headerregistry import Address
from email.parser import BytesHeaderParser
from email.policy import SMTPUTF8

from relay.address import split_address
from relay.auth import Principal
from relay.errors import DomainMismatch, InvalidRequest

_HEADER_PARSER = BytesHeaderParser(policy=SMTPUTF8)
_HEADER_LIMIT = 256 * 1024  # headers beyond this are not parsed for policy (RFC 5322 has no limit)


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


def header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n", 0, _HEADER_LIMIT)
    return data[: end + 2] if end >= 0 else data[:_HEADER_LIMIT]


def parse_headers(data: bytes) -> dict[str, str]:
    """The first value of each header, lower-cased names; tolerant of junk (policy only)."""
    msg = _HEADER_PARSER.parsebytes(header_block(data))
    out: dict[str, str] = {}
    for name, value in msg.raw_items():
        out.setdefault(name.lower(), str(value).strip())
    return out


def header_from_addresses(data: bytes) -> list[str]:
    msg = _HEADER_PARSER.parsebytes(header_block(data))
    froms = msg.get_all("From") or []
    addresses: list[str] = []
    for value in froms:
        try:
            addrs: tuple[Address, ...] = value.addresses
        except (AttributeError, ValueError):
            raise InvalidRequest("From: header cannot be parsed") from None
        addresses.extend(a.addr_spec for a in addrs)
    return addresses


def check_header_from(principal: Principal, data: bytes) -> None:
    """RFC 5322 §3.6.2: exactly one From: header; every author on an owned domain."""
    msg = _HEADER_PARSER.parsebytes(header_block(data))
    if len(msg.get_all("From") or []) != 1:
        raise DomainMismatch("message must have exactly one From: header")
    addresses = header_from_addresses(data)
    if not addresses:
        raise DomainMismatch("From: header has no address")
    for address in addresses:
        check_sender(principal, address, what="From:")
