"""DKIM verification of inbound mail with dkimpy (RFC 6376 §6), and ARC sealing (RFC 8617).

The relay signs its own mail with its own signer (``relay.dkim.signer``); what other people sign,
dkimpy checks: a feedback-loop report is believed only when its DKIM signature verifies for a
configured source domain (``inbound.fbl_sources``), and a reply forwarded to a member carries an
``Authentication-Results`` field with what the relay found, sealed into an ARC set so the member's
mailbox can trust that result after SPF broke in forwarding (RFC 8617 §5.1).

dkimpy is synchronous and does its own DNS: each check runs in a worker thread (a small capacity
limiter bounds how many at once), and its TXT lookups go to the configured nameservers
(``delivery.nameservers``, the relay's resolver for the outside world, else ``dns.nameservers``;
Knot in the tests), never a search list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dkim
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import trio

from relay.net.resolver import stub_resolver

if TYPE_CHECKING:
    from relay.config import Config

log = logging.getLogger("relay.dkim")

MAX_SIGNATURES = 5  # more DKIM-Signature fields than this are not all checked (cost bound)
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,253}")  # what a d= or s= value may be to be written into our header


@dataclass(frozen=True, slots=True)
class DkimResult:
    domain: str  # d= (lower case)
    selector: str  # s=
    ok: bool
    detail: str = ""


class DkimVerifier:
    def __init__(self, nameservers: Sequence[str] = (), *, timeout: float = 5.0, concurrency: int = 2) -> None:
        self._resolver = stub_resolver(dns.resolver.Resolver, nameservers, lifetime=timeout)  # dkimpy: threads
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(concurrency)

    @classmethod
    def from_config(cls, cfg: Config) -> DkimVerifier:
        return cls(cfg.delivery.nameservers or cfg.dns.nameservers)

    def _txt(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        """dkimpy's ``dnsfunc``: the first TXT record of ``name``, its strings joined (RFC 6376 §3.6.2.2)."""
        try:
            answer = self._resolver.resolve(dns.name.from_text(name.decode("ascii", "replace")), dns.rdatatype.TXT,
                                            search=False, raise_on_no_answer=False)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return None
        for rdata in answer.rrset or ():
            return b"".join(rdata.strings)
        return None

    def verify_sync(self, data: bytes) -> list[DkimResult]:
        """Each DKIM-Signature of ``data`` (at most MAX_SIGNATURES), verified or not. Never raises."""
        try:
            d = dkim.DKIM(data, minkey=1024, timeout=int(self.timeout))
            count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
        except Exception as exc:  # unparsable mail: nothing verifies
            log.info("DKIM: message not parsable (%s)", exc)
            return []
        results = []
        for idx in range(min(count, MAX_SIGNATURES)):
            try:
                d = dkim.DKIM(data, minkey=1024, timeout=int(self.timeout))
                ok = bool(d.verify(idx=idx, dnsfunc=self._txt))
                detail = ""
            except Exception as exc:  # dkimpy raises for malformed signatures and keys
                ok, detail = False, str(exc)[:200]
            domain = (d.domain or b"").decode("ascii", "replace").lower()
            selector = (d.selector or b"").decode("ascii", "replace")
            results.append(DkimResult(domain, selector, ok, detail))
        return results

    async def verify(self, data: bytes) -> list[DkimResult]:
        return await trio.to_thread.run_sync(self.verify_sync, data, limiter=self._limiter)


def passes_for(results: Sequence[DkimResult], domains: Sequence[str]) -> str | None:
    """The first verified signing domain that is one of ``domains`` or under one (``d=`` alignment,
    relaxed as in RFC 7489 §3.1.1), else None."""
    wanted = [d.lower().rstrip(".") for d in domains]
    for r in results:
        if r.ok and any(r.domain == w or r.domain.endswith("." + w) for w in wanted):
            return r.domain
    return None


def authentication_results(authserv_id: str, results: Sequence[DkimResult]) -> bytes:
    """An ``Authentication-Results`` field (RFC 8601) with the DKIM results and ``arc=none``."""
    parts = [f"dkim={'pass' if r.ok else 'fail'} header.d={r.domain} header.s={r.selector}"
             for r in results if _TOKEN.fullmatch(r.domain) and _TOKEN.fullmatch(r.selector)]
    body = ";\r\n\t".join([*(parts or ["dkim=none"]), "arc=none"])
    return f"Authentication-Results: {authserv_id};\r\n\t{body}\r\n".encode()


def arc_seal(data: bytes, *, domain: str, selector: str, private_pem: bytes, authserv_id: str) -> bytes:
    """``data`` with an ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results) from
    dkimpy's ``arc_sign`` over our ``Authentication-Results`` for ``authserv_id`` (RFC 8617 §5.1).
    Unchanged when dkimpy cannot seal it (logged): the message still goes out, unsealed."""
    try:
        fields = dkim.arc_sign(data, selector.encode(), domain.encode(), private_pem, authserv_id.encode())
    except Exception as exc:  # a malformed message dkimpy cannot canonicalize
        log.warning("ARC: cannot seal a forwarded message (%s): sent unsealed", exc)
        return data
    return b"".join(fields) + data


__all__ = ["DkimResult", "DkimVerifier", "arc_seal", "authentication_results", "passes_for"]
