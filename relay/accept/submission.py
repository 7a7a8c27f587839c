"""The submission policy behind port 587: the app side of the SMTP server (DESIGN §3).

Every hook returns a Reply or raises a RelayError whose reply the server sends.
"""

from __future__ import annotations

import logging

import trio

from relay.accept.acceptor import Acceptor
from relay.accept.category import TRANSACTIONAL
from relay.accept.intake import admit, end_if_regenerated, suppression_flags
from relay.accept.sender import HEADER_LIMIT, check_header_from, check_sender, parse_headers
from relay.address import split_address
from relay.errors import AuthRequired, InvalidRequest, MemberSuspended, RelayError, SuppressedRecipient
from relay.mail.headers import field_name
from relay.mail.outbound import split_message
from relay.members.auth import Authenticator, Principal
from relay.reputation import Reputation
from relay.smtp.handler import Session
from relay.smtp.reply import Reply
from relay.smtp.trace import received
from relay.store.aio import AsyncStore

log = logging.getLogger("relay.accept.submission")

# A regenerated API key ends the sessions that used the old one within this many seconds (issue 17:
# "key regeneration takes effect on every node within 1 s"). The stored hash is read at AUTH and with
# the suppression flags at the end of every DATA, so no message is ever accepted under an old key;
# MAIL FROM reads it only when neither happened this long ago, which saves a reused session one store
# hop (a worker-thread wake-up and a SQLite read) per message.
KEY_RECHECK = 1.0


class SubmissionHandler:
    def __init__(
        self, auth: Authenticator, store: AsyncStore, acceptor: Acceptor, *, reputation: Reputation | None = None,
        header_limit: int = HEADER_LIMIT,
        hostname: str = "localhost",
        key_recheck: float = KEY_RECHECK,
    ) -> None:
        self._key_recheck = key_recheck
        self._header_limit = header_limit  # limits.header_size
        self._hostname = hostname  # the "by" of the Received: field
        self._auth = auth
        self._store = store
        self._acceptor = acceptor
        self._reputation = reputation  # rate limits and suspension (DESIGN §6); None: no limits

    async def on_connect(self, session: Session) -> Reply | None:
        return None

    async def on_auth(self, session: Session, username: str, password: str) -> Reply:
        principal = await self._auth.authenticate(username, password, peer=session.peer[0])
        session.did = principal.did
        session.extra["principal"] = principal
        session.extra["key_checked"] = trio.current_time()  # authenticate() just read the stored hash
        if self._reputation is not None:
            self._reputation.note_member_status(principal.did, "active")  # the store just said so
        log.info("auth ok did=%s peer=%s", principal.did, session.peer[0])
        return Reply(235, "2.7.0", "authentication succeeded")

    async def _key_still_current(self, session: Session, principal: Principal) -> None:
        """A regenerated key ends the sessions that authenticated with the old one, in every process
        (the stored hash is the truth; ``atmos admin`` or another node may have changed it), at the
        first MAIL FROM more than ``key_recheck`` seconds after the last read (see KEY_RECHECK)."""
        checked = session.extra.get("key_checked")
        if isinstance(checked, float) and trio.current_time() - checked < self._key_recheck:
            return
        end_if_regenerated(principal, await self._store.get_api_key_hash(principal.did))
        session.extra["key_checked"] = trio.current_time()

    async def on_mail(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        principal = _principal(session)
        await self._key_still_current(session, principal)
        if not address:
            # A null reverse-path is for bounces (RFC 5321 §4.5.5); members never send those.
            raise InvalidRequest("null sender <> is not allowed on submission")
        rep = self._reputation
        if rep is not None and rep.is_suspended(principal.did):
            # Suspended while this session was open: AUTH alone would only catch the next session.
            reason = rep.suspension_reason(principal.did)
            raise MemberSuspended(f"member suspended: {reason}" if reason else None)
        check_sender(principal, address)
        session.extra["smtputf8"] = "SMTPUTF8" in params
        return Reply(250, "2.1.0", "sender ok")

    async def on_rcpt(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        principal = _principal(session)
        try:
            split_address(address)
        except ValueError as exc:
            return Reply(553, "5.1.3", f"bad recipient address syntax: {exc}")
        if self._reputation is not None and session.mail_from:
            # Warming and rate caps per recipient, so a client learns at RCPT, not after DATA (451 4.7.1).
            await self._reputation.check(principal.did, _sender_domain(session), len(session.rcpts) + 1)
        # The suppression check waits for the end of DATA: only then is X-Atmos-Category known,
        # and transactional mail (a password reset) must reach someone who left a newsletter.
        return Reply(250, "2.1.5", "recipient ok")

    async def on_message(self, session: Session, data: bytes) -> Reply:
        principal = _principal(session)
        # The key check and every recipient's suppression flag in one store hop, before the headers are
        # read (the category is only known then; the flags are not used when the mail is transactional).
        flags = await suppression_flags(self._store, principal, session.rcpts, recheck_key=True)
        session.extra["key_checked"] = trio.current_time()
        assert session.mail_from is not None
        mail_from, sender_domain = session.mail_from, _sender_domain(session)
        check_header_from(principal, data, self._header_limit)
        headers = parse_headers(data, self._header_limit)
        category = headers.get("x-atmos-category", "").strip().lower() or principal.default_category(sender_domain)
        attrs = {
            "source": "smtp",
            "subject": headers.get("subject", ""),
            "category": category,
            "transactional": "1" if category in TRANSACTIONAL else "",
        }

        async def build(rcpts: list[str], suppressed: list[str]) -> tuple[bytes, dict[str, str]]:
            # RFC 5321 §4.4: a trace field on every accepted message; Bcc: is for the envelope only
            # (RFC 5322 §3.6.3: recipients listed there must not see each other), so it goes here.
            trace = received(session, by=self._hostname, rcpts=rcpts, authenticated=True,
                             smtputf8=session.extra.get("smtputf8") is True)
            return trace + without_bcc(data), attrs

        admission = await admit(
            self._store, self._acceptor, self._reputation, principal, mail_from=mail_from,
            sender_domain=sender_domain, rcpts=session.rcpts, transactional=category in TRANSACTIONAL,
            build=build, flags=flags)
        if not admission.ids:
            raise SuppressedRecipient()
        ids = ",".join(str(i) for i in admission.ids)
        # After DATA one reply covers every recipient (RFC 5321 §4.1.1.4): suppressed ones are named here.
        suppressed = admission.suppressed
        note = f"; not sent to suppressed {', '.join(suppressed)}" if suppressed else ""
        return Reply(250, "2.0.0", f"queued as {ids}{note}")


def without_bcc(data: bytes) -> bytes:
    """The message without its Bcc: fields (the message itself, unchanged, when it has none)."""
    fields, body = split_message(data)
    if not any(field_name(f) == b"bcc" for f in fields):
        return data
    return b"".join(f for f in fields if field_name(f) != b"bcc") + body


def _sender_domain(session: Session) -> str:
    assert session.mail_from
    return split_address(session.mail_from)[1]


def _principal(session: Session) -> Principal:
    principal = session.extra.get("principal")
    if not isinstance(principal, Principal):
        raise AuthRequired()
    return principal


__all__ = ["TRANSACTIONAL", "RelayError", "SubmissionHandler"]
