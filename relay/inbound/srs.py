"""Sender Rewriting Scheme, SRS0 (libsrs2 / postsrsd style), so forwarded mail passes SPF downstream.

A reply to ``anyone@member.example`` is forwarded from the relay's IP to the member's own mailbox.
Keeping the original envelope sender would make SPF fail at that mailbox (our IP is not in the
sender domain's SPF record), so the envelope sender is rewritten to an address at the operator
domain, which still names the original sender so that a bounce can be sent back::

    SRS0=HHHHHH=TT=orig-domain=orig-local@<operator domain>

``TT`` is the day (days since the epoch, modulo 1024) in two characters of the RFC 4648 base32
alphabet, as libsrs2 writes it. ``HHHHHH`` is the first six characters of the lowercase base32 of
HMAC-SHA256(secret, ``"srs0:" + TT + "=" + orig-domain + "=" + orig-local``) computed over the
lowercased text: 30 bits, case-insensitive (base32 has one case, and MTAs do change the case of
local parts). libsrs2 uses 4 characters of base64 of HMAC-SHA1; the layout is the same, only the
hash differs, which only this relay has to check. An address is valid for ``max_age`` days
(21 by default, as libsrs2's default maximum age).

Two limits keep the scheme safe where the rest of the relay is strict:

- The local part must stay within 64 octets (RFC 5321 §4.5.3.1.1): the relay's own SMTP core and
  address checks refuse longer ones, so an SRS address we could not take back would be useless.
  ``forward`` returns None then, and for non-ASCII senders (an SMTPUTF8 sender cannot be put in an
  ASCII local part); the caller forwards with the null reverse-path instead.
- SRS1 (re-forwarding someone else's SRS0 address) is not implemented: such a sender is simply
  wrapped again as SRS0 when it fits.

Pure: no I/O. ``reverse`` never raises.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

HASH_LENGTH = 6
MAX_AGE_DAYS = 21
MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 §6, as libsrs2's timestamps
_PREFIX = "srs0"
_SEPARATORS = "=+-"  # libsrs2 accepts any of these right after "SRS0"
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+",
                     re.ASCII)
_LOCAL = re.compile(r"[A-Za-z0-9!#$&'*+/=?^_`{|}~.-]+", re.ASCII)  # dot-atom text without "%"
_SECONDS_PER_DAY = 86400


def _day(now: float) -> int:
    return int(now // _SECONDS_PER_DAY) % 1024


def _stamp(day: int) -> str:
    return _B32[(day >> 5) & 31] + _B32[day & 31]


def _unstamp(text: str) -> int | None:
    if len(text) != 2:
        return None
    hi, lo = _B32.find(text[0].upper()), _B32.find(text[1].upper())
    if hi < 0 or lo < 0:
        return None
    return hi << 5 | lo


def _hash(secret: bytes, stamp: str, domain: str, local: str) -> str:
    data = f"{_PREFIX}:{stamp}={domain}={local}".lower().encode("ascii")
    mac = hmac.new(secret, data, hashlib.sha256).digest()
    return base64.b32encode(mac).decode("ascii").lower()[:HASH_LENGTH]


def forward(sender: str, *, secret: bytes, domain: str, now: float | None = None) -> str | None:
    """The SRS0 address at ``domain`` standing for ``sender``; None when there is none to make.

    None for the null sender, a sender that is not a plain ASCII ``local@domain`` (quoted local
    parts, ``%``, IP literals), or one whose SRS local part would exceed 64 octets.
    """
    if not secret:
        raise ValueError("the SRS secret must not be empty")
    local, at, orig_domain = sender.strip().rpartition("@")
    if not at or not local or not sender.isascii():
        return None
    if _LOCAL.fullmatch(local) is None or _DOMAIN.fullmatch(orig_domain) is None:
        return None
    orig_domain = orig_domain.lower()
    stamp = _stamp(_day(time.time() if now is None else now))
    srs_local = f"SRS0={_hash(secret, stamp, orig_domain, local)}={stamp}={orig_domain}={local}"
    if len(srs_local) > MAX_LOCAL:
        return None
    return f"{srs_local}@{domain}"


def is_srs(address: str, *, domain: str) -> bool:
    """Whether ``address`` looks like an SRS0 address at ``domain`` (valid or not)."""
    local, at, addr_domain = address.rpartition("@")
    return bool(at) and addr_domain.lower() == domain.lower() and local[:5].lower() in ("srs0=", "srs0+", "srs0-")


def reverse(
    address: str, *, secret: bytes, domain: str, now: float | None = None, max_age: int = MAX_AGE_DAYS
) -> str | None:
    """The original sender an SRS0 address at ``domain`` stands for, or None.

    None for anything not ours, a hash that does not verify (compared in constant time), or a
    timestamp older than ``max_age`` days (or more than a day in the future).
    """
    if not secret or not isinstance(address, str) or not address.isascii() or len(address) > 320:
        return None
    local, at, addr_domain = address.strip().removeprefix("<").removesuffix(">").rpartition("@")
    if not at or addr_domain.lower() != domain.lower():
        return None
    if len(local) < 6 or local[:4].lower() != _PREFIX or local[4] not in _SEPARATORS:
        return None
    parts = local[5:].split("=", 3)
    if len(parts) != 4:
        return None
    given, stamp, orig_domain, orig_local = parts
    day = _unstamp(stamp)
    if day is None or len(given) != HASH_LENGTH or not orig_local:
        return None
    if _DOMAIN.fullmatch(orig_domain) is None or _LOCAL.fullmatch(orig_local) is None:
        return None
    expected = _hash(secret, stamp.upper(), orig_domain.lower(), orig_local)
    if not hmac.compare_digest(given.lower().encode("ascii"), expected.encode("ascii")):
        return None
    age = (_day(time.time() if now is None else now) - day) % 1024
    if age > max_age and age != 1023:  # 1023: stamped "tomorrow" by a clock slightly ahead
        return None
    return f"{orig_local}@{orig_domain.lower()}"
