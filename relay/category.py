"""Message categories: what the sender says a message is, and what follows from it (DESIGN §5).

The category comes from ``X-Atmos-Category`` (SMTP), the ``category`` field (``/v1/send``), or, when
the message names none, the sending domain's default (set on /account or ``PUT /member/category``):
a PDS cannot add headers to its password resets, so its domain's default makes them transactional.
Transactional categories skip the suppression list and never get a List-Unsubscribe link (a reset
must reach someone who left a newsletter, and one click on a provider's "Unsubscribe" button must
not lock a user out of their account).
"""

from __future__ import annotations

import re

from relay.errors import InvalidRequest

TRANSACTIONAL = frozenset({"transactional", "login-link", "password-reset", "mfa-otp", "verification"})
_CATEGORY = re.compile(r"[a-z0-9._-]{0,64}")


def parse_category(value: object, name: str = "category") -> str:
    """A category as given by a member (lower-cased); InvalidRequest naming ``name`` otherwise."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: must be a string")
    category = value.strip().lower()
    if not _CATEGORY.fullmatch(category):
        raise InvalidRequest(f"{name}: use letters, digits, '.', '_' or '-' (at most 64)")
    return category


def is_transactional(category: str) -> bool:
    return category in TRANSACTIONAL


__all__ = ["TRANSACTIONAL", "is_transactional", "parse_category"]
