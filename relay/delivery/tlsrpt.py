"""SMTP TLS Reporting (RFC 8460): tell destinations how TLS to them went, and read what others say of us.

Outbound, three parts:

- ``TlsRptCounter`` is the planner's ``Recorder``: every session under a policy (DANE ``tlsa``, MTA-STS
  ``sts``, or ``no-policy-found``) counts once, as a success or under its failure result type (§4.3.2),
  per UTC day. Counters live in memory (bounded: ``max_entries`` distinct lines; beyond that new lines are
  dropped and counted) and are flushed to the store (``tlsrpt_counts``) every few minutes, so a restart
  loses at most that much.
- ``build_report`` (pure) turns one day's lines for a policy domain into the §4 JSON.
- ``TlsReporter.run`` sends, once a day after 00:00 UTC, yesterday's report to every ``rua`` of the
  domain's ``_smtp._tls`` TXT record (§3): ``mailto:`` as a DKIM-signed multipart/report message through
  the relay's own queue (§5.3; the envelope sender is null, like a DSN, so reports never bounce back
  into a loop), ``https:`` as a bounded POST of the gzip JSON (§5.4). ``claim_tlsrpt_report`` makes each
  (day, domain) go out at most once, even across a crash.

Inbound: ``parse_inbound`` reads a report mailed to the operator domain's TLS-RPT address
(``inbound.tlsrpt_local_part``): the ``application/tlsrpt+gzip`` (or ``+json``) part, decompressed with a
byte cap, JSON-decoded, summarised; the console lists them (``/admin/api/tls-reports``).
"""

from __future__ import annotations

import base64
import datetime
import email
import email.policy
import gzip
import json
import logging
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Protocol

import trio

from relay.delivery.tlspolicy import PolicyRef
from relay.dns.checks import DnsLookup
from relay.net.egress import Egress
from relay.net.fetch import METADATA_BYTES, fetch
from relay.store.rows import InboundTlsReport, TlsRptCount

if TYPE_CHECKING:
    from relay.accept.acceptor import Acceptor
    from relay.config import Config

__all__ = ["ReportError", "TlsReporter", "TlsRptCounter", "build_report", "is_report", "parse_inbound", "parse_rua",
           "report_mail", "tls_reporter", "utc_day"]

log = logging.getLogger("relay.delivery.tlsrpt")

DEFAULT_MAX_ENTRIES = 50_000
MAX_INBOUND_BYTES = 1024 * 1024  # a decompressed inbound report larger than this is refused
_MAX_DETAIL = 200
_MAX_RUA = 4


def utc_day(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d")


# ---- counting ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    day: str
    ref: PolicyRef
    mx_host: str
    result_type: str
    receiving_ip: str


@dataclass(slots=True)
class TlsRptCounter:
    """The planner's Recorder; ``drain()`` hands the counts over for the store."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    clock: Callable[[], float] = time.time
    dropped: int = 0
    _counts: dict[_Key, int] = field(default_factory=dict)
    _details: dict[_Key, str] = field(default_factory=dict)

    def record(self, policy: PolicyRef, *, mx_host: str, address: str | None, failure: str | None,
               detail: str = "") -> None:
        key = _Key(utc_day(self.clock()), policy, mx_host, failure or "", address or "" if failure else "")
        if key not in self._counts:
            # Destinations without a policy are the many; they may fill only half of the table, so the
            # lines for DANE/MTA-STS domains (the ones that publish _smtp._tls) always find room.
            limit = self.max_entries // 2 if policy.kind == "no-policy-found" else self.max_entries
            if len(self._counts) >= limit:
                self.dropped += 1
                return
        self._counts[key] = self._counts.get(key, 0) + 1
        if failure and detail:
            self._details[key] = detail[:_MAX_DETAIL]

    def drain(self) -> list[TlsRptCount]:
        rows = [TlsRptCount(day=k.day, policy_domain=k.ref.domain, policy_type=k.ref.kind,
                            policy_strings=k.ref.strings, mx_patterns=k.ref.mx_patterns, mx_host=k.mx_host,
                            result_type=k.result_type, receiving_ip=k.receiving_ip, sessions=n,
                            detail=self._details.get(k, "")) for k, n in self._counts.items()]
        self._counts.clear()
        self._details.clear()
        return rows


# ---- the report (RFC 8460 §4) ---------------------------------------------------------------------


def build_report(day: str, policy_domain: str, rows: Iterable[TlsRptCount], *, organization: str,
                 contact: str, report_id: str) -> dict[str, Any]:
    """The §4.4 JSON for one policy domain and one UTC day."""
    policies: dict[tuple[str, tuple[str, ...], tuple[str, ...]], dict[str, Any]] = {}
    for row in rows:
        if row.policy_domain != policy_domain or row.day != day:
            continue
        key = (row.policy_type, row.policy_strings, row.mx_patterns)
        entry = policies.get(key)
        if entry is None:
            policy: dict[str, Any] = {"policy-type": row.policy_type, "policy-domain": policy_domain}
            if row.policy_strings:
                policy["policy-string"] = list(row.policy_strings)
            if row.mx_patterns:
                policy["mx-host"] = list(row.mx_patterns)
            entry = policies[key] = {"policy": policy, "summary": {"total-successful-session-count": 0,
                                                                     "total-failure-session-count": 0},
                                     "failure-details": []}
        if not row.result_type:
            entry["summary"]["total-successful-session-count"] += row.sessions
            continue
        entry["summary"]["total-failure-session-count"] += row.sessions
        detail: dict[str, Any] = {"result-type": row.result_type, "failed-session-count": row.sessions}
        if row.mx_host:
            detail["receiving-mx-hostname"] = row.mx_host
        if row.receiving_ip:
            detail["receiving-ip"] = row.receiving_ip
        if row.detail:
            detail["failure-reason-code"] = row.detail
        entry["failure-details"].append(detail)
    out = []
    for entry in policies.values():
        if not entry["failure-details"]:
            del entry["failure-details"]
        out.append(entry)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": contact,
        "report-id": report_id,
        "policies": out,
    }


def report_filename(submitter: str, policy_domain: str, day: str, unique: str) -> str:
    """§5.3: ``submitter!policy-domain!begin-timestamp!end-timestamp[!unique-id].json.gz``."""
    start = int(datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.UTC).timestamp())
    return f"{submitter}!{policy_domain}!{start}!{start + 86399}!{unique}.json.gz"


def report_mail(report: dict[str, Any], *, submitter: str, policy_domain: str, to: str, from_address: str,
                day: str, now: float) -> bytes:
    """§5.3: multipart/report; report-type="tlsrpt", a text part and the application/tlsrpt+gzip part."""
    unique = secrets.token_hex(6)
    name = report_filename(submitter, policy_domain, day, unique)
    payload = gzip.compress(json.dumps(report, separators=(",", ":")).encode(), mtime=0)
    boundary = "=_tlsrpt_" + secrets.token_hex(12)
    b64 = "\r\n".join(_chunks(base64.b64encode(payload).decode("ascii"), 76))
    text = (f"This is an aggregate TLS report from {submitter} for {policy_domain} (RFC 8460), "
            f"covering {day} (UTC).\r\n")
    headers = (
        f"From: {from_address}\r\nTo: {to}\r\n"
        f"Subject: Report Domain: {policy_domain} Submitter: {submitter} Report-ID: <{report['report-id']}>\r\n"
        f"Date: {formatdate(now, usegmt=True)}\r\nMessage-ID: {make_msgid(domain=submitter)}\r\n"
        f"TLS-Report-Domain: {policy_domain}\r\nTLS-Report-Submitter: {submitter}\r\n"
        "Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"\r\n\r\n'
    )
    body = (
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        f"{text}\r\n--{boundary}\r\nContent-Type: application/tlsrpt+gzip; name=\"{name}\"\r\n"
        f"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
        f"{b64}\r\n--{boundary}--\r\n"
    )
    return (headers + body).encode("ascii")


def _chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def parse_rua(records: list[str]) -> list[str]:
    """The ``rua`` URIs of the one ``v=TLSRPTv1`` record (§3); [] when there is none, or several."""
    found = [r for r in records if r.startswith("v=TLSRPTv1")]
    if len(found) != 1:
        return []
    for part in found[0].split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip() == "rua":
            uris = [u.strip() for u in value.split(",") if u.strip()]
            return [u for u in uris if u.startswith(("mailto:", "https://"))][:_MAX_RUA]
    return []


# ---- inbound ----------------------------------------------------------------------------------------


class ReportError(ValueError):
    """Not a TLS report we can read (the message says why)."""


def parse_inbound(data: bytes, *, now: float, max_bytes: int = MAX_INBOUND_BYTES) -> InboundTlsReport:
    """The report in a §5.3 message; run it in a worker thread (it decompresses and parses). Raises
    ReportError."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    part = next((p for p in msg.walk() if p.get_content_type() in ("application/tlsrpt+gzip",
                                                                    "application/tlsrpt+json")), None)
    if part is None:
        raise ReportError("no application/tlsrpt+gzip or application/tlsrpt+json part")
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        raise ReportError("the report part is empty")
    if part.get_content_type().endswith("+gzip"):
        raw = _gunzip(raw, max_bytes)
    elif len(raw) > max_bytes:
        raise ReportError(f"the report is over {max_bytes} bytes")
    try:
        report = json.loads(raw)
    except ValueError as exc:
        raise ReportError(f"the report is not JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("policies"), list):
        raise ReportError("the report has no policies list")
    successes = failures = 0
    types: dict[str, int] = {}
    domains = []
    for entry in report["policies"][:1000]:
        if not isinstance(entry, dict):
            continue
        summary = _dict(entry.get("summary"))
        successes += _count(summary.get("total-successful-session-count"))
        failures += _count(summary.get("total-failure-session-count"))
        policy = _dict(entry.get("policy"))
        domains.append(str(policy.get("policy-domain", ""))[:253])
        for detail in (entry.get("failure-details") or [])[:1000]:
            if isinstance(detail, dict):
                kind = str(detail.get("result-type", "unknown"))[:64]
                types[kind] = types.get(kind, 0) + _count(detail.get("failed-session-count"))
    dates = _dict(report.get("date-range"))
    return InboundTlsReport(
        organization=str(report.get("organization-name", ""))[:200],
        report_id=str(report.get("report-id", ""))[:200],
        policy_domain=",".join(dict.fromkeys(d for d in domains if d))[:500],
        start=str(dates.get("start-datetime", ""))[:40], end=str(dates.get("end-datetime", ""))[:40],
        successes=successes, failures=failures, received_at=now,
        failure_types=", ".join(f"{k}={v}" for k, v in sorted(types.items())),
        report=raw.decode("utf-8", "replace")[:64 * 1024],
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: object) -> int:
    return value if isinstance(value, int) and 0 <= value < 2**53 else 0


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress at most ``max_bytes`` (a gzip bomb stops there)."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise ReportError(f"the report is not valid gzip ({exc})") from None
    if len(out) > max_bytes:
        raise ReportError(f"the report decompresses to over {max_bytes} bytes")
    return out


def is_report(data: bytes) -> bool:
    head = data[:64 * 1024].lower()
    return b"application/tlsrpt" in head or b"report-type=\"tlsrpt\"" in head or b"report-type=tlsrpt" in head


# ---- sending ------------------------------------------------------------------------------------


class ReportStore(Protocol):
    async def add_tlsrpt_counts(self, rows: list[TlsRptCount]) -> None: ...
    async def tlsrpt_counts(self, day: str) -> list[TlsRptCount]: ...
    async def claim_tlsrpt_report(self, day: str, policy_domain: str, now: float) -> bool: ...
    async def purge_tlsrpt(self, before_day: str) -> int: ...


class TxtSource(Protocol):
    async def txt(self, name: str) -> list[tuple[str, ...]]: ...


#: ``mailto(rcpt, message)``: queue a message from the relay itself (null reverse-path), DKIM-signed by
#: the operator key on the way out.
Mailto = Callable[[str, bytes], Awaitable[None]]
#: ``post(url, body)``: POST the gzip JSON; raises on failure.
Post = Callable[[str, bytes], Awaitable[None]]


@dataclass(slots=True)
class TlsReporter:
    counter: TlsRptCounter
    store: ReportStore
    txt: TxtSource
    mailto: Mailto
    post: Post
    organization: str  # the operator domain: the submitter
    flush_every: float = 300.0
    keep_days: int = 14
    wall: Callable[[], float] = time.time
    sent: int = 0

    async def flush(self) -> None:
        rows = self.counter.drain()
        if rows:
            await self.store.add_tlsrpt_counts(rows)

    async def send_day(self, day: str) -> int:
        """Send the reports for ``day`` (to domains that ask for them); returns how many went out."""
        await self.flush()
        rows = await self.store.tlsrpt_counts(day)
        domains = sorted({r.policy_domain for r in rows})
        sent = 0
        for domain in domains:
            try:
                rua = parse_rua(["".join(s) for s in await self.txt.txt(f"_smtp._tls.{domain}")])
            except Exception as exc:  # DNS trouble: no report for this domain today
                log.info("TLS-RPT: looking up _smtp._tls.%s failed: %s", domain, exc)
                continue
            if not rua or not await self.store.claim_tlsrpt_report(day, domain, self.wall()):
                continue
            report_id = f"{day}.{secrets.token_hex(4)}@{self.organization}"
            report = build_report(day, domain, rows, organization=self.organization,
                                  contact=f"postmaster@{self.organization}", report_id=report_id)
            for uri in rua:
                try:
                    if uri.startswith("mailto:"):
                        rcpt = uri[len("mailto:"):].split("?", 1)[0]
                        await self.mailto(rcpt, report_mail(report, submitter=self.organization,
                                                            policy_domain=domain, to=rcpt,
                                                            from_address=f"tls-reports@{self.organization}",
                                                            day=day, now=self.wall()))
                    else:
                        body = gzip.compress(json.dumps(report, separators=(",", ":")).encode(), mtime=0)
                        await self.post(uri, body)
                    sent += 1
                except Exception as exc:  # one destination's failure must not stop the others
                    log.warning("TLS-RPT for %s to %s failed: %s", domain, uri, exc)
        self.sent += sent
        return sent

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every ``flush_every`` seconds; after each UTC midnight send yesterday's reports."""
        task_status.started()
        last_sent = ""  # at start, yesterday's reports go out unless already claimed (once per day and domain)
        try:
            while True:
                await trio.sleep(self.flush_every)
                try:
                    await self.flush()
                    yesterday = utc_day(self.wall() - 86400)
                    if yesterday != last_sent:
                        last_sent = yesterday
                        await self.send_day(yesterday)
                        cutoff = utc_day(self.wall() - self.keep_days * 86400)
                        await self.store.purge_tlsrpt(cutoff)
                except Exception:
                    log.exception("TLS-RPT service: will try again")
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.flush()
                except Exception:
                    log.exception("TLS-RPT: could not save the counters at shutdown")



def tls_reporter(cfg: Config, counter: TlsRptCounter, store: ReportStore, acceptor: Acceptor, *,
                 post_timeout: float = 30.0) -> TlsReporter:
    """The reporter the supervisor runs: mailto through ``acceptor`` (null sender, operator-signed),
    https with a bounded POST through the outbound address policy (relay.net.egress)."""
    egress = Egress.from_config(cfg)

    async def mailto(rcpt: str, data: bytes) -> None:
        await acceptor.accept(did=f"did:web:{cfg.operator_domain}", mail_from="", rcpts=[rcpt], data=data,
                              attrs={"source": "tlsrpt", "transactional": "1"})

    async def post(url: str, body: bytes) -> None:
        # §5.4: POST the gzip report; any 2xx is success. No redirects, one overall deadline, and the
        # answer (a stranger's) read only up to a small cap. The URL is the destination's choice: it
        # must not point the relay at its own network, so the pinned client of relay.net.egress resolves the
        # host once, refuses loopback, private and link-local addresses (logging why) and connects to
        # exactly the address it checked.

        egress.check_url(url, what="TLS report endpoint")
        with trio.fail_after(post_timeout):
            async with egress.http_client(timeout=post_timeout) as client:
                response = await fetch(client, "POST", url, max_bytes=METADATA_BYTES, what="TLS report endpoint",
                                       content=body, headers={"Content-Type": "application/tlsrpt+gzip",
                                                              "User-Agent": "atmosphere-relay (TLS-RPT)"})
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"HTTP {response.status_code}")

    return TlsReporter(counter, store, DnsLookup.from_config(cfg), mailto, post, cfg.operator_domain)
