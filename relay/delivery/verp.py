"""VERP bounce addresses that cannot be forged (DESIGN §5).

Every outbound message goes out with its own envelope sender (the RFC 5321
§4.1.1.2 reverse-path), so a bounce that comes back names the recipient it is
about without anyone parsing the bounce's body::

    bounces+17-k3q9x2mb7a@relay.example
    <prefix>+<recipient id>-<tag>@<operator domain>

The id is in decimal. The tag is the first 10 characters of the lowercase
base32 (RFC 4648 §6) of HMAC-SHA256(secret, b"verp:" + id): 50 bits, so
nobody without the secret can make the relay count a bounce against someone
else's recipient. Base32 has one case only, so the comparison is
case-insensitive, as it must be: the local part is case-sensitive in principle
(RFC 5321 §2.4) but MTAs and forwarders do change its case in practice.

Pure: no I/O. ``decode`` never raises; anything that is not ours, or whose
tag is wrong, is None.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

TAG_LENGTH = 10
MAX_ID = 2**63 - 1  # a SQLite/PostgreSQL BIGINT row id

# After the prefix and "+": the id (canonical decimal, no leading zeros), "-", the tag.
_REST = re.compile(rf"(0|[1-9][0-9]{{0,18}})-([a-z2-7]{{{TAG_LENGTH}}})", re.ASCII)
# RFC 5322 §3.2.3 atext minus "+" (our separator), as a dot-atom.
_PREFIX = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+)*", re.ASCII)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"  # RFC 1035 §2.3.1 (letters, digits, hyphens)
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)


def _tag(rcpt_id: int, secret: bytes) -> str:
    mac = hmac.new(secret, b"verp:" + str(rcpt_id).encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(mac).decode("ascii").lower()[:TAG_LENGTH]


def encode(rcpt_id: int, *, secret: bytes, domain: str, prefix: str = "bounces") -> str:
    """The envelope sender for recipient ``rcpt_id``: ``<prefix>+<id>-<tag>@<domain>``."""
    if isinstance(rcpt_id, bool) or not 0 <= rcpt_id <= MAX_ID:
        raise ValueError(f"recipient id must be an integer in 0..{MAX_ID}, got {rcpt_id!r}")
    if not secret:
        raise ValueError("the VERP secret must not be empty")
    if _PREFIX.fullmatch(prefix) is None:
        raise ValueError(f"VERP prefix must be a dot-atom without '+', got {prefix!r}")
    if _DOMAIN.fullmatch(domain) is None:
        raise ValueError(f"VERP domain must be an ASCII host name, got {domain!r}")
    address = f"{prefix}+{rcpt_id}-{_tag(rcpt_id, secret)}@{domain}"
    if len(address) > 254:  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its "<>"
        raise ValueError("VERP address too long")
    return address


def decode(address: str, *, secret: bytes, domain: str, prefix: str = "bounces") -> int | None:
    """The recipient id in a VERP address we made, or None.

    None for another domain or prefix, a malformed address, a non-canonical id
    or a tag that does not verify (compared in constant time). Case-insensitive
    throughout. Never raises, whatever ``address`` holds.
    """
    if not secret or not isinstance(address, str) or not address.isascii() or len(address) > 320:
        return None
    local, at, addr_domain = address.strip().removeprefix("<").removesuffix(">").rpartition("@")
    if not at or addr_domain.lower() != domain.lower():
        return None
    head = prefix.lower() + "+"
    local = local.lower()
    if not local.startswith(head):
        return None
    m = _REST.fullmatch(local, len(head))
    if m is None:
        return None
    rcpt_id = int(m.group(1))
    if rcpt_id > MAX_ID:
        return None
    expected = _tag(rcpt_id, secret).encode("ascii")
    if not hmac.compare_digest(m.group(2).encode("ascii"), expected):
        return None
    return rcpt_id
