"""DANE for SMTP (RFC 7672): TLSA records from a trusted validating resolver, checked against the chain.

    dane = Dane(["127.0.0.1:5353"])                    # a local validator: its AD bit is trusted
    found = await dane.host("mail.example", mx_secure=await dane.mx_secure("example"))
    found.kind          # "none" (no DANE: insecure or no TLSA), "usable", "unusable", "failed"
    found.tlsa.check(chain_der)                        # None when the server's chain matches, else why

The AD bit (RFC 4035 §3.2.3) is only meaningful from a validator we trust; like Postfix
(``smtp_dns_support_level = dnssec``), that is the operator's local resolver, named in
``delivery.nameservers`` with ``delivery.dnssec = true`` (config refuses a non-loopback one).

Rules (RFC 7672):

- §2.2.1: the MX RRset must be secure (or, for an implicit MX, the domain's address records); an insecure
  one means no DANE for the destination (opportunistic TLS, or MTA-STS if the domain has a policy).
- §2.2.2: the MX host's address records must be secure, then TLSA at ``_25._tcp.<host>``. A TLSA lookup
  that fails (SERVFAIL: bogus, or the validator unreachable) is not "no records": the host is skipped
  (§2.1.1, it may be an attack hiding the records), so the message waits when every host is.
- §3.1.3: only DANE-TA(2) and DANE-EE(3) are usable for SMTP; a set with no usable record still
  demands TLS, unauthenticated (§2.2). DANE-EE checks the leaf only: no name, no expiry (§3.1.1);
  DANE-TA needs the trust anchor in the server's chain and a chain to it valid for the MX host name
  (§3.1.2; we check the name, as Postfix does, against the MX host).
- Selectors: full certificate (0) or SubjectPublicKeyInfo (1); matching: exact (0), SHA2-256 (1),
  SHA2-512 (2) (RFC 6698 §2.1). Unknown values make that record unusable (RFC 6698 §4.1).

Answers are cached for their TTL (capped), in a bounded table; failures are never cached.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import verification

from relay.net.resolver import parse_nameserver, stub_resolver

__all__ = ["Dane", "DaneHost", "Tlsa", "TlsaSet", "dnssec_nameservers_problem"]

DANE_TA, DANE_EE = 2, 3
_SELECTORS = (0, 1)
_MATCHING = (0, 1, 2)
_MAX_CACHE = 10_000
_CACHE_TTL = 300.0  # cap on reusing an answer, whatever its TTL
_MAX_RECORDS = 32  # TLSA records looked at per host (a hostile zone could publish thousands)


def dnssec_nameservers_problem(nameservers: Sequence[str]) -> str | None:
    """Why these servers' AD bit cannot be trusted (None when it can): they must be on this host."""
    if not nameservers:
        return "set delivery.nameservers to the local validating resolver (e.g. 127.0.0.1:53)"
    for ns in nameservers:
        try:
            address = parse_nameserver(ns).address
        except ValueError as exc:
            return str(exc)
        if not ipaddress.ip_address(address).is_loopback:
            return (f"{ns} is not on this host: the AD bit is only trustworthy from a local validator "
                    "(RFC 7672 §2.1.1; Postfix smtp_dns_support_level = dnssec)")
    return None


# The name is matched against the subjectAltName, which must be there; its criticality and every other
# leaf extension are left alone.
_EE_POLICY = verification.ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)


# ---- records and matching -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in (DANE_TA, DANE_EE) and self.selector in _SELECTORS and self.mtype in _MATCHING

    def text(self) -> str:
        """Presentation form, as TLS-RPT's policy-string wants it (RFC 8460 §4.4)."""
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    def matches(self, cert: x509.Certificate) -> bool:
        if self.selector == 0:
            content = cert.public_bytes(Encoding.DER)
        else:
            content = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if self.mtype == 1:
            content = hashlib.sha256(content).digest()
        elif self.mtype == 2:
            content = hashlib.sha512(content).digest()
        return content == self.data


@dataclass(frozen=True, slots=True)
class TlsaSet:
    """The TLSA RRset of one MX host (``_25._tcp.<host>``), DNSSEC-secure."""

    host: str
    records: tuple[Tlsa, ...]

    @property
    def usable(self) -> tuple[Tlsa, ...]:
        return tuple(r for r in self.records if r.usable)

    def texts(self) -> list[str]:
        return [r.text() for r in self.records]

    def check(self, chain_der: list[bytes], *, now: datetime.datetime | None = None) -> str | None:
        """None when the chain the server sent satisfies a usable record, else what went wrong."""
        if not chain_der:
            return "the server sent no certificate"
        try:
            chain = [x509.load_der_x509_certificate(der) for der in chain_der[:16]]
        except ValueError as exc:
            return f"the server's certificate does not parse ({exc})"
        leaf = chain[0]
        usable = self.usable
        if not usable:
            return None  # §2.2: TLS is mandatory, but there is nothing to authenticate against
        if any(r.usage == DANE_EE and r.matches(leaf) for r in usable):
            return None  # §3.1.1: the leaf is the key; names and dates are not checked
        anchors = [cert for cert in chain[1:] if any(r.usage == DANE_TA and r.matches(cert) for r in usable)]
        if any(r.usage == DANE_TA and r.matches(leaf) for r in usable):
            anchors.append(leaf)  # a self-issued leaf can be its own trust anchor
        if not anchors:
            return f"no certificate the server sent matches the TLSA records of {self.host} ({self._summary()})"
        problem = ""
        for anchor in anchors:
            try:
                # RFC 7672 §3.1.2 asks for a chain to the anchor and the name, not the CA/Browser profile:
                # the leaf's extensions are not held to WebPKI rules (private CAs rarely follow them).
                verifier = (
                    verification.PolicyBuilder()
                    .store(verification.Store([anchor]))
                    .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                        ee_policy=_EE_POLICY)
                    .time(now or datetime.datetime.now(datetime.UTC))
                    .build_server_verifier(x509.DNSName(self.host))
                )
                verifier.verify(leaf, chain[1:])
                return None
            except (verification.VerificationError, ValueError) as exc:
                problem = str(exc)
        return f"the certificate does not chain to the DANE-TA trust anchor for {self.host}: {problem}"

    def _summary(self) -> str:
        return ", ".join(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()[:16]}..." for r in self.usable[:4])


# ---- lookups --------------------------------------------------------------------------------------


Kind = Literal["none", "usable", "unusable", "failed"]


@dataclass(frozen=True, slots=True)
class DaneHost:
    """What DANE says about one MX host. ``none``: DANE does not apply (insecure, or no TLSA);
    ``usable``: authenticate with ``tlsa``; ``unusable``: TLSA present but none usable (TLS required,
    unauthenticated); ``failed``: the lookup failed, the host must not be used now (``detail``)."""

    kind: Kind
    tlsa: TlsaSet | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class _Lookup:
    status: Literal["secure", "insecure", "failed"]
    rdatas: tuple[object, ...] = ()
    ttl: float = 0.0
    detail: str = ""


class Dane:
    """TLSA lookups through the trusted validator (see the module docstring)."""

    def __init__(
        self,
        nameservers: Sequence[str],
        *,
        lifetime: float = 10.0,
        port: int = 25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problem = dnssec_nameservers_problem(nameservers)
        if problem is not None:
            raise ValueError(problem)
        resolver = stub_resolver(dns.asyncresolver.Resolver, nameservers, lifetime=lifetime)
        # RFC 6840 §5.7: AD in the query asks for the AD bit in the answer; DO (RFC 3225) as Postfix does.
        resolver.flags = dns.flags.RD | dns.flags.AD
        resolver.use_edns(0, dns.flags.DO, 1232)
        self._resolver = resolver
        self.lifetime = lifetime
        self.port = port
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, _Lookup]] = {}
        self.queries = 0

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        key = (name, int(rdtype))
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        result = await self._query(name, rdtype)
        if result.status != "failed":
            if len(self._cache) >= _MAX_CACHE:
                now = self._clock()
                for stale in [k for k, (t, _) in self._cache.items() if t <= now] or [next(iter(self._cache))]:
                    del self._cache[stale]
            self._cache[key] = (self._clock() + min(result.ttl, _CACHE_TTL), result)
        return result

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        self.queries += 1
        try:
            qname = dns.name.from_text(name)
            answer = await self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            # dnspython keeps the response(s) in the exception's kwargs (its accessors are untyped).
            responses: object = exc.kwargs.get("responses")
            response = next(iter(responses.values()), None) if isinstance(responses, dict) else None
            return _Lookup(_secure(response if isinstance(response, dns.message.Message) else None), ttl=60.0)
        except dns.exception.Timeout:
            return _Lookup("failed", detail=f"no answer from the DNSSEC validator within {self.lifetime:g} s")
        except dns.resolver.NoNameservers:
            return _Lookup("failed", detail="the DNSSEC validator answered SERVFAIL (bogus signatures, or unreachable)")
        except dns.exception.DNSException as exc:
            return _Lookup("failed", detail=f"DNS error ({exc})")
        rdatas = tuple(answer.rrset) if answer.rrset is not None else ()
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 60.0
        return _Lookup(_secure(answer.response), rdatas, ttl)

    async def mx_secure(self, domain: str, *, implicit: bool = False) -> bool | str:
        """True when the domain's MX RRset (its address records for an implicit MX) validated;
        False when insecure; a string saying why when the lookup failed."""
        if implicit:
            found = await self._lookup(domain, dns.rdatatype.A)
        else:
            found = await self._lookup(domain, dns.rdatatype.MX)
        if found.status == "failed":
            return found.detail
        return found.status == "secure"

    async def host(self, host: str, *, mx_secure: bool) -> DaneHost:
        """DANE for one MX host (RFC 7672 §2.2.2)."""
        if not mx_secure:
            return DaneHost("none", detail="the MX records are not DNSSEC-signed")
        address = await self._lookup(host, dns.rdatatype.A)
        if address.status == "failed":
            return DaneHost("failed", detail=f"{host}: {address.detail}")
        if address.status != "secure":
            return DaneHost("none", detail=f"the address records of {host} are not DNSSEC-signed")
        name = f"_{self.port}._tcp.{host}"
        found = await self._lookup(name, dns.rdatatype.TLSA)
        if found.status == "failed":
            return DaneHost("failed", detail=f"TLSA lookup of {name}: {found.detail}")
        if found.status != "secure" or not found.rdatas:
            return DaneHost("none", detail=f"no DNSSEC-signed TLSA records at {name}")
        records = tuple(
            Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))  # type: ignore[attr-defined]
            for r in found.rdatas[:_MAX_RECORDS]
        )
        tlsa = TlsaSet(host, records)
        return DaneHost("usable" if tlsa.usable else "unusable", tlsa)


def _secure(response: dns.message.Message | None) -> Literal["secure", "insecure"]:
    if response is not None and response.flags & dns.flags.AD:
        return "secure"
    return "insecure"
