"""Check what a member domain publishes against what it should (DESIGN §7).

    report = await check_domain("example.com", expected=records_for(...), did=did, lookup=DnsLookup(ns))
    report.ownership_ok, report.dkim_ok, report.spf_ok, report.dmarc_ok, report.all_ok, report.to_json()

One ``CheckResult`` per expected record, each with what was found, what was expected and a concrete
fix. Statuses: ``ok``; ``missing`` (nothing there); ``wrong`` (something there, but it does not do
the job); ``warning`` (works, could be better: never blocks anything); ``error`` (DNS did not answer:
"try again", and the caller must not treat it as a verdict).

- ownership: a TXT at ``_atmos-challenge.<domain>`` equal to ``atmos-verify=<token>``; several TXT
  records may sit there, the strings of one record are concatenated (RFC 7208 §3.3 style).
- DKIM (RFC 6376 §3.6.1, RFC 8463): the selector's TXT parses as a tag list, ``v=DKIM1`` first if
  present, ``k=`` matches, ``p=`` is the relay's key. A key split over several TXT *records* (instead
  of several strings of one record), an empty ``p=`` (revoked), a truncated key, quotes taken
  literally by a DNS provider and stray extra records each get their own fix.
- SPF (RFC 7208): exactly one ``v=spf1`` record (§4.5), no ``+all``, at most 10 DNS-querying terms
  counted through includes and redirects (§4.6.4), and the relay's senders (the expected record's
  ``ip4:``/``ip6:`` addresses or ``include:`` domains) evaluate to pass. The evaluation follows
  ``ip4``, ``ip6``, ``include``, ``redirect`` and ``all`` in order; ``a``, ``mx``, ``ptr`` and ``exists``
  are counted but not resolved (treated as not matching). ``?all`` or no ``all`` is a warning.
- DMARC (RFC 7489): one ``v=DMARC1`` record at ``_dmarc.<domain>``, else inherited from a parent
  domain down to two labels (``sp=`` then applies, §6.3); ``p=none`` is ``wrong``.
- MX (optional): pointing at the relay's host is ``ok``; anything else is a ``warning``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.reversename
import trio

from relay.address import normalize_domain
from relay.dns.records import CHALLENGE_PREFIX, DnsRecord, RecordKind
from relay.mail.dkimkeys import zone_txt
from relay.net.resolver import stub_resolver

if TYPE_CHECKING:
    from relay.config import Config

__all__ = [
    "DEFAULT_LIFETIME",
    "SPF_LOOKUP_LIMIT",
    "CheckResult",
    "DnsLookup",
    "DnsLookupError",
    "DomainReport",
    "Status",
    "TxtLookup",
    "check_domain",
]

Status: TypeAlias = Literal["ok", "missing", "wrong", "error", "warning"]

DEFAULT_LIFETIME = 5.0
SPF_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4
_MAX_DEPTH = 10  # include/redirect nesting followed (loops hit the lookup limit long before)
_COUNT_CAP = 100  # stop counting SPF lookups here (the record is far over the limit anyway)


# ---- lookups ------------------------------------------------------------------------------------


class DnsLookupError(Exception):
    """The DNS gave no usable answer (SERVFAIL, timeout, unreachable): a temporary condition."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


class TxtLookup(Protocol):
    """What the checker needs from DNS. A name that does not exist or has no such records gives
    ``[]``; a failed lookup raises ``DnsLookupError``."""

    async def txt(self, name: str) -> list[tuple[str, ...]]:
        """Every TXT record at ``name``, each as its character strings (in wire order)."""
        ...

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """Every MX record at ``name`` as (preference, host); host lowercase, no trailing dot
        (``""`` for the null MX target ``.``)."""
        ...


class DnsLookup:
    """``TxtLookup`` on dnspython's async stub resolver (runs under Trio through sniffio).

    ``nameservers``: ``"ip"`` or ``"ip:port"``; empty uses the system resolver (/etc/resolv.conf).
    ``lifetime`` bounds one lookup, retries included. No cache: a check must see the zone as it is now.
    """

    def __init__(self, nameservers: Sequence[str] = (), *, lifetime: float = DEFAULT_LIFETIME) -> None:
        resolver = stub_resolver(dns.asyncresolver.Resolver, nameservers, lifetime=lifetime)
        self._resolver = resolver
        self.lifetime = lifetime
        self.queries = 0  # lookups started, for tests and metrics

    @property
    def nameservers(self) -> tuple[str, ...]:
        """The servers asked, as "address@port" (for logs and the CLI)."""
        servers = self._resolver.nameservers
        return tuple(f"{ns.address}@{ns.port}" for ns in servers if isinstance(ns, dns.nameserver.Do53Nameserver))

    @classmethod
    def from_config(cls, cfg: Config, *, lifetime: float = DEFAULT_LIFETIME) -> DnsLookup:
        """``dns.nameservers``, else ``delivery.nameservers``, else the system resolver."""
        return cls(cfg.dns.nameservers or cfg.delivery.nameservers, lifetime=lifetime)

    async def _answer(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        self.queries += 1
        try:
            qname = dns.name.from_text(name)
            return await self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.exception.Timeout:
            raise DnsLookupError(name, f"no DNS answer within {self.lifetime:g} s") from None
        except dns.resolver.NoNameservers:
            if not self._resolver.nameservers:
                raise DnsLookupError(name, "no DNS server is configured") from None
            raise DnsLookupError(name, "the DNS servers failed to answer (SERVFAIL or refused)") from None
        except dns.exception.DNSException as exc:
            raise DnsLookupError(name, f"DNS error ({exc})") from None

    async def txt(self, name: str) -> list[tuple[str, ...]]:
        answer = await self._answer(name, dns.rdatatype.TXT)
        if answer is None or answer.rrset is None:
            return []
        return [
            tuple(s.decode("utf-8", "replace") for s in rdata.strings)
            for rdata in answer.rrset
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
        ]

    async def ptr(self, address: str) -> list[str]:
        """The PTR names of an IP address (lowercase, no trailing dot)."""
        answer = await self._answer(dns.reversename.from_address(address).to_text(), dns.rdatatype.PTR)
        if answer is None or answer.rrset is None:
            return []
        return [rdata.to_text().lower().rstrip(".") for rdata in answer.rrset]

    async def addresses(self, name: str) -> list[str]:
        """The A and AAAA addresses of a name (for forward-confirmed reverse DNS)."""
        found: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answer = await self._answer(name, rdtype)
            if answer is not None and answer.rrset is not None:
                found += [ipaddress.ip_address(rdata.to_text()).compressed for rdata in answer.rrset]
        return found

    async def mx(self, name: str) -> list[tuple[int, str]]:
        answer = await self._answer(name, dns.rdatatype.MX)
        if answer is None or answer.rrset is None:
            return []
        return sorted(
            (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower().rstrip("."))
            for rdata in answer.rrset
            if isinstance(rdata, dns.rdtypes.ANY.MX.MX)
        )


class _Memo:
    """One check's view of DNS: each name is looked up once (failures included)."""

    def __init__(self, lookup: TxtLookup) -> None:
        self._lookup = lookup
        self._txt: dict[str, list[str] | DnsLookupError] = {}

    async def txt(self, name: str) -> list[str]:
        """The TXT records at ``name``, each record's strings concatenated (RFC 7208 §3.3)."""
        key = name.lower().rstrip(".")
        if key not in self._txt:
            try:
                self._txt[key] = ["".join(strings) for strings in await self._lookup.txt(key)]
            except DnsLookupError as exc:
                self._txt[key] = exc
        result = self._txt[key]
        if isinstance(result, DnsLookupError):
            raise result
        return result

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self._lookup.mx(name.lower().rstrip("."))


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str  # the DNS name the record belongs at
    kind: RecordKind
    status: Status
    found: list[str]  # the values found (TXT: each record's strings concatenated; MX: "pref host")
    expected: str  # the value to publish
    fix: str  # what to do, for a human; "" when there is nothing to do
    required: bool = True
    source: str = ""  # the name ``found`` was read from when not ``name`` (inherited DMARC)
    note: str = ""  # extra information that needs no action

    @property
    def passed(self) -> bool:
        """Good enough for verification: ok, or a mere warning."""
        return self.status in ("ok", "warning")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "found": list(self.found),
            "expected": self.expected,
            "fix": self.fix,
            "required": self.required,
            "source": self.source or self.name,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class DomainReport:
    domain: str
    did: str
    results: list[CheckResult]
    records: list[DnsRecord] = field(default_factory=list)  # what to publish, for display
    checked_at: float = 0.0  # unix time
    # Filled in by relay.dns.verifier after the states were written; None from check_domain alone.
    state: str | None = None
    dkim_state: str | None = None

    def result(self, kind: RecordKind) -> CheckResult | None:
        return next((r for r in self.results if r.kind == kind), None)

    def _passed(self, *kinds: RecordKind) -> bool:
        found = [self.result(k) for k in kinds]
        return all(r is not None and r.passed for r in found)

    @property
    def ownership_ok(self) -> bool:
        return self._passed("ownership")

    @property
    def dkim_ok(self) -> bool:
        return self._passed("dkim-rsa", "dkim-ed25519")

    @property
    def spf_ok(self) -> bool:
        return self._passed("spf")

    @property
    def dmarc_ok(self) -> bool:
        return self._passed("dmarc")

    @property
    def all_ok(self) -> bool:
        """Every required record is in place (the optional MX never counts)."""
        return self.ownership_ok and self.dkim_ok and self.spf_ok and self.dmarc_ok

    @property
    def dns_error(self) -> bool:
        """Some required lookup failed: the report is incomplete, try again later."""
        return any(r.status == "error" and r.required for r in self.results)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps`` it)."""
        return {
            "domain": self.domain,
            "did": self.did,
            "checked_at": self.checked_at,
            "ownership_ok": self.ownership_ok,
            "dkim_ok": self.dkim_ok,
            "spf_ok": self.spf_ok,
            "dmarc_ok": self.dmarc_ok,
            "all_ok": self.all_ok,
            "dns_error": self.dns_error,
            "state": self.state,
            "dkim_state": self.dkim_state,
            "results": [r.to_json() for r in self.results],
            "records": [r.to_json() for r in self.records],
        }


# ---- the check ----------------------------------------------------------------------------------


async def check_domain(
    domain: str, *, expected: Sequence[DnsRecord], did: str, lookup: TxtLookup
) -> DomainReport:
    """Check every record in ``expected`` (from ``records_for``), concurrently. Never raises for DNS
    trouble: a failed lookup is a result with status ``error``."""
    domain = normalize_domain(domain)
    memo = _Memo(lookup)
    results: list[CheckResult | None] = [None] * len(expected)

    async def one(i: int, record: DnsRecord) -> None:
        results[i] = await _check(domain, record, memo)

    async with trio.open_nursery() as nursery:
        for i, record in enumerate(expected):
            nursery.start_soon(one, i, record)
    return DomainReport(
        domain=domain,
        did=did,
        results=[r for r in results if r is not None],
        records=list(expected),
        checked_at=time.time(),
    )


async def _check(domain: str, record: DnsRecord, memo: _Memo) -> CheckResult:
    try:
        if record.kind == "ownership":
            return await _check_ownership(domain, record, memo)
        if record.kind in ("dkim-rsa", "dkim-ed25519"):
            return await _check_dkim(domain, record, memo)
        if record.kind == "spf":
            return await _check_spf(domain, record, memo)
        if record.kind == "dmarc":
            return await _check_dmarc(domain, record, memo)
        return await _check_mx(record, memo)
    except DnsLookupError as exc:
        return _result(
            record, "error", [],
            f"could not look up {exc.name} ({exc.detail}); try again in a few minutes. "
            "If it persists, check that your domain's nameservers answer.",
        )


def _result(record: DnsRecord, status: Status, found: list[str], fix: str, **extra: str) -> CheckResult:
    fix = fix[:1].upper() + fix[1:]  # a sentence
    return CheckResult(record.name, record.kind, status, found, record.value, fix, record.required, **extra)


def _publish(record: DnsRecord) -> str:
    """'publish a TXT record at NAME with the value ...' including how to split a long value."""
    text = f"publish ONE {record.type} record at {record.name} with the value {record.value}"
    if len(record.strings) > 1:
        text += (
            f" (longer than 255 bytes: enter it as {len(record.strings)} quoted strings of the same record,"
            f" {zone_txt(record.value)}, or paste it whole if your DNS provider splits long values itself)"
        )
    return text


async def _misplaced(record: DnsRecord, domain: str, memo: _Memo, want: str | None = None) -> str:
    """Many DNS providers append the domain to the name typed in: look for NAME.<domain> too."""
    doubled = f"{record.name}.{domain}"
    try:
        values = await memo.txt(doubled)
    except DnsLookupError:
        return ""
    if values and (want is None or any(want in v for v in values)):
        relative = record.name[: -len(domain) - 1] if record.name.endswith("." + domain) else "@"
        return (
            f" A record was found at {doubled} instead: your DNS provider adds the domain to the name, so"
            f" enter only {relative!r} as the name."
        )
    return ""


# ---- ownership ------------------------------------------------------------------------------------


async def _check_ownership(domain: str, record: DnsRecord, memo: _Memo) -> CheckResult:
    values = await memo.txt(record.name)
    if any(v.strip() == record.value for v in values):
        return _result(record, "ok", values, "")
    challenges = [v for v in values if v.strip().startswith(CHALLENGE_PREFIX)]
    if challenges:
        return _result(
            record, "wrong", values,
            f"the TXT record at {record.name} holds a different token ({challenges[0].strip()}); the token is"
            f" bound to your account (DID), so replace the value with {record.value}.",
        )
    fix = _publish(record) + "."
    try:
        if any(v.strip() == record.value for v in await memo.txt(domain)):
            fix += f" The value was found at {domain} itself; it must be at {record.name}."
    except DnsLookupError:
        pass
    fix += await _misplaced(record, domain, memo, record.value)
    return _result(record, "missing", values, fix)


# ---- DKIM ---------------------------------------------------------------------------------------


def _tags(text: str) -> tuple[list[tuple[str, str]], str]:
    """RFC 6376 §3.2 tag list -> ([(name, value)], error)."""
    tags: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name:
            return tags, f"{part.strip()!r} is not a tag=value pair"
        if name in seen:
            return tags, f"the tag {name}= appears twice"
        seen.add(name)
        tags.append((name, value.strip()))
    return tags, ""


_WS = re.compile(r"\s+")


def _dkim_problem(text: str, name: str, expected_k: str, expected_p: str) -> tuple[Status, str] | None:
    """Why one DKIM record value is not the relay's key, or None when it is."""
    tags, error = _tags(text)
    if error:
        return "wrong", f"the TXT record at {name} is not a DKIM key record ({error})."
    names = [n for n, _ in tags]
    values = dict(tags)
    if "v" in values and names[0] != "v":
        return "wrong", f"the tag v=DKIM1 must come first in the record at {name} (RFC 6376 §3.6.1)."
    if "v" in values and values["v"] != "DKIM1":
        return "wrong", f"the record at {name} has v={values['v']} instead of v=DKIM1."
    if "p" not in values:
        return "wrong", f"the record at {name} has no p= tag, so it holds no key."
    p = _WS.sub("", values["p"])
    if not p:
        return "wrong", (
            f"the record at {name} has an empty p=, which revokes the key (RFC 6376 §3.6.1); receivers reject"
            f" every signature. Publish the relay's key."
        )
    k = values.get("k", "rsa").strip().lower()
    if k != expected_k:
        return "wrong", (
            f"the record at {name} says k={k} but this selector holds the relay's {expected_k} key;"
            f" set k={expected_k}."
        )
    services = values.get("s", "*").replace(" ", "").split(":")
    if "*" not in services and "email" not in services:
        return "wrong", f"the record at {name} restricts the key to s={values['s']}; remove s= or set s=email."
    if '"' in p or "\\" in p:
        return "wrong", (
            f"the p= value at {name} contains quote or backslash characters: your DNS provider stored the"
            f" quotes literally. Enter the value without quotes (or as separate strings if the provider asks)."
        )
    if p == expected_p:
        return None
    if expected_p.startswith(p):
        return "wrong", (
            f"the key at {name} is cut short ({len(p)} of {len(expected_p)} base64 characters): part of the"
            f" value was lost, often the second 255-byte string."
        )
    try:
        same = base64.b64decode(p, validate=True) == base64.b64decode(expected_p)
    except (binascii.Error, ValueError):
        return "wrong", f"the p= value at {name} is not valid base64 (mangled when pasted?)."
    if same:
        return None
    return "wrong", (
        f"the published key is not the one the relay signs with; replace p=...{p[-12:]} at {name} with the"
        f" relay's key, p=...{expected_p[-12:]}."
    )


async def _check_dkim(domain: str, record: DnsRecord, memo: _Memo) -> CheckResult:
    values = await memo.txt(record.name)
    exp = dict(_tags(record.value)[0])
    expected_k, expected_p = exp.get("k", "rsa").lower(), _WS.sub("", exp.get("p", ""))
    if len(record.strings) == 1:
        whole = f" The value must be: {record.value}"
    else:
        whole = f" The value must be, as {len(record.strings)} strings of ONE record: {zone_txt(record.value)}"

    def problem(text: str) -> tuple[Status, str] | None:
        return _dkim_problem(text, record.name, expected_k, expected_p)

    if not values:
        fix = _publish(record) + "." + await _misplaced(record, domain, memo)
        return _result(record, "missing", values, fix)
    if len(values) == 1:
        found = problem(values[0])
        if found is None:
            return _result(record, "ok", values, "")
        return _result(record, found[0], values, found[1] + whole)
    good = [v for v in values if problem(v) is None]
    if good:
        return _result(
            record, "wrong", values,
            f"there are {len(values)} TXT records at {record.name}; receivers may pick any one of them"
            f" (RFC 6376 §3.6.2.2), so delete every record except the one with the relay's key.",
        )
    orders = itertools.permutations(values) if len(values) <= 5 else iter([tuple(values)])
    if any(problem("".join(order)) is None for order in orders):
        return _result(
            record, "wrong", values,
            f"the key is split into {len(values)} separate TXT records at {record.name} instead of several"
            f" strings of one record; delete them and publish ONE TXT record whose value is split into"
            f" strings: {zone_txt(record.value)}",
        )
    first = problem(values[0])
    detail = f" {first[1]}{whole}" if first else ""
    return _result(
        record, "wrong", values,
        f"there are {len(values)} TXT records at {record.name} and none is the relay's key; delete them and"
        f" {_publish(record)}.{detail}",
    )


# ---- SPF ----------------------------------------------------------------------------------------

_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_MODIFIER = re.compile(r"([a-z][a-z0-9_.\-]*)=(.*)", re.IGNORECASE)
_MECHANISM = re.compile(r"([+\-~?]?)([a-z][a-z0-9]*)(.*)", re.IGNORECASE)
_LOOKUP_TERMS = {"include", "a", "mx", "ptr", "exists"}
_RESULT = {"+": "pass", "": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass(frozen=True, slots=True)
class _Term:
    qualifier: str  # "", "+", "-", "~", "?" (mechanisms only)
    name: str  # lowercase mechanism or modifier name
    arg: str  # ip4/ip6 network, include/exists domain, a/mx domain and cidr, or the modifier's value
    modifier: bool
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class _Virtual:
    """A sender known only as what ``include:<target>`` authorizes; target "" is a stranger."""

    target: str


_Sender: TypeAlias = _IP | _Virtual


class _SpfSyntax(ValueError):
    pass


def _is_spf(text: str) -> bool:
    low = text.strip().lower()
    return low == "v=spf1" or low.startswith("v=spf1 ")


def _parse_spf(text: str) -> list[_Term]:
    terms: list[_Term] = []
    for token in text.split()[1:]:
        mod = _MODIFIER.fullmatch(token)
        if mod:
            name = mod.group(1).lower()
            if name in ("redirect", "exp") and any(t.modifier and t.name == name for t in terms):
                raise _SpfSyntax(f"{name}= appears twice")
            terms.append(_Term("", name, mod.group(2), modifier=True))
            continue
        mech = _MECHANISM.fullmatch(token)
        if not mech:
            raise _SpfSyntax(f"{token!r} is not a valid term")
        qualifier, name, rest = mech.group(1), mech.group(2).lower(), mech.group(3)
        if name not in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
            raise _SpfSyntax(f"unknown mechanism {token!r}")
        if rest and rest[0] not in ":/":
            raise _SpfSyntax(f"{token!r} is not a valid term")
        arg = rest[1:] if rest.startswith(":") else rest
        network = None
        if name == "all" and rest:
            raise _SpfSyntax(f"{token!r}: 'all' takes no argument")
        if name in ("include", "exists") and not rest.startswith(":"):
            raise _SpfSyntax(f"{token!r} needs a domain ({name}:example.com)")
        if name in ("ip4", "ip6"):
            try:
                network = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise _SpfSyntax(f"{token!r}: {arg!r} is not an IP address or network") from None
            if network.version != int(name[2]):
                raise _SpfSyntax(f"{token!r}: not an IPv{name[2]} address")
        terms.append(_Term(qualifier, name, arg, modifier=False, network=network))
    return terms


def _target(term: _Term) -> str | None:
    """The domain an include/redirect names, or None when it uses macros (not followed)."""
    return None if "%" in term.arg else term.arg.lower().rstrip(".")


class _Spf:
    """One SPF record with everything it includes, loaded for counting and evaluation."""

    def __init__(self, memo: _Memo) -> None:
        self._memo = memo
        self.parsed: dict[str, list[_Term] | None] = {}  # None: no usable record there (permerror)
        self.lookups = 0
        self.problems: list[str] = []  # permanent errors found in included records
        self.error: DnsLookupError | None = None

    async def _load(self, domain: str, via: str) -> list[_Term] | None:
        if domain in self.parsed:
            return self.parsed[domain]
        self.parsed[domain] = None
        try:
            records = [v for v in await self._memo.txt(domain) if _is_spf(v)]
        except DnsLookupError as exc:
            self.error = self.error or exc
            return None
        if not records:
            self.problems.append(f"{via} names {domain}, which has no SPF record: receivers return permerror.")
            return None
        if len(records) > 1:
            self.problems.append(f"{via}: {domain} has {len(records)} SPF records, a permanent error (RFC 7208 §4.5).")
            return None
        try:
            self.parsed[domain] = _parse_spf(records[0])
        except _SpfSyntax as exc:
            self.problems.append(f"{via}: the SPF record of {domain} is invalid ({exc}).")
        return self.parsed[domain]

    async def count(self, domain: str, terms: list[_Term], depth: int = 0) -> None:
        """RFC 7208 §4.6.4: include, a, mx, ptr, exists and redirect each cost one lookup, recursively."""
        for term in terms:
            if self.lookups > _COUNT_CAP:
                return
            if term.modifier or term.name not in _LOOKUP_TERMS:
                continue
            self.lookups += 1
            target = _target(term)
            if term.name == "include" and target and depth < _MAX_DEPTH:
                sub = await self._load(target, f"the term include:{target} in the record of {domain}")
                if sub is not None:
                    await self.count(target, sub, depth + 1)
        redirect = _redirect(terms)
        if redirect is not None and self.lookups <= _COUNT_CAP:
            self.lookups += 1
            target = _target(redirect)
            if target and depth < _MAX_DEPTH:
                sub = await self._load(target, f"the term redirect={target} in the record of {domain}")
                if sub is not None:
                    await self.count(target, sub, depth + 1)

    def evaluate(self, domain: str, sender: _Sender, depth: int = 0) -> str:
        """check_host() for a sender, limited to ip4/ip6/include/redirect/all (RFC 7208 §4.6, §5)."""
        terms = self.parsed.get(domain)
        if terms is None or depth > _MAX_DEPTH:
            return "permerror"
        for term in terms:
            if term.modifier:
                continue
            match = False
            if term.network is not None:
                match = not isinstance(sender, _Virtual) and sender in term.network
            elif term.name == "include":
                target = _target(term)
                if isinstance(sender, _Virtual) and target == sender.target:
                    match = True
                elif target:
                    sub = self.evaluate(target, sender, depth + 1)
                    if sub == "permerror":
                        return sub
                    match = sub == "pass"
            elif term.name == "all":
                match = True
            if match:
                return _RESULT[term.qualifier]
        redirect = _redirect(terms)
        if redirect is not None:
            target = _target(redirect)
            return self.evaluate(target, sender, depth + 1) if target else "neutral"
        return "neutral"


def _redirect(terms: list[_Term]) -> _Term | None:
    """The redirect= modifier, ignored when the record has an 'all' mechanism (RFC 7208 §6.1)."""
    if any(t.name == "all" and not t.modifier for t in terms):
        return None
    return next((t for t in terms if t.modifier and t.name == "redirect"), None)


def _spf_senders(expected: str) -> list[tuple[str, _Sender]]:
    senders: list[tuple[str, _Sender]] = []
    for term in _parse_spf(expected):
        if term.network is not None:
            senders.append((f"ip{term.network.version}:{term.arg}", term.network.network_address))
        elif term.name == "include":
            senders.append((f"include:{term.arg}", _Virtual(_target(term) or "")))
    return senders


def _valid_term(token: str) -> bool:
    try:
        _parse_spf("v=spf1 " + token)
    except _SpfSyntax:
        return False
    return True


def _suggest_spf(records: list[str], expected: str) -> str:
    """One record: the member's own terms (minus 'all' and redirect), the relay's, then -all (~all kept)."""
    keep: list[str] = []
    alls: set[str] = set()
    for text in sorted(records):  # DNS returns records in any order: keep the suggestion stable
        for token in text.split()[1:]:
            low = token.lower()
            if low.lstrip("+-~?") == "all":
                alls.add(low)
            elif not low.startswith("redirect=") and low not in (k.lower() for k in keep) and _valid_term(token):
                keep.append(token)
    for token in expected.split()[1:]:
        low = token.lower()
        if low.lstrip("+-~?") != "all" and low not in (k.lower() for k in keep):
            keep.append(token)
    final = "~all" if "~all" in alls and "-all" not in alls else "-all"
    return "v=spf1 " + " ".join([*keep, final])


async def _check_spf(domain: str, record: DnsRecord, memo: _Memo) -> CheckResult:
    spf_records = [v for v in await memo.txt(domain) if _is_spf(v)]
    if not spf_records:
        return _result(record, "missing", [], _publish(record) + ".")
    suggestion = _suggest_spf(spf_records, record.value)
    if len(spf_records) > 1:
        return _result(
            record, "wrong", spf_records,
            f"there are {len(spf_records)} SPF records (v=spf1) at {domain}; RFC 7208 §4.5 makes that a"
            f" permanent error (permerror), so SPF fails for all your mail. Merge them into ONE record,"
            f" e.g. {suggestion}",
        )
    try:
        terms = _parse_spf(spf_records[0])
    except _SpfSyntax as exc:
        return _result(
            record, "wrong", spf_records,
            f"the SPF record at {domain} is invalid ({exc}); receivers treat it as a permanent error."
            f" Replace it, e.g. with {suggestion}",
        )
    spf = _Spf(memo)
    spf.parsed[domain] = terms
    await spf.count(domain, terms)
    if spf.error is not None:
        raise spf.error
    wrong: list[str] = list(spf.problems)
    warnings: list[str] = []
    stranger = spf.evaluate(domain, _Virtual(""))
    if stranger == "pass":
        wrong.append(
            f"the record lets every server on the internet send as {domain} ('+all', or an 'all' without"
            f" qualifier, possibly in an included record); use -all or ~all: {suggestion}"
        )
    if spf.lookups > SPF_LOOKUP_LIMIT:
        count = f"{spf.lookups}" if spf.lookups <= _COUNT_CAP else f"more than {_COUNT_CAP}"
        wrong.append(
            f"too many DNS lookups: evaluating the record takes {count} (include, a, mx, ptr, exists and"
            f" redirect count, through every include; the limit is {SPF_LOOKUP_LIMIT}, RFC 7208 §4.6.4), so"
            f" receivers return permerror. Remove includes you no longer need or replace them with ip4:/ip6:"
            f" terms."
        )
    missing = [label for label, sender in _spf_senders(record.value) if spf.evaluate(domain, sender) != "pass"]
    if missing:
        wrong.append(
            f"the SPF record does not authorize the relay ({', '.join(missing)} must pass, before any 'all');"
            f" change it to: {suggestion}"
        )
    if stranger == "neutral" and not wrong:
        warnings.append(
            "the record ends with ?all (or no 'all'): it says nothing about other servers sending as your"
            f" domain; use -all or ~all: {suggestion}"
        )
    if wrong:
        return _result(record, "wrong", spf_records, " ".join(wrong))
    if warnings:
        return _result(record, "warning", spf_records, " ".join(warnings))
    return _result(record, "ok", spf_records, "", note=f"{spf.lookups} of {SPF_LOOKUP_LIMIT} DNS lookups used")


# ---- DMARC --------------------------------------------------------------------------------------

_DMARC = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")


def _parents(domain: str) -> list[str]:
    """Parent domains down to two labels (a simple stand-in for the organizational domain)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 1)]


async def _check_dmarc(domain: str, record: DnsRecord, memo: _Memo) -> CheckResult:
    values = await memo.txt(record.name)
    source = record.name
    dmarc = [v for v in values if _DMARC.match(v)]
    if not dmarc:
        for parent in _parents(domain):
            parent_values = [v for v in await memo.txt(f"_dmarc.{parent}") if _DMARC.match(v)]
            if parent_values:
                source, dmarc = f"_dmarc.{parent}", parent_values
                break
    inherited = source != record.name
    if not dmarc:
        fix = _publish(record) + "." + await _misplaced(record, domain, memo, "DMARC1")
        return _result(record, "missing", values, fix)
    extra = {"source": source} if inherited else {}
    where = f"the record at {source}" + (" (inherited by your domain)" if inherited else "")
    if len(dmarc) > 1:
        return _result(
            record, "wrong", dmarc,
            f"there are {len(dmarc)} DMARC records at {source}; then none applies (RFC 7489 §6.6.3). Keep ONE:"
            f" {record.value}",
            **extra,
        )
    tags, error = _tags(dmarc[0])
    values_by_tag = {n.lower(): v.lower() for n, v in tags}
    tag = "sp" if inherited and "sp" in values_by_tag else "p"
    policy = values_by_tag.get(tag, "")
    if inherited:
        own = f"publish your own record at {record.name}: {record.value}"
    else:
        own = f"replace it with {record.value}"
    if error or policy not in ("none", "quarantine", "reject"):
        why = error or (f"{tag}={policy} is not a valid policy" if policy else "it has no p= policy")
        return _result(record, "wrong", dmarc, f"{where} is invalid ({why}); {own}", **extra)
    if policy == "none":
        return _result(
            record, "wrong", dmarc,
            f"{where} has {tag}=none: {tag}=none does not protect {domain} from spoofing (receivers deliver mail"
            f" that fails DKIM and SPF); use p=quarantine or p=reject: {own}",
            **extra,
        )
    note = (
        f"inherited from {source} (the organizational domain's policy, {tag}={policy})" if inherited else ""
    )
    pct = values_by_tag.get("pct", "100")
    if pct != "100":
        return _result(
            record, "warning", dmarc,
            f"{where} applies its policy to only pct={pct}% of failing mail; remove pct= (or set pct=100)",
            note=note, **extra,
        )
    return _result(record, "ok", dmarc, "", note=note, **extra)


# ---- MX -----------------------------------------------------------------------------------------


async def _check_mx(record: DnsRecord, memo: _Memo) -> CheckResult:
    ours = record.value.partition(" ")[2].lower().rstrip(".")
    mx = await memo.mx(record.name)
    found = [f"{pref} {host or '.'}" for pref, host in mx]
    if any(host == ours for _, host in mx):
        best = min(pref for pref, _ in mx)
        if any(host != ours and pref <= best for pref, host in mx):
            return _result(
                record, "warning", found,
                f"replies may reach other hosts first (same or lower preference than {ours}); to have the relay"
                f" forward every reply, point all MX records at {ours}",
            )
        return _result(record, "ok", found, "")
    if mx == [(0, "")]:
        why = f"{record.name} publishes a null MX (it accepts no mail), so replies to your mail bounce"
    elif mx:
        why = (
            f"the MX of {record.name} points elsewhere, so replies go there rather than through the relay"
            " (fine if you read mail there)"
        )
    else:
        why = f"{record.name} has no MX record, so replies to your mail are not forwarded"
    return _result(
        record, "warning", found,
        f"optional: {why}. To have the relay forward replies to your forward-to address, publish MX {record.value}.",
    )
