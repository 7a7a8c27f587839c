"""The inbound listener (port 25): bounces, complaints, replies; never an open relay (DESIGN §6).

``relay.inbound.handler.InboundHandler`` is the SessionHandler; ``relay.inbound.service.make_inbound_server``
builds the SmtpServer around it. What the listener learns about members' mail goes out through an
``InboundEvents`` (relay.reputation.Reputation implements it).
"""

from __future__ import annotations

from typing import Protocol

from relay.inbound.bounces import BounceClass

__all__ = ["BounceClass", "InboundEvents"]

class InboundEvents(Protocol):
    async def bounce(self, did: str, rcpt_id: int, recipient: str, klass: BounceClass, diagnostic: str) -> None:
        """A recipient of ``did``'s message ``rcpt_id`` failed (a DSN came back to its VERP address).

        ``klass`` is hard | soft | policy | mailbox-full; ``diagnostic`` the remote's words. Called once
        per failed recipient whose store row was not already ``bounced``; not for delay warnings, and
        not for bounces of replies the relay forwarded to a member's own mailbox.
        """
        ...

    async def complaint(self, did: str, recipient: str, feedback_type: str, message_id: str) -> None:
        """An ARF report (RFC 5965) attributed to ``did``: ``recipient`` complained.

        ``recipient`` is "" when the provider redacted it; ``feedback_type`` is lowercased (abuse,
        fraud, virus, other, ...); ``message_id`` is the reported message's Message-ID without <>,
        or "" when unknown.
        """
        ...
