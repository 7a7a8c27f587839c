"""The domain ownership challenge (DESIGN §5): the token a member publishes as
``atmos-verify=<token>`` in a TXT record at ``_atmos-challenge.<domain>`` (relay.dns.checks).

An HMAC of the DID under the relay's secret, so a token proves one member's claim and cannot be copied
to claim the domain for another DID; nothing to store, the relay recomputes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def verify_token(secret: bytes, did: str) -> str:
    """The ownership challenge value, bound to the DID so it cannot be reused by another member."""
    mac = hmac.new(secret, b"atmos-verify:" + did.encode(), hashlib.sha256).digest()
    return base64.b32encode(mac[:20]).decode().lower()
