"""Which TLS each MX host of a destination gets: DANE, MTA-STS or the configured default (DESIGN §5).

    plans = await TlsPlanner(TlsPolicy.OPPORTUNISTIC, dane=Dane(ns), sts=MtaSts(...)).plan(route)
    plans[i].skip        # why host i must not be used now (or None)
    plans[i].policy, plans[i].peer_check, plans[i].ssl_context, plans[i].auth   # for deliver()

Per MX host, in order of precedence:

1. DANE (RFC 7672), when enabled (``delivery.tls = "dane"``) and the MX RRset and the host's TLSA RRset are
   DNSSEC-secure: TLS required, the chain checked against the TLSA records (a set with no usable record
   still requires TLS, unauthenticated, §2.2); a failed TLSA lookup skips the host (§2.1.1). DANE wins over
   MTA-STS (RFC 8461 §2).
2. MTA-STS (RFC 8461) ``enforce``: a host the policy does not list is skipped (§4.1); the others need TLS
   with a certificate valid for the host name (WebPKI, §4.2). ``testing``: delivery as by default, with
   the mismatches and failures only reported (§5).
3. The configured default (``may``, ``verify`` or ``none``).

Every outcome is handed to a ``Recorder`` (TLS-RPT, RFC 8460) under the policy that applied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from relay.delivery.dane import Dane, DaneHost
from relay.delivery.mtasts import MtaSts, PolicyStore, StsPolicy
from relay.delivery.routing import MxHost, Resolver, Route
from relay.dns.checks import DnsLookup
from relay.net.egress import Egress
from relay.smtp.client import PeerCheck, TlsPolicy, opportunistic_context, verify_context

if TYPE_CHECKING:
    from relay.config import Config

__all__ = ["HostPlan", "PolicyRef", "Recorder", "TlsPlanner", "tls_planner", "verified_context"]


def verified_context(ca_file: str = "") -> ssl.SSLContext:
    """WebPKI verification with the system store, or with ``ca_file`` alone (``delivery.tls_ca_file``)."""
    if not ca_file:
        return verify_context()
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def tls_planner(cfg: Config, resolver: Resolver, recorder: Recorder | None = None,
                store: PolicyStore | None = None) -> TlsPlanner:
    """The planner ``delivery.*`` describes: default level, DANE with ``dnssec``, MTA-STS unless off."""

    delivery = cfg.delivery
    level = delivery.tls_level
    verify = verified_context(delivery.tls_ca_file)
    dane = Dane(delivery.nameservers) if level == "dane" else None
    sts = None
    if delivery.mta_sts:
        # The policy host is a stranger's choice: resolved and allowed by the one outbound address policy.
        sts = MtaSts(txt=DnsLookup(delivery.nameservers), egress=Egress.from_config(cfg, resolver=resolver),
                     context=verify, timeout=delivery.mta_sts_timeout, max_bytes=delivery.mta_sts_max_bytes,
                     max_entries=delivery.mta_sts_cache_entries, store=store)
    default = TlsPolicy.OPPORTUNISTIC if level == "dane" else TlsPolicy(level)
    return TlsPlanner(default, dane=dane, sts=sts, verify=verify, recorder=recorder)


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """What TLS-RPT counts a session under (RFC 8460 §4.4 "policy")."""

    domain: str
    kind: str  # "tlsa" | "sts" | "no-policy-found"
    strings: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()


class Recorder(Protocol):
    def record(self, policy: PolicyRef, *, mx_host: str, address: str | None, failure: str | None,
               detail: str = "") -> None:
        """One session's outcome: ``failure`` None for a TLS success, else its RFC 8460 result type."""
        ...


@dataclass(frozen=True, slots=True)
class HostPlan:
    host: MxHost
    policy: TlsPolicy
    label: str  # how TLS is decided, for the attempt's text: "DANE", "MTA-STS enforce", ""
    ref: PolicyRef
    ssl_context: ssl.SSLContext | None = None
    peer_check: PeerCheck | None = None
    auth: str = ""
    skip: str | None = None  # the host must not be used now, and why
    skip_failure: str = ""  # its RFC 8460 result type
    temporary_dns: bool = False  # skipped because a DNSSEC lookup failed (not a policy verdict)
    counted: bool = True  # False through a relayhost: the destination's own MX was never talked to


class TlsPlanner:
    """One per relay (see the module docstring). ``verify`` is the WebPKI context for MTA-STS hosts
    (``delivery.tls_ca_file`` or the system store)."""

    def __init__(
        self,
        default: TlsPolicy,
        *,
        dane: Dane | None = None,
        sts: MtaSts | None = None,
        verify: ssl.SSLContext | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.default = default
        self.dane = dane
        self.sts = sts
        self.verify = verify or verify_context()
        self.recorder = recorder

    async def plan(self, found: Route) -> list[HostPlan]:
        domain = found.domain
        sts_policy: StsPolicy | None = None
        if self.sts is not None and not found.relayhost:
            lookup = await self.sts.policy(domain)
            sts_policy = lookup.policy
            if lookup.failure is not None and self.recorder is not None:
                self.recorder.record(PolicyRef(domain, "sts"), mx_host="", address=None,
                                     failure=lookup.failure.result_type, detail=lookup.failure.detail)
        mx_secure: bool | str = False
        if self.dane is not None and not found.relayhost:
            mx_secure = await self.dane.mx_secure(domain, implicit=found.implicit_mx)
        plans = []
        for host in found.hosts:
            dane: DaneHost | None = None
            if self.dane is not None and not found.relayhost:
                if isinstance(mx_secure, str):
                    dane = DaneHost("failed", detail=f"MX lookup of {domain}: {mx_secure}")
                else:
                    dane = await self.dane.host(host.name, mx_secure=mx_secure)
            plan = self._host(domain, host, dane, sts_policy)
            plans.append(plan if not found.relayhost else dataclasses.replace(plan, counted=False))
        return plans

    def _host(self, domain: str, host: MxHost, dane: DaneHost | None, sts: StsPolicy | None) -> HostPlan:
        if dane is not None and dane.kind == "failed":
            ref = PolicyRef(domain, "tlsa")
            return HostPlan(host, TlsPolicy.VERIFY, "DANE", ref, skip=f"DANE: {dane.detail}",
                            skip_failure="dnssec-invalid", temporary_dns=True)
        if dane is not None and dane.tlsa is not None:
            tlsa = dane.tlsa
            ref = PolicyRef(domain, "tlsa", tuple(tlsa.texts()), (host.name,))
            digest = hashlib.sha256("\n".join(tlsa.texts()).encode()).hexdigest()[:16]
            check = tlsa.check if dane.kind == "usable" else None
            label = "DANE" if dane.kind == "usable" else "DANE (no usable TLSA record: TLS unauthenticated)"
            return HostPlan(host, TlsPolicy.VERIFY, label, ref, ssl_context=opportunistic_context(),
                            peer_check=check, auth=f"dane:{host.name}:{digest}")
        if sts is not None:
            ref = PolicyRef(domain, "sts", tuple(sts.strings()), sts.mx)
            label = f"MTA-STS {sts.mode}"
            if not sts.allows(host.name):
                why = (f"MTA-STS policy of {domain} ({sts.mode}) does not list MX host {host.name} "
                       f"(policy mx: {', '.join(sts.mx)})")
                if sts.mode == "enforce":
                    return HostPlan(host, TlsPolicy.VERIFY, label, ref, skip=why, skip_failure="validation-failure")
                if self.recorder is not None:
                    self.recorder.record(ref, mx_host=host.name, address=None, failure="validation-failure",
                                         detail=why)
            if sts.mode == "enforce":
                return HostPlan(host, TlsPolicy.VERIFY, label, ref, ssl_context=self.verify, auth=f"sts:{host.name}")
            return HostPlan(host, self.default, label, ref)
        return HostPlan(host, self.default, "", PolicyRef(domain, "no-policy-found"))

    def report(self, plan: HostPlan, *, address: str | None, tls: bool, failure: str | None, detail: str) -> None:
        """Count one session for TLS-RPT (only for destinations with a policy, and real TLS outcomes)."""
        if self.recorder is None or not plan.counted:
            return
        if failure is None and not tls:
            return  # clear text under "may": nothing to report for or against a policy
        self.recorder.record(plan.ref, mx_host=plan.host.name, address=address, failure=failure, detail=detail)


def describe(plans: Sequence[HostPlan]) -> str:
    """Why no host could be used, for the attempt timeline."""
    return "; ".join(p.skip for p in plans if p.skip)
