"""``atmos admin doctor``: the operator's own sending set-up, each check with what it found and the fix.

    report = await diagnose(cfg, lookup=DnsLookup.from_config(cfg))
    report.ok, [c.to_json() for c in report.checks]

Checks (names are stable, for scripts):

- ``ptr <ip>`` / ``fcrdns <ip>``: every ``dns.relay_ips`` address has a PTR record, and that name resolves
  back to the address (forward-confirmed reverse DNS: large receivers refuse mail without it, and the
  name should be the HELO name, ``smtp.hostname``).
- ``spf``, ``dkim <selector>``, ``dmarc``: the operator domain's records, checked by relay/dns/checks.py,
  the same code that checks members' domains. SPF must authorize ``dns.relay_ips`` (bounces and the
  relay's own mail come from the operator domain); every operator DKIM key must be published.
- ``mx``: the operator domain receives bounces and feedback reports (VERP), so its MX must point at the
  relay (``dns.mx_host``).
- ``mta-sts``, ``tls-rpt``: RFC 8461 / RFC 8460 records for the operator domain (recommended: warnings
  when missing). The MTA-STS policy is fetched like a sender would, and must list the MX host.
- ``certificate``: ``tls.cert_file`` parses, is valid now, names the HELO host, and does not expire within
  ``_EXPIRY_WARNING`` days.

Statuses as in relay/dns/checks.py: ok, warning, missing, wrong, error (DNS did not answer: try again).
``report.ok`` is true when nothing is missing, wrong or in error.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.reversename
import trio
from cryptography import x509

from relay.address import normalize_domain
from relay.delivery.mtasts import StsError, fetch_policy, parse_policy, parse_record
from relay.delivery.routing import Resolver
from relay.delivery.tlspolicy import verified_context
from relay.dns.checks import DnsLookup, DnsLookupError, Status, check_domain
from relay.dns.records import DnsRecord, dmarc_name, dmarc_value, mx_host
from relay.mail.dkimkeys import split_txt
from relay.mail.operatorkey import OperatorKeys
from relay.net.egress import Egress

if TYPE_CHECKING:
    from relay.config import Config

__all__ = ["Check", "DoctorReport", "diagnose"]

_EXPIRY_WARNING = 21  # days: ACME renews at 30 days left; three weeks left means renewal is failing


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    found: list[str]
    fix: str = ""
    expected: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "found": self.found, "expected": self.expected,
                "fix": self.fix}


@dataclass(frozen=True, slots=True)
class DoctorReport:
    domain: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status in ("ok", "warning") for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "ok": self.ok, "checks": [c.to_json() for c in self.checks]}

    def text(self) -> str:
        marks = {"ok": "ok  ", "warning": "warn", "missing": "FAIL", "wrong": "FAIL", "error": "ERR "}
        lines = [f"atmos doctor: {self.domain}"]
        for c in self.checks:
            found = ", ".join(c.found) if c.found else "nothing"
            lines.append(f"[{marks[c.status]}] {c.name}: found {found}")
            if c.fix:
                lines.append(f"       fix: {c.fix}")
        lines.append("all good" if self.ok else "problems found: see the fixes above")
        return "\n".join(lines)


async def diagnose(cfg: Config, *, lookup: DnsLookup, https_context: ssl.SSLContext | None = None,
                   https_port: int = 443) -> DoctorReport:
    """Every check of the module docstring; DNS failures are ``error`` results, never exceptions."""
    domain = normalize_domain(cfg.operator_domain)
    sections: list[list[Check]] = [[] for _ in range(5)]

    async def run(i: int, fn: Any, *args: Any) -> None:
        sections[i] = await fn(*args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, 0, _reverse_dns, cfg, lookup)
        nursery.start_soon(run, 1, _records, cfg, domain, lookup)
        nursery.start_soon(run, 2, _mx, cfg, domain, lookup)
        nursery.start_soon(run, 3, _policies, cfg, domain, lookup, https_context, https_port)
        nursery.start_soon(run, 4, _certificate, cfg)
    return DoctorReport(domain, [c for section in sections for c in section])


# ---- reverse DNS ----------------------------------------------------------------------------------


async def _reverse_dns(cfg: Config, lookup: DnsLookup) -> list[Check]:
    helo = normalize_domain(cfg.banner_host)
    if not cfg.dns.relay_ips:
        return [Check("ptr", "warning", [], "set dns.relay_ips to the relay's public sending addresses so the "
                      "reverse DNS, SPF and member records can be checked")]
    checks = []
    for text in cfg.dns.relay_ips:
        ip = ipaddress.ip_address(text.strip()).compressed
        reverse = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
        try:
            names = await lookup.ptr(ip)
        except DnsLookupError as exc:
            checks.append(Check(f"ptr {ip}", "error", [], f"could not look up {reverse} ({exc.detail}); try again"))
            continue
        if not names:
            checks.append(Check(f"ptr {ip}", "missing", [],
                                f"ask the owner of {ip} (your hosting provider) to set its reverse DNS (PTR at "
                                f"{reverse}) to {helo}", expected=helo))
            continue
        status: Status = "ok" if helo in names else "warning"
        fix = "" if status == "ok" else (f"the PTR names {', '.join(names)}, not the HELO name {helo}: set the PTR "
                                         f"to {helo} (or smtp.hostname to the PTR name)")
        checks.append(Check(f"ptr {ip}", status, names, fix, expected=helo))
        confirmed = []
        problem = ""
        for name in names[:4]:
            try:
                if ip in await lookup.addresses(name):
                    confirmed.append(name)
            except DnsLookupError as exc:
                problem = exc.detail
        if confirmed:
            checks.append(Check(f"fcrdns {ip}", "ok", confirmed, expected=f"{names[0]} -> {ip}"))
        elif problem:
            checks.append(Check(f"fcrdns {ip}", "error", [], f"could not look up {names[0]} ({problem}); try again"))
        else:
            checks.append(Check(f"fcrdns {ip}", "wrong", names,
                                f"{names[0]} does not resolve back to {ip}: publish an "
                                f"{'AAAA' if ':' in ip else 'A'} record {names[0]} -> {ip} "
                                "(forward-confirmed reverse DNS)", expected=f"{names[0]} -> {ip}"))
    return checks


# ---- SPF, DKIM, DMARC ------------------------------------------------------------------------------


def _spf_value(cfg: Config) -> str:
    if cfg.dns.relay_ips:
        terms = [f"ip{ipaddress.ip_address(t.strip()).version}:{ipaddress.ip_address(t.strip()).compressed}"
                 for t in cfg.dns.relay_ips]
        return "v=spf1 " + " ".join(terms) + " -all"
    if cfg.dns.spf_include:
        return f"v=spf1 include:{normalize_domain(cfg.dns.spf_include)} -all"
    return "v=spf1 a mx -all"


async def _records(cfg: Config, domain: str, lookup: DnsLookup) -> list[Check]:

    def txt(name: str, value: str, kind: Any, purpose: str) -> DnsRecord:
        return DnsRecord(name, "TXT", value, split_txt(value), purpose, True, kind)

    expected = [txt(domain, _spf_value(cfg), "spf", "SPF for the relay's own mail and bounces"),
                txt(dmarc_name(domain), dmarc_value(cfg), "dmarc", "DMARC for the operator domain")]
    keys = await trio.to_thread.run_sync(OperatorKeys(cfg.state_path, cfg.secret_key).load)
    selectors = []
    for key in keys:
        if key.retired is None:
            record = key.record(domain)
            expected.append(txt(record["name"], record["value"], "dkim-rsa", "operator DKIM key"))
            selectors.append(key.selector)
    report = await check_domain(domain, expected=expected, did="", lookup=lookup)
    checks = []
    for result in report.results:
        name = result.kind if result.kind != "dkim-rsa" else f"dkim {result.name.split('.', 1)[0]}"
        checks.append(Check(name, result.status, result.found, result.fix, expected=result.expected))
    if not selectors:
        checks.append(Check("dkim", "missing", [], "start the relay once (it creates the operator DKIM key), then "
                            "publish the record `atmos admin dkim show` prints"))
    return checks


# ---- MX ---------------------------------------------------------------------------------------------


async def _mx(cfg: Config, domain: str, lookup: DnsLookup) -> list[Check]:
    ours = mx_host(cfg)
    try:
        mx = await lookup.mx(domain)
    except DnsLookupError as exc:
        return [Check("mx", "error", [], f"could not look up the MX of {domain} ({exc.detail}); try again")]
    found = [f"{pref} {host or '.'}" for pref, host in mx]
    if any(host == ours for _, host in mx):
        return [Check("mx", "ok", found, expected=f"10 {ours}")]
    status: Status = "wrong" if mx else "missing"
    return [Check("mx", status, found, f"publish MX 10 {ours} for {domain}: bounces and feedback reports come back "
                  "to the operator domain (VERP), and without it they are lost", expected=f"10 {ours}")]


# ---- MTA-STS and TLS-RPT ----------------------------------------------------------------------------


async def _policies(cfg: Config, domain: str, lookup: DnsLookup, context: ssl.SSLContext | None,
                    port: int) -> list[Check]:

    ours = mx_host(cfg)
    checks: list[Check] = []
    policy_text = f"the lines 'version: STSv1', 'mode: enforce', 'mx: {ours}', 'max_age: 604800'"
    want_txt = "v=STSv1; id=<a new value each time the policy changes>"
    try:
        records = ["".join(s) for s in await lookup.txt(f"_mta-sts.{domain}")]
        sts_id = parse_record(records)
    except DnsLookupError as exc:
        checks.append(Check("mta-sts", "error", [], f"could not look up _mta-sts.{domain} ({exc.detail})"))
        sts_id = None
        records = []
    except StsError as exc:
        checks.append(Check("mta-sts", "wrong", records, f"{exc.detail}; publish one TXT {want_txt}"))
        sts_id = None
    if sts_id is None and not checks:
        checks.append(Check("mta-sts", "warning", records,
                            f"recommended (RFC 8461): publish TXT _mta-sts.{domain} \"{want_txt}\" and serve "
                            f"https://mta-sts.{domain}/.well-known/mta-sts.txt with: {policy_text}",
                            expected=want_txt))
    elif sts_id is not None:
        resolver = Resolver(cfg.dns.nameservers or cfg.delivery.nameservers, lifetime=lookup.lifetime)
        try:
            body = await fetch_policy(domain, egress=Egress.from_config(cfg, resolver=resolver),
                                      context=context or verified_context(cfg.delivery.tls_ca_file), port=port)
            policy = parse_policy(body, sts_id=sts_id)
        except StsError as exc:
            checks.append(Check("mta-sts", "wrong", records, f"{exc.detail} ({exc.result_type}): senders ignore "
                                f"the policy; serve https://mta-sts.{domain}/.well-known/mta-sts.txt "
                                f"as text/plain with: {policy_text}"))
        else:
            found = [f"id={sts_id}", f"mode {policy.mode}", *(f"mx {m}" for m in policy.mx)]
            if policy.mode != "none" and not policy.allows(ours):
                checks.append(Check("mta-sts", "wrong", found, f"the policy does not list the MX host {ours}: "
                                    "senders enforcing it will not deliver to you; add `mx: " + ours + "`"))
            elif policy.mode != "enforce":
                checks.append(Check("mta-sts", "warning", found, f"mode is {policy.mode}: switch to enforce once "
                                    "TLS reports show no failures"))
            else:
                checks.append(Check("mta-sts", "ok", found))
    want_rpt = f"v=TLSRPTv1; rua=mailto:tls-reports@{domain}"
    try:
        rpt = [v for v in ("".join(s) for s in await lookup.txt(f"_smtp._tls.{domain}")) if v.startswith("v=TLSRPTv1")]
    except DnsLookupError as exc:
        checks.append(Check("tls-rpt", "error", [], f"could not look up _smtp._tls.{domain} ({exc.detail})"))
        return checks
    if not rpt:
        checks.append(Check("tls-rpt", "warning", [], f"recommended (RFC 8460): publish TXT _smtp._tls.{domain} "
                            f"\"{want_rpt}\" to be told when senders cannot reach you over TLS", expected=want_rpt))
    elif len(rpt) > 1:
        checks.append(Check("tls-rpt", "wrong", rpt, "several v=TLSRPTv1 records: senders ignore all; keep one"))
    elif "rua=" not in rpt[0]:
        checks.append(Check("tls-rpt", "wrong", rpt, f"no rua= address; publish \"{want_rpt}\""))
    else:
        checks.append(Check("tls-rpt", "ok", rpt))
    return checks


# ---- the certificate --------------------------------------------------------------------------------


async def _certificate(cfg: Config) -> list[Check]:
    helo = normalize_domain(cfg.banner_host)
    if not cfg.tls.cert_file:
        return [Check("certificate", "warning", ["dev self-signed certificate"],
                      "set tls.cert_file and tls.key_file to a certificate from a public CA (e.g. Let's Encrypt) "
                      f"for {helo}")]
    path = Path(cfg.tls.cert_file)
    try:
        pem = await trio.to_thread.run_sync(path.read_bytes)
        cert = x509.load_pem_x509_certificates(pem)[0]
    except (OSError, ValueError, IndexError) as exc:
        return [Check("certificate", "wrong", [str(path)], f"cannot read a PEM certificate from {path}: {exc}")]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    now = datetime.datetime.now(datetime.UTC)
    expires = cert.not_valid_after_utc
    days = (expires - now).total_seconds() / 86400
    found = [f"names {', '.join(names) or '(none)'}", f"valid until {expires:%Y-%m-%d %H:%M} UTC ({days:.0f} days)"]
    covered = any(n == helo or (n.startswith("*.") and helo.partition(".")[2] == n[2:]) for n in names)
    if now < cert.not_valid_before_utc:
        return [Check("certificate", "wrong", found, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d}: "
                      "check the clock or the certificate")]
    if days <= 0:
        return [Check("certificate", "wrong", found, f"expired: renew the certificate for {helo} now")]
    if not covered:
        return [Check("certificate", "wrong", found, f"does not name the HELO host {helo}: senders verifying TLS "
                      "(MTA-STS, DANE-TA) and submission clients reject it; reissue it for that name")]
    if days < _EXPIRY_WARNING:
        return [Check("certificate", "warning", found, f"expires in {days:.0f} days: check that renewal works")]
    return [Check("certificate", "ok", found)]
