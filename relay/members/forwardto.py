"""Forward-to confirmation: replies are forwarded only to a mailbox that asked for them (DESIGN §6).

Setting a domain's forward-to sends one message to that address with a signed link
(``<public_url>/forward-to/confirm/<token>``). Until the link is followed (GET shows a page, the
POST from its button confirms, so a link scanner confirms nothing), replies to the domain are
refused with ``550 5.1.1``. The token names the domain and the address and expires after
``inbound.forward_confirm_ttl``; it is an HMAC-SHA256 capability under the relay secret, and it
confirms nothing once the domain's forward-to is changed to another address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

from relay.accept.acceptor import Acceptor
from relay.config import Config

_MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"forward-to:" + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: bytes, domain: str, forward_to: str, expires: float) -> str:
    payload = json.dumps([domain.lower(), forward_to, int(expires)], separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def read_token(secret: bytes, token: str, now: float) -> tuple[str, str] | None:
    """(domain, forward_to) of a genuine, unexpired token; None otherwise (never raises on junk)."""
    body, _, tag = token.partition(".")
    try:
        payload, mac = _unb64(body), _unb64(tag)
        if not hmac.compare_digest(mac, _mac(secret, payload)):
            return None
        domain, forward_to, expires = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not (isinstance(domain, str) and isinstance(forward_to, str) and isinstance(expires, int)):
        return None
    return (domain, forward_to) if now <= expires else None


def confirm_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/forward-to/confirm/{token}"


def confirmation_message(cfg: Config, domain: str, forward_to: str, url: str, now: float) -> bytes:
    expires = format_datetime(datetime.fromtimestamp(now + cfg.inbound.forward_confirm_ttl, UTC))
    text = (
        f"Someone asked Atmosphere Relay to forward replies sent to addresses at {domain}\r\n"
        f"to this mailbox ({forward_to}).\r\n\r\n"
        f"If that was you, confirm here (the link works until {expires}):\r\n\r\n{url}\r\n\r\n"
        "If it was not, ignore this message: nothing will be forwarded to you.\r\n"
    )
    head = (
        f"From: Atmosphere Relay <no-reply@{cfg.operator_domain}>\r\nTo: <{forward_to}>\r\n"
        f"Subject: Confirm forwarding of replies to {domain}\r\n"
        f"Date: {format_datetime(datetime.fromtimestamp(now, UTC))}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@{cfg.operator_domain}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        "Auto-Submitted: auto-generated\r\n\r\n"
    )
    return (head + text).encode()


async def request_confirmation(cfg: Config, acceptor: Acceptor, domain: str, forward_to: str, *, now: float,
                               public_url: str) -> int:
    """Spool the confirmation message to ``forward_to``; returns its queue id."""
    token = make_token(cfg.secret_key, domain, forward_to, now + cfg.inbound.forward_confirm_ttl)
    data = confirmation_message(cfg, domain, forward_to, confirm_url(public_url, token), now)
    accepted = await acceptor.accept(
        did=f"did:web:{cfg.operator_domain}", mail_from=f"postmaster@{cfg.operator_domain}", rcpts=[forward_to],
        data=data, attrs={"source": "relay", "forward": "1", "transactional": "1",
                          "subject": f"Confirm forwarding of replies to {domain}"})
    return accepted.queue_id


__all__ = ["confirm_url", "confirmation_message", "make_token", "read_token", "request_confirmation"]
