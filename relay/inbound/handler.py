"""The inbound SessionHandler (port 25, DESIGN §6): never an open relay.

A recipient is accepted only when it is one of these, decided on the parsed address alone:

1. ``bounces+<id>-<tag>@<operator domain>`` whose HMAC tag verifies (``relay.delivery.verp``):
   a DSN (or a non-standard bounce, or an auto-reply) about recipient ``<id>``.
2. ``postmaster@``, ``abuse@``, ``<fbl_local_part>@``, ``<tlsrpt_local_part>@`` the operator domain, the
   bare ``<postmaster>`` (RFC 5321 §4.1.1.3) and ``postmaster@`` every verified member domain (RFC 5321 §4.5.1):
   forwarded to ``inbound.operator_inbox`` (logged only when that is empty). Mail to the FBL
   address is read as an ARF complaint (RFC 5965) first, mail to ``<tlsrpt_local_part>@`` as a TLS
   report (RFC 8460 §5.3), recorded for the console (relay.delivery.tlsrpt).
3. ``SRS0=...@<operator domain>`` that verifies and is at most 21 days old (``relay.inbound.srs``),
   with the null reverse-path only: a bounce of mail we forwarded, sent on to the original sender.
4. Any address at a verified member domain that has a forward-to: the reply is forwarded there
   with an SRS0 envelope sender, so SPF passes at the member's mailbox.

Everything else is refused: ``550 5.1.1 address not available`` for unknown addresses at our
domains (and member domains without a forward-to); ``554 5.7.1 relay access denied`` for other
domains, IP literals, and routing tricks in the local part (``%``, ``!``, ``@``, quoting,
backslashes). A source route (``@a,@b:user@domain``) has already been dropped by the SMTP core as
RFC 5321 Appendix C asks, so the mailbox after it is what is judged: ``<@ours:victim@evil>`` is
refused as a foreign domain. Trailing dots and other malformed domains never get here (the core
answers 501).

Everything the listener accepts for forwarding goes into the spool through the Acceptor (so the
250 is only given once it is durable) with a trace header prepended; the scheduler delivers it.
Per-source-address token buckets limit connections (``421 4.7.0`` at connect) and transactions
beyond the first on a connection (``451 4.7.0`` at MAIL). A transaction to a VERP or FBL address
has the smaller size limit ``inbound.report_size`` (552 5.3.4 past it), and bounces and complaints
are parsed in worker threads with caps on bytes and parts (``relay.inbound.reports``).
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import format_datetime
from typing import Literal

from relay.acceptor import Acceptor, Submission
from relay.address import is_domain, normalize_domain
from relay.config import Config
from relay.delivery import tlsrpt, verp
from relay.events import TlsReportReceived
from relay.inbound import InboundEvents, srs
from relay.inbound.arf import ArfParseError, ArfReport
from relay.inbound.bounces import Bounce
from relay.inbound.reports import ReportReader
from relay.ratelimit import TokenBuckets
from relay.smtp.handler import Session
from relay.smtp.reply import Reply
from relay.store.aio import AsyncStore
from relay.store.base import StoreError
from relay.store.rows import Domain, MessageRow, StatusUpdate

log = logging.getLogger("relay.inbound")

NOT_AVAILABLE = Reply(550, "5.1.1", "address not available")
RELAY_DENIED = Reply(554, "5.7.1", "relay access denied")
ONLY_BOUNCES = Reply(550, "5.7.1", "this address accepts delivery status notifications only")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "too many connections from your address, try later")
TOO_MANY_MESSAGES = Reply(451, "4.7.0", "too many messages from your address, try later")
LOOP = Reply(554, "5.4.6", "mail forwarding loop detected")
TRY_LATER = Reply(451, "4.3.0", "temporary failure, try again later")
NO_AUTH = Reply(502, "5.5.1", "command not implemented")

#: Feedback types that are not complaints about a sender (RFC 5965 §7.3, RFC 6591): sent on to the operator.
NOT_COMPLAINTS = frozenset({"not-spam", "auth-failure"})
#: Hop limits (Postfix's hopcount_limit is 50): more Received fields, or more of our own forwarding
#: marks, than this and the message is refused as looping.
MAX_RECEIVED = 50
MAX_FORWARDS = 3
FORWARD_MARK = "X-Atmos-Forwarded"

# Local-part characters that route mail elsewhere on some MTAs (percent hack, UUCP bang paths,
# nested "@", quoting and escapes): refused whatever the domain.
_ROUTING_CHARS = re.compile(r"[%!@\"\\\s]")
_EHLO_SAFE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")
_ROUTES = "inbound.routes"
_TXNS = "inbound.transactions"

RouteKind = Literal["bounce", "operator", "srs", "member"]


@dataclass(frozen=True, slots=True)
class Route:
    """Why a recipient was accepted, decided at RCPT and acted on after DATA."""

    kind: RouteKind
    address: str
    rcpt_id: int = 0  # bounce: the VERP recipient id
    mailbox: str = ""  # operator: postmaster | abuse | fbl
    domain: Domain | None = None  # member: the verified domain row (did, forward_to)
    original: str = ""  # srs: the original sender the SRS0 address stands for


@dataclass
class _Plan:
    """What one inbound message leads to: its copies (accepted together) and what follows once they are."""

    copies: list[tuple[Submission, str]] = field(default_factory=list)  # (copy, log line)
    after: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def copy(self, sub: Submission, what: str) -> None:
        self.copies.append((sub, what))


class InboundHandler:
    def __init__(
        self,
        cfg: Config,
        store: AsyncStore,
        acceptor: Acceptor,
        events: InboundEvents,
        *,
        operator_did: str | None = None,
        suppress_complainers: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``operator_did``: the DID the operator's own forwarded mail is spooled under
        (default ``did:web:<operator_domain>``). ``suppress_complainers``: add the complainer of an
        attributed ARF report to that member's suppression list. ``clock`` drives the per-IP token
        buckets, ``wall_clock`` the SRS day stamps and status times."""
        self.cfg = cfg
        self.store = store
        self.acceptor = acceptor
        self.events = events
        self.domain = cfg.operator_domain.lower()
        self.hostname = cfg.banner_host
        self.operator_did = operator_did or f"did:web:{self.domain}"
        self.suppress_complainers = suppress_complainers
        self._now = wall_clock
        self._secret = cfg.secret_key
        self._fbl = cfg.inbound.fbl_local_part.lower()
        self._tlsrpt = cfg.inbound.tlsrpt_local_part.lower()
        self._operator_boxes = frozenset({"postmaster", "abuse", self._fbl, self._tlsrpt})
        self.buckets = TokenBuckets(cfg.inbound.per_ip_per_minute, cfg.inbound.per_ip_burst, clock=clock)
        self.reports = ReportReader(threads=cfg.inbound.parse_threads, max_bytes=cfg.inbound.report_parse_bytes,
                                    max_parts=cfg.inbound.report_parts)
        # Counters, for tests and the console.
        self.bounces = 0
        self.complaints = 0
        self.forwarded = 0
        self.refused_connections = 0

    # ---- SessionHandler -------------------------------------------------------------------

    async def on_connect(self, session: Session) -> Reply | None:
        if not self.buckets.take(session.peer[0]):
            self.refused_connections += 1
            log.warning("rate limit: refusing connection from %s", session.peer[0])
            return TOO_MANY_CONNECTIONS
        session.extra[_TXNS] = 0
        return None

    async def on_auth(self, session: Session, username: str, password: str) -> Reply:
        return NO_AUTH  # never called: the inbound server does not offer AUTH

    async def on_mail(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        txns = session.extra.get(_TXNS, 0)
        count = txns if isinstance(txns, int) else 0
        if count >= 1 and not self.buckets.take(session.peer[0]):  # the connection paid for the first
            log.warning("rate limit: refusing another transaction from %s", session.peer[0])
            return TOO_MANY_MESSAGES
        session.extra[_TXNS] = count + 1
        session.extra[_ROUTES] = {}
        return Reply(250, "2.1.0", "sender ok")

    async def on_rcpt(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        try:
            route = await self.route(address, session.mail_from or "")
        except StoreError as exc:
            log.warning("store unavailable while checking <%s>: %s", address, exc)
            return TRY_LATER
        if isinstance(route, Reply):
            log.info("refused rcpt <%s> from %s (mail from <%s>): %s", address, session.peer[0],
                     session.mail_from, route)
            return route
        self._routes(session)[address] = route
        if route.kind == "bounce" or route.mailbox == "fbl":
            # A bounce or a complaint needs its report and the returned headers, not 10 MiB.
            limit = self.cfg.inbound.report_size
            session.message_limit = min(limit, session.message_limit or limit)
        return Reply(250, "2.1.5", "recipient ok")

    async def on_message(self, session: Session, data: bytes) -> Reply:
        routes = self._routes(session)
        chosen = [routes[a] for a in dict.fromkeys(session.rcpts) if a in routes]
        if not chosen:  # cannot happen: the core refuses DATA without an accepted RCPT
            return Reply(554, "5.5.1", "no valid recipients")
        if _looping(data):
            log.warning("loop: refusing message from <%s> (%s) to %s", session.mail_from, session.peer[0],
                        ",".join(r.address for r in chosen))
            return LOOP
        # Every copy this message makes is accepted in ONE spool batch, before the side effects that
        # depend on it (a bounce's status and counters): a refusal leaves nothing behind for the
        # sender's retry to duplicate (issue 14).
        plan = _Plan()
        members = [r for r in chosen if r.kind == "member"]
        if members:
            self._forward_replies(session, members, data, plan)
        srs_routes = [r for r in chosen if r.kind == "srs"]
        if srs_routes:
            self._return_bounces(session, srs_routes, data, plan)
        operator = [r for r in chosen if r.kind == "operator"]
        if operator:
            await self._to_operator(session, operator, data, plan)
        for route in chosen:
            if route.kind == "bounce":
                await self._bounce(session, route, data, plan)
        accepted = await self.acceptor.accept_all([sub for sub, _ in plan.copies])
        for (_, what), acc in zip(plan.copies, accepted, strict=True):
            self.forwarded += 1
            log.info("%s (queue %d)", what, acc.queue_id)
        for effect in plan.after:
            await effect()
        note = f"queued as {','.join(str(a.queue_id) for a in accepted)}" if accepted else "accepted"
        return Reply(250, "2.0.0", note)

    # ---- RCPT decisions --------------------------------------------------------------------

    async def route(self, address: str, mail_from: str) -> Route | Reply:
        """Route for a recipient, or the refusal (see the module docstring). Store errors propagate."""
        if address.lower() == "postmaster":  # RFC 5321 §4.1.1.3: <Postmaster> without a domain
            return Route("operator", address, mailbox="postmaster")
        local, at, raw_domain = address.rpartition("@")
        if not at or not local or not raw_domain:
            return RELAY_DENIED
        if raw_domain.startswith("[") or _ROUTING_CHARS.search(local):
            return RELAY_DENIED
        if local.startswith(".") or local.endswith(".") or ".." in local or raw_domain.endswith("."):
            return RELAY_DENIED
        domain = normalize_domain(raw_domain)
        if not is_domain(domain):
            return RELAY_DENIED
        if domain == self.domain:
            return self._operator_route(address, local, mail_from)
        row = await self.store.get_domain(domain)
        if row is None or row.state != "verified":
            return RELAY_DENIED
        if local.lower() == "postmaster":
            return Route("operator", address, mailbox="postmaster")
        if not row.forward_to:
            return NOT_AVAILABLE
        return Route("member", address, domain=row)

    def _operator_route(self, address: str, local: str, mail_from: str) -> Route | Reply:
        lower = local.lower()
        if lower.startswith("bounces+"):
            rcpt_id = verp.decode(address, secret=self._secret, domain=self.domain)
            if rcpt_id is None:
                log.warning("forged or malformed VERP address <%s>", address)
                return NOT_AVAILABLE
            return Route("bounce", address, rcpt_id=rcpt_id)
        if srs.is_srs(address, domain=self.domain):
            original = srs.reverse(address, secret=self._secret, domain=self.domain, now=self._now())
            if original is None:
                log.warning("invalid or expired SRS address <%s>", address)
                return NOT_AVAILABLE
            if mail_from:
                return ONLY_BOUNCES
            return Route("srs", address, original=original)
        if lower in self._operator_boxes:
            mailbox = "fbl" if lower == self._fbl else "tlsrpt" if lower == self._tlsrpt else lower
            return Route("operator", address, mailbox=mailbox)
        return NOT_AVAILABLE

    # ---- after DATA -------------------------------------------------------------------------

    def _forward_replies(self, session: Session, routes: list[Route], data: bytes, plan: _Plan) -> None:
        """Replies to member domains: one copy per (member, forward-to), SRS0 envelope sender."""
        groups: dict[tuple[str, str], list[Route]] = {}
        for route in routes:
            assert route.domain is not None and route.domain.forward_to
            groups.setdefault((route.domain.did, route.domain.forward_to), []).append(route)
        sender = self._srs_sender(session.mail_from or "")
        for (did, forward_to), group in groups.items():
            rcpts = [r.address for r in group]
            attrs = self._attrs(data, forward="1", transactional="1", forward_for=",".join(rcpts)[:300],
                                original_mail_from=(session.mail_from or "")[:320])
            plan.copy(Submission(did, sender, (forward_to,), self._trace(session, rcpts) + data, attrs),
                      f"forwarding reply from <{session.mail_from}> to {','.join(rcpts)} for {did} "
                      f"via <{forward_to}> as <{sender}>")

    def _return_bounces(self, session: Session, routes: list[Route], data: bytes, plan: _Plan) -> None:
        """Bounces to SRS0 addresses: sent on to the original senders, null reverse-path."""
        originals = tuple(dict.fromkeys(r.original for r in routes))
        attrs = self._attrs(data, forward="1", dsn="1", srs="reverse")
        plan.copy(Submission(self.operator_did, "", originals,
                             self._trace(session, [r.address for r in routes]) + data, attrs),
                  f"returning bounce to {','.join(originals)} (SRS)")

    async def _to_operator(self, session: Session, routes: list[Route], data: bytes, plan: _Plan) -> None:
        boxes = {r.mailbox for r in routes}
        if "fbl" in boxes and await self._complaint(session, data) and boxes == {"fbl"}:
            return  # attributed and recorded; the operator sees it on the console, not in the inbox
        if "tlsrpt" in boxes and await self._tls_report(session, data) and boxes == {"tlsrpt"}:
            return  # recorded; the console lists TLS reports
        inbox = self.cfg.inbound.operator_inbox
        rcpts = [r.address for r in routes]
        if not inbox:
            log.info("mail for %s from <%s> (%s, %d bytes): no operator inbox configured, logged only",
                     ",".join(rcpts), session.mail_from, session.peer[0], len(data))
            return
        attrs = self._attrs(data, forward="1", transactional="1", forward_for=",".join(rcpts)[:300],
                            original_mail_from=(session.mail_from or "")[:320])
        sender = self._srs_sender(session.mail_from or "")
        plan.copy(Submission(self.operator_did, sender, (inbox,), self._trace(session, rcpts) + data, attrs),
                  f"forwarding mail for {','.join(rcpts)} from <{session.mail_from}> to the operator inbox")

    async def _tls_report(self, session: Session, data: bytes) -> bool:
        """Record a TLS report (RFC 8460 §5.3) about the operator domain; False when it is not one."""
        if not tlsrpt.is_report(data):
            return False
        try:
            # Decompressing and parsing a stranger's attachment: off the event loop, with byte caps.
            report = await self.reports.tls_report(data, now=self._now())
        except tlsrpt.ReportError as exc:
            log.info("TLS report from <%s> (%s) not readable: %s", session.mail_from, session.peer[0], exc)
            return False
        fresh = await self.store.add_tlsrpt_inbound(report)
        if fresh and self.acceptor.bus is not None:
            self.acceptor.bus.publish(TlsReportReceived(
                organization=report.organization, report_id=report.report_id, policy_domain=report.policy_domain,
                successes=report.successes, failures=report.failures, failure_types=report.failure_types))
        log.info("TLS report %s from %s for %s: %d ok, %d failed%s%s", report.report_id, report.organization,
                 report.policy_domain, report.successes, report.failures,
                 f" ({report.failure_types})" if report.failure_types else "", "" if fresh else " (duplicate)")
        return True

    async def _complaint(self, session: Session, data: bytes) -> bool:
        """Record an ARF complaint; False when it is not one or cannot be attributed (-> operator)."""
        try:
            report = await self.reports.arf(data)
        except ArfParseError as exc:
            log.warning("unreadable ARF report from <%s>: %s", session.mail_from, exc)
            return False
        if report is None:
            log.info("mail to the FBL address from <%s> is not an ARF report", session.mail_from)
            return False
        did, row = await self._attribute(report)
        if did is None:
            log.warning("unattributable ARF report (%s) from <%s>, message-id <%s>: forwarding to the operator",
                        report.feedback_type, session.mail_from, report.message_id)
            return False
        if report.feedback_type in NOT_COMPLAINTS:
            log.info("ARF %s report for %s: not a complaint, forwarding to the operator", report.feedback_type, did)
            return False
        recipient = report.recipient or (row.recipient if row is not None else "") or ""
        self.complaints += 1
        log.info("complaint (%s) for %s from <%s> about message <%s>", report.feedback_type, did, recipient,
                 report.message_id)
        await self.events.complaint(did, recipient, report.feedback_type, report.message_id or "")
        if self.suppress_complainers and "@" in recipient:
            await self.store.add_suppression(did, recipient, f"complaint ({report.feedback_type})")
        return True

    async def _attribute(self, report: ArfReport) -> tuple[str | None, MessageRow | None]:
        """The member a report is about: by a VERP envelope sender we can verify, else by the
        enclosed message's X-Atmos-Member-Did naming an existing member."""
        forged = False
        for candidate in (report.return_path, report.original_mail_from):
            rcpt_id = verp.decode(candidate or "", secret=self._secret, domain=self.domain)
            if rcpt_id is not None:
                row = await self.store.get_message(rcpt_id)
                if row is not None:
                    return row.did, row
            elif _looks_like_verp(candidate or "", self.domain):
                forged = True
        if forged:
            # Claims to be about our mail but the tag does not verify: the header may be forged too.
            log.warning("ARF report with a forged VERP sender: not attributed")
            return None, None
        did = report.member_did
        if did and await self.store.get_member(did) is not None:
            return did, None
        return None, None

    async def _bounce(self, session: Session, route: Route, data: bytes, plan: _Plan) -> None:
        """A message to a verified VERP address: classify, update the row, tell events, tell the member
        (the row update and the events run once the copy to the member is durable: ``plan.after``)."""
        row = await self.store.get_message(route.rcpt_id)
        if row is None:
            log.warning("bounce for recipient id %d, which the store does not know: ignored", route.rcpt_id)
            return
        report = await self.reports.bounce(data, row.recipient, null_sender=not session.mail_from)
        # A reply we forwarded to a member's own mailbox bounced there: not the member's sending.
        forwarded = srs.is_srs(row.mail_from, domain=self.domain)
        if report is None or not report.failed:
            what = "not a bounce (auto-reply?)" if report is None else f"a DSN with action {report.action}"
            log.info("message to <%s> (rcpt id %d) from <%s> is %s: passed on to the member", route.address,
                     route.rcpt_id, session.mail_from, what)
            if not forwarded:
                await self._to_member(session, route, row, data, report, plan)
            return
        diagnostic = report.diagnostic or f"status {report.status}"
        if row.status == "bounced":
            log.info("bounce for rcpt id %d already recorded (%s): ignored", route.rcpt_id, diagnostic)
            return
        if not forwarded:
            await self._to_member(session, route, row, data, report, plan)
        klass = report.klass
        status = report.status

        async def record() -> None:
            if row.status == "sent":
                update = StatusUpdate(id=row.id, status="bounced", at=self._now(), next_attempt_at=None,
                                      last_reply=f"late bounce ({klass}): {diagnostic}"[:1000])
                await self.store.update_statuses([update])
            else:
                log.info("bounce for rcpt id %d while its status is %s: the spool decides", route.rcpt_id, row.status)
            if forwarded:
                log.info("forwarded reply %d to <%s> bounced (%s): %s", row.id, row.recipient, klass, diagnostic)
                return
            self.bounces += 1
            log.info("bounce did=%s rcpt id=%d to=<%s> class=%s status=%s: %s", row.did, row.id, row.recipient,
                     klass, status, diagnostic)
            # Suppressing hard-bounced recipients (suspension.suppress_hard_bounces) is the events side's job.
            await self.events.bounce(row.did, row.id, row.recipient, klass, diagnostic)

        plan.after.append(record)

    async def _to_member(
        self, session: Session, route: Route, row: MessageRow, data: bytes, report: Bounce | None, plan: _Plan
    ) -> None:
        """Pass a bounce (or an auto-reply) on to the member's forward-to mailbox, null reverse-path."""
        domain = await self.store.get_domain(row.from_domain) if row.from_domain else None
        if domain is None or domain.did != row.did or not domain.forward_to:
            log.info("no forward-to for %s (%s): bounce for rcpt id %d logged only", row.from_domain, row.did, row.id)
            return
        attrs = self._attrs(data, forward="1", dsn="1", original_rcpt_id=str(row.id),
                            bounce_class=report.klass if report is not None and report.failed else "")
        plan.copy(Submission(row.did, "", (domain.forward_to,), self._trace(session, [route.address]) + data, attrs),
                  f"passing a bounce for rcpt id {row.id} on to <{domain.forward_to}>")

    # ---- helpers ----------------------------------------------------------------------------

    def _routes(self, session: Session) -> dict[str, Route]:
        routes = session.extra.get(_ROUTES)
        if not isinstance(routes, dict):
            routes = session.extra[_ROUTES] = {}
        return routes

    def _srs_sender(self, mail_from: str) -> str:
        if not mail_from:
            return ""
        rewritten = srs.forward(mail_from, secret=self._secret, domain=self.domain, now=self._now())
        if rewritten is None:
            log.info("sender <%s> cannot be SRS-rewritten: forwarding with the null reverse-path", mail_from)
            return ""
        return rewritten

    def _attrs(self, data: bytes, **extra: str) -> dict[str, str]:
        return {"source": "smtp", "subject": _subject(data)[:300], **{k: v for k, v in extra.items() if v}}

    def _trace(self, session: Session, rcpts: Iterable[str]) -> bytes:
        """RFC 5321 §4.4 trace field plus our forwarding mark, prepended to forwarded mail."""
        helo = _EHLO_SAFE.sub("", session.ehlo or "")[:255] or "unknown"
        ip = session.peer[0] or "unknown"
        literal = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
        protocol = "ESMTPS" if session.tls else "ESMTP"
        rcpt_list = list(rcpts)
        target = f" for <{rcpt_list[0]}>" if len(rcpt_list) == 1 else ""
        date = format_datetime(datetime.fromtimestamp(self._now(), UTC))
        received = f"Received: from {helo} ({literal})\r\n\tby {self.hostname} (Atmosphere Relay) with {protocol}" \
                   f"{target};\r\n\t{date}\r\n"
        mark = f"{FORWARD_MARK}: {', '.join(f'<{r}>' for r in rcpt_list)[:900]}\r\n"
        return (received + mark).encode("utf-8")


def _looks_like_verp(address: str, domain: str) -> bool:
    local, _, addr_domain = address.rpartition("@")
    return addr_domain.lower() == domain and local.lower().startswith("bounces+")


def _header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def _looping(data: bytes) -> bool:
    headers = _header_section(data[:256 * 1024])
    received = len(re.findall(rb"^received:", headers, re.IGNORECASE | re.MULTILINE))
    ours = len(re.findall(rb"^" + FORWARD_MARK.encode() + rb":", headers, re.IGNORECASE | re.MULTILINE))
    return received > MAX_RECEIVED or ours >= MAX_FORWARDS


def _subject(data: bytes) -> str:
    try:
        msg = email.message_from_bytes(_header_section(data[:64 * 1024]), policy=email.policy.compat32)
        raw = msg.get("Subject")
        if raw is None:
            return ""
        return " ".join(str(make_header(decode_header(str(raw)))).split())
    except Exception:  # an undecodable subject is only a display nicety
        return ""
