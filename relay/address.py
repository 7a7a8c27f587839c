"""Mail addresses and DIDs: pure validation shared by SMTP and HTTP.

Deliberately conservative: a relay that accepts a malformed address only
produces a bounce later (RFC 5321 §4.1.2 Mailbox grammar, simplified; SMTPUTF8
local parts per RFC 6531 §3.3 are allowed).
"""

from __future__ import annotations

import functools
import re

# did:plc is 24 chars of base32-sortable (a-z2-7); did:web is a hostname with optional %3A port.
_DID_PLC = re.compile(r"did:plc:[a-z2-7]{24}")
_DID_WEB = re.compile(r"did:web:[a-zA-Z0-9.\-]+(%3A[0-9]+)?")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_LOCAL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>()\[\]\\,;:\"@]")


def is_did(value: str) -> bool:
    return bool(_DID_PLC.fullmatch(value) or _DID_WEB.fullmatch(value))


def normalize_domain(domain: str) -> str:
    """Lower-case, strip a trailing dot, IDNA-encode: the key domains are stored under."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def is_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(domain) <= 253 and len(labels) >= 2 and all(_LABEL.fullmatch(lab) for lab in labels)


@functools.lru_cache(maxsize=4096)
def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` → (local, normalized domain); ValueError names the problem.

    Cached (pure, and asked several times per message: RCPT, the sender's domain for rate limits,
    signing...); an address that raises is not cached."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{address!r} is not an address of the form local@domain")
    if len(local.encode()) > 64:  # RFC 5321 §4.5.3.1.1
        raise ValueError(f"{address!r}: local part longer than 64 octets")
    if _LOCAL_FORBIDDEN.search(local.strip('"')) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(f"{address!r}: invalid characters in the local part")
    norm = normalize_domain(domain)
    if not is_domain(norm):
        raise ValueError(f"{address!r}: {domain!r} is not a valid domain")
    return local, norm


def domain_of(address: str) -> str:
    return split_address(address)[1]
