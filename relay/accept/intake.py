"""The accept pipeline behind both front doors, port 587 and ``POST /v1/send`` (DESIGN §4, §6).

Suppression, the reputation grant, the spool accept, the grant given back when the accept fails:
written once here. Each front door parses its own input (SMTP session, JSON body) and builds its own
message; what they share, including the typed errors and so the reply codes, comes from this module.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from relay.accept.acceptor import Acceptor
from relay.errors import KeyRegenerated
from relay.members.auth import Principal
from relay.reputation import Grant, Reputation
from relay.store.aio import AsyncStore

log = logging.getLogger("relay.accept.intake")

# (accepted recipients, suppressed recipients) -> (the message to spool, its envelope attrs)
Build = Callable[[list[str], list[str]], Awaitable[tuple[bytes, Mapping[str, str]]]]


@dataclass(frozen=True, slots=True)
class Admission:
    """What became of one message: ``ids`` is empty when every recipient was suppressed (nothing spooled)."""

    accepted: list[str]
    suppressed: list[str]
    ids: tuple[int, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)  # RateLimit-* after this message


async def suppression_flags(
    store: AsyncStore, principal: Principal, rcpts: Sequence[str], *, recheck_key: bool = False
) -> list[bool]:
    """Each recipient's suppression flag, in one store hop (a hop costs the event loop a thread wake-up).

    ``recheck_key``: read the member's stored key hash in the same hop and raise ``KeyRegenerated`` (421)
    when it is no longer the one ``principal`` authenticated with (a long SMTP session)."""
    did = principal.did
    stored_hash, flags = await store.call(lambda s: (
        s.get_api_key_hash(did) if recheck_key else principal.key_hash,
        [s.is_suppressed(did, r) for r in rcpts]))
    end_if_regenerated(principal, stored_hash)
    return flags


def end_if_regenerated(principal: Principal, stored_hash: str | None) -> None:
    """``KeyRegenerated`` (421) when the stored hash is no longer the one the session authenticated with."""
    if stored_hash != principal.key_hash:
        log.info("did=%s: API key regenerated, ending a session that used the old one", principal.did)
        raise KeyRegenerated()


async def admit(
    store: AsyncStore, acceptor: Acceptor, reputation: Reputation | None, principal: Principal, *,
    mail_from: str, sender_domain: str, rcpts: Sequence[str], transactional: bool, build: Build,
    flags: Sequence[bool] | None = None,
) -> Admission:
    """Accept one message for its unsuppressed recipients; raises the RelayError the caller replies with.

    ``flags``: the recipients' suppression flags when the caller already read them
    (``suppression_flags``); else they are read here, and not at all for transactional mail, which
    must reach someone who left a newsletter (a password reset). With no recipient left nothing is
    spooled or counted: the Admission has no ids and the member's current RateLimit-* headers.
    ``build`` makes the message once the recipients are known; its errors come before any counting.
    """
    rcpts = list(rcpts)
    if transactional:
        flags = [False] * len(rcpts)
    elif flags is None:
        flags = await suppression_flags(store, principal, rcpts)
    accepted = [r for r, flag in zip(rcpts, flags, strict=True) if not flag]
    suppressed = [r for r, flag in zip(rcpts, flags, strict=True) if flag]
    if not accepted:
        headers = await reputation.limiter.headers(principal.did, sender_domain) if reputation is not None else {}
        return Admission(accepted, suppressed, headers=headers)
    data, attrs = await build(accepted, suppressed)
    # Warming and rate caps (DESIGN §6): checked again and counted in one step (other sessions may have
    # used the budget since RCPT), and given back if the accept fails.
    grant: Grant | None = None
    if reputation is not None:
        grant = await reputation.acquire(principal.did, sender_domain, len(accepted))
    try:
        result = await acceptor.accept(did=principal.did, mail_from=mail_from, rcpts=accepted, data=data, attrs=attrs)
    except BaseException:
        if reputation is not None and grant is not None:
            reputation.release(grant)
        raise
    return Admission(accepted, suppressed, result.ids, grant.headers if grant is not None else {})


__all__ = ["Admission", "Build", "admit", "end_if_regenerated", "suppression_flags"]
