"""The real transport behind the scheduler: route (MX, relayhost) then SMTP (DESIGN §5).

MX hosts are tried in preference order (RFC 5321 §5.1) while they cannot be
reached or refuse the session; the first host where a transaction begins decides
this attempt (a 4xx or a broken connection there defers, it does not fall
through to the next MX, as in Postfix, so a message is never sent twice at once).
"""

from __future__ import annotations

import logging
import ssl

from relay.delivery.client import ConnectionPool, DeliveryResult, deliver
from relay.delivery.congestion import HostHealth
from relay.delivery.retry import Outcome, OutcomeKind
from relay.delivery.routing import MxHost, Resolver, Route, RoutingError, route
from relay.delivery.scheduler import AttemptResult
from relay.delivery.tlspolicy import HostPlan, TlsPlanner, describe
from relay.net.egress import Egress
from relay.smtp.client import ClientTimeouts, TlsPolicy

log = logging.getLogger("relay.delivery")


class SmtpTransport:
    def __init__(
        self,
        resolver: Resolver,
        pool: ConnectionPool,
        *,
        helo_name: str,
        port: int = 25,
        relayhost: str = "",
        tls_policy: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
        timeouts: ClientTimeouts | None = None,
        egress: Egress | None = None,
        ssl_context: ssl.SSLContext | None = None,
        planner: TlsPlanner | None = None,
        hosts: HostHealth | None = None,
    ) -> None:
        self._resolver = resolver
        self.hosts = hosts or HostHealth()
        self._pool = pool
        self._helo = helo_name
        self._port = port
        self._relayhost = relayhost
        self._tls = tls_policy
        self._timeouts = timeouts or ClientTimeouts()
        self._egress = egress or Egress()
        self._ssl_context = ssl_context
        # DANE and MTA-STS decide TLS per MX host (relay/delivery/tlspolicy.py); without one, the default.
        self._planner = planner or TlsPlanner(tls_policy)

    async def attempt(self, domain: str, mail_from: str, rcpt: str, data: bytes) -> AttemptResult:
        try:
            found = await route(domain, resolver=self._resolver, port=self._port, relayhost=self._relayhost)
        except RoutingError as exc:
            kind = OutcomeKind.DNS_PERMANENT if exc.permanent else OutcomeKind.DNS_TEMPORARY
            return AttemptResult(Outcome(kind, str(exc), exc.enhanced))
        hosts = self._usable(found)
        if not hosts:
            # Never deliver to ourselves or into a private network (relay.net.egress): an MX of 0.0.0.0,
            # ::ffff:127.0.0.1 or 10.0.0.1 would reach listeners no stranger should reach.
            refused = "; ".join(f"{h.name} {a} is {self._egress.refusal(a)}" for h in found.hosts for a in h.addresses)
            text = f"{domain}: no MX host has a globally routable address ({refused})"[:900]
            return AttemptResult(Outcome(OutcomeKind.DNS_PERMANENT, text, "5.4.4"))
        smtputf8 = not (mail_from.isascii() and rcpt.isascii())
        found = Route(found.domain, hosts, found.port, found.relayhost, found.implicit_mx)
        plans = await self._planner.plan(found)
        last: tuple[HostPlan, DeliveryResult] | None = None
        for plan in plans:
            host = plan.host
            if plan.skip is not None:
                self._planner.report(plan, address=None, tls=False, failure=plan.skip_failure, detail=plan.skip)
                continue
            result = await deliver(host.addresses, found.port, host.name, mail_from=mail_from, rcpts=[rcpt], data=data,
                                   helo_name=self._helo, tls_policy=plan.policy, timeouts=self._timeouts,
                                   pool=self._pool, ssl_context=plan.ssl_context or self._ssl_context,
                                   smtputf8=smtputf8, peer_check=plan.peer_check, auth=plan.auth, hosts=self.hosts)
            if result.started or result.tls_failure is not None:
                self._planner.report(plan, address=result.address, tls=result.tls, failure=result.tls_failure,
                                     detail=result.connection_error or "")
            reply = result.per_rcpt.get(rcpt)
            if reply is not None:
                return AttemptResult(Outcome.from_reply(reply), mx_host=host.name, tls=result.tls)
            if result.started:
                # Broke off mid-transaction (perhaps after the final dot): trying the next MX now could
                # deliver twice; this attempt is over and the retry schedule takes it from here.
                return AttemptResult(_no_reply(result, "connection lost"), mx_host=host.name, tls=result.tls)
            last = (plan, result)  # unreachable, refused the session or failed required TLS: try the next MX
        if last is None:
            # Every host was ruled out by DANE or MTA-STS before connecting: wait, saying why (RFC 8461 §5).
            skipped = describe(plans)
            kind = OutcomeKind.DNS_TEMPORARY if all(p.temporary_dns for p in plans) else OutcomeKind.TLS_FAILED
            return AttemptResult(Outcome(kind, f"{domain}: {skipped}", "4.7.5" if kind is OutcomeKind.TLS_FAILED
                                         else "4.4.3"), mx_host=plans[-1].host.name if plans else None)
        plan, result = last
        if result.connection_reply is not None:
            return AttemptResult(Outcome.from_reply(result.connection_reply), mx_host=result.mx_host, tls=result.tls)
        if result.tls_failure is not None:
            text = f"{plan.label}: {result.connection_error}" if plan.label else (result.connection_error or "")
            skipped = describe(plans)
            if skipped:
                text += f"; {skipped}"
            return AttemptResult(Outcome(OutcomeKind.TLS_FAILED, text, "4.7.5"), mx_host=result.mx_host)
        return AttemptResult(_no_reply(result, "connection failed"), mx_host=result.mx_host)

    def _usable(self, found: Route) -> list[MxHost]:
        if self._relayhost:
            return found.hosts  # the operator's own smarthost, often on a private network: their choice
        hosts = []
        for host in found.hosts:
            # deliver() connects to exactly these checked addresses: no second lookup to rebind.
            addresses = self._egress.allowed(host.addresses)
            if addresses:
                hosts.append(MxHost(host.name, host.preference, addresses))
        return hosts


def _no_reply(result: DeliveryResult, default: str) -> Outcome:
    """A host that gave no final reply: a timeout (RFC 5321 §4.5.3.2) or a connection failure, both temporary."""
    text = result.connection_error or default
    return Outcome(OutcomeKind.TIMEOUT if "timed out" in text else OutcomeKind.CONNECTION_FAILED, text)
