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
   with the null reverse-path only, at most ``inbound.srs_daily`` a day per address, and only a
   delivery report (``multipart/report; report-type=delivery-status``, RFC 3464): a bounce of mail
   we forwarded, sent on to the original sender. Anything else to it is refused.
4. Any address at a verified member domain whose forward-to is *confirmed* (the link mailed to it
   was followed) and whose member is not suspended: the reply is forwarded there with an SRS0
   envelope sender (SPF passes at the member's mailbox) and an ARC set over our
   Authentication-Results (RFC 8617), counted against ``inbound.forward_daily`` per member and
   ``inbound.forward_per_ip_per_hour`` per source address.

ARF reports (RFC 5965) to the FBL address are believed only from ``inbound.fbl_sources`` (a
network the connection comes from, or a domain whose DKIM signature on the report verifies, with
dkimpy) and are attributed only through the relay's own VERP envelope sender in the reported
message (HMAC-tagged, ``relay.delivery.verp``): the recipient id it names is the complainer,
whatever the report's other fields say. Never by ``X-Atmos-Member-Did``, a header anyone can
write. A complaint counts once per recipient id. Reports that cannot be attributed are stored
for the operator (``atmos admin reports``) and forwarded to the operator inbox; they never touch
a member's standing or suppression list.

Everything else is refused: ``550 5.1.1 address not available`` for unknown addresses at our
domains (and member domains without a confirmed forward-to, or whose member is suspended);
``554 5.7.1 relay access denied`` for other
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
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from typing import Literal

from relay.accept.acceptor import Acceptor, Submission
from relay.address import is_domain, normalize_domain
from relay.config import Config
from relay.delivery import tlsrpt, verp
from relay.dkim.verify import DkimVerifier, authentication_results, passes_for
from relay.events import TlsReportReceived
from relay.inbound import InboundEvents, srs
from relay.inbound.arf import ArfParseError, ArfReport
from relay.inbound.bounces import Bounce
from relay.inbound.reports import ReportReader
from relay.mail.headers import CRLF, header_size
from relay.mail.headers import fields as header_fields
from relay.mail.parsing import report_type
from relay.net.ratelimit import TokenBuckets
from relay.smtp.handler import Session
from relay.smtp.reply import Reply
from relay.smtp.trace import received
from relay.store.aio import AsyncStore
from relay.store.base import Store, StoreError
from relay.store.rows import Domain, MessageRow, StatusUpdate

log = logging.getLogger("relay.inbound")

NOT_AVAILABLE = Reply(550, "5.1.1", "address not available")
RELAY_DENIED = Reply(554, "5.7.1", "relay access denied")
ONLY_BOUNCES = Reply(550, "5.7.1", "this address accepts delivery status notifications only")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "too many connections from your address, try later")
TOO_MANY_MESSAGES = Reply(451, "4.7.0", "too many messages from your address, try later")
LOOP = Reply(554, "5.4.6", "mail forwarding loop detected")
TRY_LATER = Reply(451, "4.3.0", "temporary failure, try again later")
FORWARD_LIMIT = Reply(451, "4.7.1", "this member's forwarding limit is reached, try again tomorrow")
TOO_MANY_FORWARDS = Reply(451, "4.7.1", "too many forwarded messages from your address, try later")
SRS_LIMIT = Reply(451, "4.7.1", "too many reports for this address today, try tomorrow")
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
        verifier: DkimVerifier | None = None,
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
        per_hour = cfg.inbound.forward_per_ip_per_hour
        self.forward_buckets = TokenBuckets(per_hour / 60.0, min(per_hour, 10), clock=clock)
        self.verifier = verifier or DkimVerifier.from_config(cfg)
        self._fbl_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._fbl_domains: list[str] = []
        for source in cfg.inbound.fbl_sources:
            try:
                self._fbl_networks.append(ipaddress.ip_network(source, strict=False))
            except ValueError:
                self._fbl_domains.append(source.lower().rstrip("."))
        # Counters, for tests and the console.
        self.bounces = 0
        self.complaints = 0
        self.forwarded = 0
        self.refused_connections = 0
        self.unattributed = 0

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
        if not isinstance(route, Reply):
            route = self._limit(session, route)
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

    def _limit(self, session: Session, route: Route) -> Route | Reply:
        """The per-source limit of forwarding routes (module docstring, 4)."""
        if route.kind == "member":
            routes = self._routes(session)
            if not any(r.kind == "member" for r in routes.values()) and not self.forward_buckets.take(session.peer[0]):
                return TOO_MANY_FORWARDS  # the first forwarding recipient of a transaction pays
        return route

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
        srs_routes = [r for r in chosen if r.kind == "srs"]
        if srs_routes and not _is_delivery_report(data):
            log.warning("refusing non-report mail from %s to SRS address(es) %s", session.peer[0],
                        ",".join(r.address for r in srs_routes))
            if len(srs_routes) == len(chosen):
                return ONLY_BOUNCES
            srs_routes = []
        try:
            if srs_routes:
                srs_routes = await self._within_srs_limit(srs_routes)
                if not srs_routes and all(r.kind == "srs" for r in chosen):
                    return SRS_LIMIT
            members = [r for r in chosen if r.kind == "member"]
            if members:
                members = await self._within_forward_cap(members)
                if not members and all(r.kind == "member" for r in chosen):
                    return FORWARD_LIMIT
        except StoreError as exc:
            log.warning("store unavailable while counting forwards: %s", exc)
            return TRY_LATER
        if members:
            await self._forward_replies(session, members, data, plan)
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
        if not row.forward_to or row.forward_confirmed_at is None:
            return NOT_AVAILABLE  # never forwarded to an address that did not confirm it wants the mail
        member = await self.store.get_member(row.did)
        if member is None or member.status != "active":
            return NOT_AVAILABLE  # a suspended member's domain forwards nothing
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

    async def _forward_replies(self, session: Session, routes: list[Route], data: bytes, plan: _Plan) -> None:
        """Replies to member domains: one copy per (member, forward-to), SRS0 envelope sender."""
        groups: dict[tuple[str, str], list[Route]] = {}
        for route in routes:
            assert route.domain is not None and route.domain.forward_to
            groups.setdefault((route.domain.did, route.domain.forward_to), []).append(route)
        sender = self._srs_sender(session.mail_from or "")
        # What we found, for the member's mailbox: sealed into an ARC set at delivery (RFC 8617 §5.1).
        # Any Authentication-Results claiming to be ours is someone else's forgery (RFC 8601 §5).
        results = await self.verifier.verify(data)
        checked = authentication_results(self.hostname, results) + _without_our_results(data, self.hostname)
        for (did, forward_to), group in groups.items():
            rcpts = [r.address for r in group]
            attrs = self._attrs(data, forward="1", transactional="1", forward_for=",".join(rcpts)[:300],
                                original_mail_from=(session.mail_from or "")[:320], arc="1")
            plan.copy(Submission(did, sender, (forward_to,), self._trace(session, rcpts) + checked, attrs),
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
            await self._unattributed(session, "arf", f"unreadable ARF report: {exc}", data)
            return False
        if report is None:
            log.info("mail to the FBL address from <%s> is not an ARF report", session.mail_from)
            return False
        source = await self._fbl_source(session, data)
        if source is None:
            await self._unattributed(session, "arf", "not from a configured feedback-loop source "
                                     "(inbound.fbl_sources: no matching network or verified DKIM domain)", data,
                                     report)
            return False
        row, why = await self._attribute(report)
        if row is None:
            await self._unattributed(session, "arf", why, data, report)
            return False
        if report.feedback_type in NOT_COMPLAINTS:
            log.info("ARF %s report for %s: not a complaint, forwarding to the operator", report.feedback_type, row.did)
            return False
        # The VERP address names the recipient: the report's own Original-Rcpt-To could name anyone.
        recipient = row.recipient
        if not await self.store.call(lambda s: s.record_complaint(row.id, row.did, recipient, report.feedback_type,
                                                                  source)):
            log.info("complaint about recipient id %d (%s) already counted: ignored", row.id, row.did)
            return True
        self.complaints += 1
        log.info("complaint (%s, via %s) for %s from <%s> about message <%s>", report.feedback_type, source, row.did,
                 recipient, report.message_id)
        await self.events.complaint(row.did, recipient, report.feedback_type, report.message_id or "")
        if self.suppress_complainers and "@" in recipient:
            await self.store.add_suppression(row.did, recipient, f"complaint ({report.feedback_type})")
        return True

    async def _fbl_source(self, session: Session, data: bytes) -> str | None:
        """The configured feedback-loop source this report comes from, or None."""
        try:
            peer = ipaddress.ip_address(session.peer[0].split("%", 1)[0])
        except ValueError:
            peer = None
        if peer is not None:
            for network in self._fbl_networks:
                if peer.version == network.version and peer in network:
                    return str(network)
        if not self._fbl_domains:
            return None
        return passes_for(await self.verifier.verify(data), self._fbl_domains)

    async def _attribute(self, report: ArfReport) -> tuple[MessageRow | None, str]:
        """The recipient row a report is about, through a VERP envelope sender whose tag verifies;
        else (None, why)."""
        candidates = [c for c in (report.return_path, report.original_mail_from) if c]
        for candidate in candidates:
            rcpt_id = verp.decode(candidate, secret=self._secret, domain=self.domain)
            if rcpt_id is not None:
                row = await self.store.get_message(rcpt_id)
                if row is not None:
                    return row, ""
                return None, f"VERP recipient id {rcpt_id} is not (or no longer) in the store"
        if any(_looks_like_verp(c, self.domain) for c in candidates):
            return None, "the reported message's VERP address does not verify (forged?)"
        return None, "the reported message carries no VERP envelope sender of this relay"

    async def _unattributed(self, session: Session, kind: str, reason: str, data: bytes,
                            report: ArfReport | None = None) -> None:
        self.unattributed += 1
        summary = "" if report is None else (f"feedback-type={report.feedback_type} "
                                             f"message-id=<{report.message_id or ''}>")
        log.warning("unattributed %s report from %s (mail from <%s>): %s", kind, session.peer[0], session.mail_from,
                    reason)
        try:
            await self.store.call(lambda s: s.add_unattributed(kind, session.peer[0], session.mail_from or "", reason,
                                                               summary or _subject(data)[:300]))
        except StoreError as exc:  # the log line above is the operator's record then
            log.warning("unattributed report not stored: %s", exc)

    async def _within_srs_limit(self, routes: list[Route]) -> list[Route]:
        """The SRS routes whose address may still relay a report today (counted only for reports
        relayed, so junk refused after DATA cannot use up a genuine bounce's budget)."""
        day = int(self._now() // 86400)
        kept = []
        for route in routes:
            key = route.address.lower()
            if await self.store.call(functools.partial(_take_daily, scope="srs", key=key, day=day,
                                                       cap=self.cfg.inbound.srs_daily)):
                kept.append(route)
            else:
                log.warning("SRS address <%s> reached its daily limit of %d reports", route.address,
                            self.cfg.inbound.srs_daily)
        return kept

    async def _within_forward_cap(self, routes: list[Route]) -> list[Route]:
        """The member routes whose member still has forwards left today (one counted per member)."""
        day = int(self._now() // 86400)
        allowed: dict[str, bool] = {}
        for route in routes:
            assert route.domain is not None
            did = route.domain.did
            if did not in allowed:
                allowed[did] = await self.store.call(functools.partial(
                    _take_daily, scope="forward", key=did, day=day, cap=self.cfg.inbound.forward_daily))
                if not allowed[did]:
                    log.warning("forwarding cap (%d a day) reached for %s", self.cfg.inbound.forward_daily, did)
        return [r for r in routes if r.domain is not None and allowed[r.domain.did]]

    async def _bounce(self, session: Session, route: Route, data: bytes, plan: _Plan) -> None:
        """A message to a verified VERP address: classify, update the row, tell events, tell the member
        (the row update and the events run once the copy to the member is durable: ``plan.after``)."""
        row = await self.store.get_message(route.rcpt_id)
        if row is None:
            await self._unattributed(session, "dsn", f"VERP recipient id {route.rcpt_id} is not (or no longer) "
                                     "in the store", data)
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
        if domain is None or domain.did != row.did or not domain.forward_to or domain.forward_confirmed_at is None:
            # Unconfirmed: the content of a "bounce" is anyone's to write (every recipient sees the VERP
            # address), so it goes only to a mailbox that asked for the member's mail.
            log.info("no confirmed forward-to for %s (%s): bounce for rcpt id %d logged only", row.from_domain,
                     row.did, row.id)
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
        rcpt_list = list(rcpts)
        trace = received(session, by=self.hostname, rcpts=rcpt_list, authenticated=False, now=self._now())
        mark = f"{FORWARD_MARK}: {', '.join(f'<{r}>' for r in rcpt_list)[:900]}\r\n"
        return trace + mark.encode("utf-8")


def _looks_like_verp(address: str, domain: str) -> bool:
    local, _, addr_domain = address.rpartition("@")
    return addr_domain.lower() == domain and local.lower().startswith("bounces+")


def _take_daily(store: Store, *, scope: str, key: str, day: int, cap: int) -> bool:
    return store.take_daily(scope, key, day, cap)


def _is_delivery_report(data: bytes) -> bool:
    """RFC 3464 §2 / RFC 6522: top-level ``multipart/report; report-type=delivery-status``."""
    return report_type(data) == "delivery-status"


_AUTH_RESULTS = re.compile(rb"^authentication-results:[ \t]*([^;\s]+)", re.IGNORECASE)


def _without_our_results(data: bytes, authserv_id: str) -> bytes:
    """``data`` without Authentication-Results fields naming our authserv-id (RFC 8601 §5: a forgery)."""
    ours = authserv_id.lower().encode()
    size = header_size(data)
    fields = header_fields(data[:size])
    kept = [f for f in fields if (m := _AUTH_RESULTS.match(f)) is None or m.group(1).lower() != ours]
    if len(kept) == len(fields):
        return data
    return b"".join(f + CRLF for f in kept) + data[size:]


def _header_section(data: bytes) -> bytes:
    return data[: header_size(data)]


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
