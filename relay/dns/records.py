"""The DNS records a member publishes for a sending domain (DESIGN §7). Pure: no I/O.

    records_for("example.com", did=..., verify_token=..., selector="atmosab12cd",
                rsa_txt=keys.rsa_txt, ed25519_txt=keys.ed25519_txt, cfg=cfg) -> [DnsRecord, ...]

gives, in this order::

    _atmos-challenge.<domain>  TXT "atmos-verify=<token>"                       ownership
    <sel>r._domainkey.<domain> TXT "v=DKIM1; k=rsa; p=<base64>"                  dkim-rsa
    <sel>e._domainkey.<domain> TXT "v=DKIM1; k=ed25519; p=<base64>"              dkim-ed25519
    <domain>                   TXT "v=spf1 ip4:<relay ip> -all"                  spf
    _dmarc.<domain>            TXT "v=DMARC1; p=reject; adkim=r; aspf=r; rua=mailto:postmaster@<operator>"
    <domain>                   MX  10 <mx host>                                  mx (optional)

SPF: ``include:<dns.spf_include>`` when configured, else ``ip4:``/``ip6:`` of ``dns.relay_ips``, else
``include:<operator_domain>`` (the operator's own SPF record). The MX host is ``dns.mx_host`` or the
operator domain.

``zone_file(records)`` renders them as zone-file text (absolute names, 255-byte TXT strings), for
docs, tests and the /account page; ``zone_line(record)`` renders one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from relay.address import normalize_domain
from relay.mail.dkimkeys import split_txt, zone_txt

if TYPE_CHECKING:
    from relay.config import Config

__all__ = [
    "CHALLENGE_LABEL",
    "CHALLENGE_PREFIX",
    "DEFAULT_TTL",
    "KINDS",
    "DnsRecord",
    "RecordKind",
    "challenge_name",
    "challenge_value",
    "dmarc_name",
    "dmarc_value",
    "mx_host",
    "records_for",
    "spf_value",
    "zone_file",
    "zone_line",
]

RecordKind: TypeAlias = Literal["ownership", "dkim-rsa", "dkim-ed25519", "spf", "dmarc", "mx"]
KINDS: tuple[RecordKind, ...] = ("ownership", "dkim-rsa", "dkim-ed25519", "spf", "dmarc", "mx")

CHALLENGE_LABEL = "_atmos-challenge"
CHALLENGE_PREFIX = "atmos-verify="
DEFAULT_TTL = 3600
MX_PREFERENCE = 10


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One record to publish.

    ``name`` is absolute without the trailing dot. ``value`` is the TXT text (the strings joined) or,
    for MX, ``"<preference> <host>"``. ``strings`` is how a TXT value must be split into character
    strings of at most 255 bytes (RFC 1035 §3.3.14) inside ONE record; empty for MX. ``kind`` says
    which check reads it (relay.dns.checks).
    """

    name: str
    type: Literal["TXT", "MX"]
    value: str
    strings: list[str]
    purpose: str
    required: bool
    kind: RecordKind

    def zone_line(self, *, origin: str | None = None, ttl: int | None = DEFAULT_TTL) -> str:
        return zone_line(self, origin=origin, ttl=ttl)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "value": self.value,
            "strings": list(self.strings),
            "zone": self.zone_line(),
            "purpose": self.purpose,
            "required": self.required,
            "kind": self.kind,
        }


def challenge_name(domain: str) -> str:
    return f"{CHALLENGE_LABEL}.{normalize_domain(domain)}"


def challenge_value(token: str) -> str:
    return CHALLENGE_PREFIX + token


def dmarc_name(domain: str) -> str:
    return f"_dmarc.{normalize_domain(domain)}"


def mx_host(cfg: Config) -> str:
    return normalize_domain(cfg.dns.mx_host or cfg.operator_domain)


def spf_value(cfg: Config) -> str:
    """The SPF record that authorizes the relay (RFC 7208); see the module docstring for the choice."""
    if cfg.dns.spf_include:
        return f"v=spf1 include:{normalize_domain(cfg.dns.spf_include)} -all"
    if cfg.dns.relay_ips:
        terms = []
        for text in cfg.dns.relay_ips:
            ip = ipaddress.ip_address(text.strip())
            terms.append(f"ip{ip.version}:{ip.compressed}")
        return "v=spf1 " + " ".join(terms) + " -all"
    return f"v=spf1 include:{normalize_domain(cfg.operator_domain)} -all"


def dmarc_value(cfg: Config) -> str:
    return f"v=DMARC1; p=reject; adkim=r; aspf=r; rua=mailto:postmaster@{normalize_domain(cfg.operator_domain)}"


def _txt(name: str, value: str, purpose: str, kind: RecordKind, *, required: bool = True) -> DnsRecord:
    return DnsRecord(name, "TXT", value, split_txt(value), purpose, required, kind)


def records_for(
    domain: str,
    *,
    did: str,
    verify_token: str,
    selector: str,
    rsa_txt: str,
    ed25519_txt: str,
    cfg: Config,
) -> list[DnsRecord]:
    """Every record of DESIGN §7 for one enrolled domain (``selector`` is the base selector)."""
    domain = normalize_domain(domain)
    mx = mx_host(cfg)
    return [
        _txt(challenge_name(domain), challenge_value(verify_token),
             f"proves that {domain} is controlled by {did}", "ownership"),
        _txt(f"{selector}r._domainkey.{domain}", rsa_txt,
             "DKIM public key (RSA) the relay signs your mail with", "dkim-rsa"),
        _txt(f"{selector}e._domainkey.{domain}", ed25519_txt,
             "DKIM public key (Ed25519) the relay signs your mail with", "dkim-ed25519"),
        _txt(domain, spf_value(cfg), "SPF: authorizes the relay to send mail for your domain", "spf"),
        _txt(dmarc_name(domain), dmarc_value(cfg),
             "DMARC: tells receivers to reject mail that fails DKIM and SPF alignment", "dmarc"),
        DnsRecord(domain, "MX", f"{MX_PREFERENCE} {mx}", [],
                  "optional: routes replies to the relay, which forwards them to your forward-to address",
                  False, "mx"),
    ]


def _owner(name: str, origin: str | None) -> str:
    if origin is None:
        return name + "."
    origin = normalize_domain(origin)
    if name == origin:
        return "@"
    if name.endswith("." + origin):
        return name[: -len(origin) - 1]
    return name + "."


def zone_line(record: DnsRecord, *, origin: str | None = None, ttl: int | None = DEFAULT_TTL) -> str:
    """``name [ttl] IN TYPE rdata``: absolute names (trailing dot), or relative to ``origin`` when given."""
    owner = _owner(record.name, origin)
    if record.type == "TXT":
        rdata = zone_txt(record.value)
    else:
        preference, _, host = record.value.partition(" ")
        rdata = f"{preference} {host.rstrip('.')}."
    ttl_text = f" {ttl}" if ttl is not None else ""
    return f"{owner}{ttl_text} IN {record.type} {rdata}"


def zone_file(
    records: list[DnsRecord], *, origin: str | None = None, ttl: int | None = DEFAULT_TTL, comments: bool = True
) -> str:
    """The records as zone-file text, one per line; optional records are marked in a comment."""
    lines = []
    if origin is not None:
        lines.append(f"$ORIGIN {normalize_domain(origin)}.")
    for record in records:
        if comments:
            lines.append(f"; {record.purpose}" + ("" if record.required else " (optional)"))
        lines.append(zone_line(record, origin=origin, ttl=ttl))
    return "\n".join(lines) + "\n"
