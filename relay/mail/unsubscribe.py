"""Signed one-click unsubscribe tokens (RFC 8058) naming a DID and a recipient.

The token is a capability: whoever holds the URL may suppress that recipient
for that member, without logging in, which is exactly what RFC 8058 §3.2 asks
(the POST must work without cookies or confirmation). It is unforgeable
(HMAC-SHA256 with the relay secret) and carries no expiry, because list mail
can sit in a mailbox for years and the link must still work.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

_MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"unsubscribe:" + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: bytes, did: str, recipient: str) -> str:
    payload = json.dumps([did, recipient.lower()], separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def read_token(secret: bytes, token: str) -> tuple[str, str] | None:
    """(did, recipient) for a genuine token, else None; never raises on junk."""
    body, _, tag = token.partition(".")
    try:
        payload, mac = _unb64(body), _unb64(tag)
        if not hmac.compare_digest(mac, _mac(secret, payload)):
            return None
        did, recipient = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not (isinstance(did, str) and isinstance(recipient, str)):
        return None
    return did, recipient


def unsubscribe_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/u/{token}"
