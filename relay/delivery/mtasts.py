"""MTA-STS (RFC 8461): a recipient domain's promise that its MX hosts speak verified TLS.

    sts = MtaSts(txt=DnsLookup(ns), egress=Egress.from_config(cfg), context=verify_context())
    found = await sts.policy("example.com")   # StsLookup(policy=StsPolicy | None, failure=None | (type, detail))
    found.policy.mode                          # "enforce" | "testing" | "none"
    found.policy.allows("mx1.example.com")     # §4.1 MX host matching

Discovery and caching (§3, §5.1):

- ``_mta-sts.<domain>`` TXT: exactly one record starting ``v=STSv1``, with an ``id``. It is looked up at
  most every ``txt_interval`` seconds per domain; the policy is fetched when there is no cached policy
  or the id changed.
- The policy comes from ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` only: certificate valid for
  that name (WebPKI), status 200, no redirects (§3.3), ``text/plain``, at most ``max_bytes`` octets,
  everything within ``timeout`` seconds, connected to an address resolved and allowed by the one outbound
  address policy (relay.net.egress: no private, loopback or link-local address unless ``[testing]
  allow_loopback_peers``), and to exactly that address (no proxy, no re-resolution).
- A cached policy is used until its ``max_age`` runs out, even when the TXT record vanishes or a refetch
  fails (§5.1: that is what defeats an attacker who strips the record); the ``run`` service refreshes
  policies in the background before they expire. The cache is bounded (least recently used out) and
  kept in the store, so a restart does not forget it.
- A failed discovery with nothing cached means no policy: delivery goes on as before, and the failure
  is reported to TLS-RPT (RFC 8460 §4.3.2.1 result types ``sts-policy-fetch-error``, ``sts-policy-invalid``,
  ``sts-webpki-invalid``).
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import h11
import trio

from relay.net.egress import Egress, EgressRefused
from relay.store.rows import StsPolicyRow

__all__ = ["MtaSts", "StsError", "StsLookup", "StsPolicy", "fetch_policy", "parse_policy", "parse_record"]

log = logging.getLogger("relay.delivery.mtasts")

MAX_AGE_LIMIT = 31_557_600  # §3.2: max_age is at most one year
DEFAULT_MAX_BYTES = 64 * 1024  # §3.2 policies are a few lines; Postfix's resolver and Stalwart use 64 KiB
DEFAULT_TIMEOUT = 15.0
DEFAULT_TXT_INTERVAL = 300.0
DEFAULT_MAX_ENTRIES = 10_000
WELL_KNOWN = "/.well-known/mta-sts.txt"
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")  # §3.1 sts-id
_RECORD_START = re.compile(r"v=STSv1\s*(;|\Z)")
_MAX_HEADER = 16 * 1024
FailureType = Literal["sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid"]


class StsError(Exception):
    """Discovery failed; ``result_type`` is the TLS-RPT name for it (RFC 8460 §4.3.2.1)."""

    def __init__(self, result_type: FailureType, detail: str) -> None:
        super().__init__(detail)
        self.result_type: FailureType = result_type
        self.detail = detail


# ---- parsing (pure) -------------------------------------------------------------------------------


def parse_record(txts: list[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records, or None when there is no STS record (§3.1).

    Several ``v=STSv1`` records, or one without a valid id, raise StsError (the domain's mistake: as
    if it had no record, but reported)."""
    records = [t for t in txts if _RECORD_START.match(t)]
    if not records:
        return None
    if len(records) > 1:
        raise StsError("sts-policy-invalid", f"{len(records)} v=STSv1 TXT records; there must be exactly one")
    fields = dict(_fields(records[0]))
    sts_id = fields.get("id", "")
    if not _ID.match(sts_id):
        raise StsError("sts-policy-invalid", f"the v=STSv1 TXT record has no valid id= ({records[0][:80]!r})")
    return sts_id


def _fields(record: str) -> list[tuple[str, str]]:
    out = []
    for part in record.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            out.append((key.strip(), value.strip()))
    return out


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: Literal["enforce", "testing", "none"]
    mx: tuple[str, ...]
    max_age: int
    text: str  # as served, for TLS-RPT's policy-string (RFC 8460 §4.4)
    sts_id: str = ""
    fetched_at: float = 0.0  # wall clock

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def allows(self, host: str) -> bool:
        """§4.1: an MX host matches an ``mx`` exactly, or a ``*.`` pattern by exactly one more label."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, dot, rest = host.partition(".")
                if dot and head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def strings(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


def parse_policy(body: bytes, *, sts_id: str = "", fetched_at: float = 0.0) -> StsPolicy:
    """§3.2: ``key: value`` lines (LF or CRLF). Raises StsError("sts-policy-invalid") naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise StsError("sts-policy-invalid", "the policy is not UTF-8 text") from None
    values: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        elif key not in values:
            values[key] = value
    if values.get("version") != "STSv1":
        raise StsError("sts-policy-invalid", f"version is {values.get('version')!r}, expected 'STSv1'")
    mode = values.get("mode", "")
    if mode not in ("enforce", "testing", "none"):
        raise StsError("sts-policy-invalid", f"mode is {mode!r}, expected enforce, testing or none")
    max_age_text = values.get("max_age", "")
    if not max_age_text.isdigit() or len(max_age_text) > 10:
        raise StsError("sts-policy-invalid", f"max_age is {max_age_text!r}, expected a number of seconds")
    max_age = min(int(max_age_text), MAX_AGE_LIMIT)
    if mode != "none" and not mx:
        raise StsError("sts-policy-invalid", "the policy names no mx host")
    return StsPolicy(mode, tuple(mx), max_age, text, sts_id, fetched_at)  # type: ignore[arg-type]


# ---- fetching -------------------------------------------------------------------------------------


async def fetch_policy(
    domain: str,
    *,
    egress: Egress,
    context: ssl.SSLContext,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (a deadline for the whole fetch, passed on)
    max_bytes: int = DEFAULT_MAX_BYTES,
    port: int = 443,
) -> bytes:
    """GET the policy body (see the module docstring); raises StsError with the TLS-RPT result type."""
    host = f"mta-sts.{domain}"
    with trio.move_on_after(timeout) as scope:
        try:
            # The policy host is the recipient domain's choice: only addresses the outbound policy allows.
            found = await egress.resolve(host, port)
        except EgressRefused as exc:
            log.warning("MTA-STS policy fetch refused: %s", exc)
            raise StsError("sts-policy-fetch-error", f"not fetching https://{host}{WELL_KNOWN}: {exc}") from None
        problem = ""
        for address in found[:4]:
            try:
                return await _get(address, port, host, context, max_bytes)
            except OSError as exc:
                problem = f"connect to {host}[{address}]:{port}: {exc.strerror or exc}"
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                if isinstance(cause, ssl.SSLCertVerificationError):
                    raise StsError("sts-webpki-invalid",
                                   f"the certificate of {host} is not valid: {cause.verify_message}") from None
                problem = f"TLS with {host}[{address}]:{port} failed: {cause or exc}"
        raise StsError("sts-policy-fetch-error", problem)
    assert scope.cancelled_caught
    raise StsError("sts-policy-fetch-error", f"fetching https://{host}{WELL_KNOWN} took longer than {timeout:g} s")


async def _get(address: str, port: int, host: str, context: ssl.SSLContext, max_bytes: int) -> bytes:
    stream = await trio.open_tcp_stream(address, port)
    tls = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
    try:
        await tls.do_handshake()
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEADER)
        request = h11.Request(method="GET", target=WELL_KNOWN, headers=[
            ("Host", host), ("User-Agent", "atmosphere-relay (MTA-STS)"), ("Accept", "text/plain"),
            ("Connection", "close"),
        ])
        await tls.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise StsError("sts-policy-fetch-error", f"https://{host}{WELL_KNOWN}: not HTTP ({exc})") from None
            if event is h11.NEED_DATA:
                data = await tls.receive_some(65536)
                conn.receive_data(bytes(data))  # b"" marks the end of the connection
                continue
            if isinstance(event, h11.Response):
                if event.status_code != 200:
                    # §3.3: redirects are not followed; anything but 200 is a failed fetch.
                    raise StsError("sts-policy-fetch-error",
                                   f"https://{host}{WELL_KNOWN} answered HTTP {event.status_code}, not 200")
                ctype = dict(event.headers).get(b"content-type", b"").split(b";")[0].strip().lower()
                if ctype != b"text/plain":
                    raise StsError("sts-policy-invalid",
                                   f"https://{host}{WELL_KNOWN} is {ctype.decode('latin-1')!r}, not text/plain")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_bytes:
                    raise StsError("sts-policy-invalid", f"the policy at {host} is over {max_bytes} bytes")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return bytes(body)
    finally:
        # No graceful TLS close: a server that never answers close_notify must not cost the deadline.
        await trio.aclose_forcefully(tls)


# ---- the cache ------------------------------------------------------------------------------------


class TxtSource(Protocol):
    async def txt(self, name: str) -> list[tuple[str, ...]]: ...


class PolicyStore(Protocol):
    async def put_sts_policy(self, row: StsPolicyRow) -> None: ...
    async def sts_policies(self, now: float, limit: int) -> list[StsPolicyRow]: ...
    async def purge_sts_policies(self, now: float) -> int: ...


@dataclass(frozen=True, slots=True)
class StsLookup:
    """The policy in force (None: no MTA-STS for the domain) and, when a discovery made by this call
    failed, why (later calls inside ``txt_interval`` do not repeat it)."""

    policy: StsPolicy | None
    failure: StsError | None = None


@dataclass(slots=True)
class _Entry:
    policy: StsPolicy | None = None
    checked_at: float = -1e18  # monotonic: when the TXT record was last looked at
    failure: StsError | None = None
    busy: trio.Event | None = None


@dataclass(slots=True)
class MtaSts:
    """Policies per recipient domain (see the module docstring); one per relay, owned by the transport."""

    txt: TxtSource
    egress: Egress
    context: ssl.SSLContext
    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    txt_interval: float = DEFAULT_TXT_INTERVAL
    max_entries: int = DEFAULT_MAX_ENTRIES
    port: int = 443  # tests serve policies on a free port
    store: PolicyStore | None = None  # policies survive restarts (loaded by ``load``/``run``)
    wall: Callable[[], float] = time.time
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    fetches: int = 0

    async def policy(self, domain: str) -> StsLookup:
        domain = domain.lower().rstrip(".")
        entry = self._entries.get(domain)
        if entry is None:
            entry = self._entries[domain] = _Entry()
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(domain)
        while entry.busy is not None:  # someone is refreshing this domain now: share the outcome
            await entry.busy.wait()
        failure = None
        if self.clock() - entry.checked_at >= self.txt_interval:
            await self._refresh(domain, entry)
            failure = entry.failure  # reported once per discovery, not once per message
        policy = entry.policy
        if policy is not None and self.wall() >= policy.expires_at:
            policy = entry.policy = None  # §5.1: an expired policy is gone
        return StsLookup(policy if policy is not None and policy.mode != "none" else None, failure)

    async def _refresh(self, domain: str, entry: _Entry, *, force: bool = False) -> None:
        entry.busy = trio.Event()
        try:
            entry.failure = None
            try:
                records = ["".join(strings) for strings in await self.txt.txt(f"_mta-sts.{domain}")]
                sts_id = parse_record(records)
            except StsError as exc:
                entry.failure = exc
                return
            except Exception as exc:  # DNS trouble: keep what is cached (§5.1) and look again later
                entry.failure = StsError("sts-policy-fetch-error", f"looking up _mta-sts.{domain} failed: {exc}")
                return
            finally:
                entry.checked_at = self.clock()
            cached = entry.policy
            if sts_id is None:
                return  # no record: a cached policy stays in force until it expires (§5.1)
            if not force and cached is not None and cached.sts_id == sts_id and self.wall() < cached.expires_at:
                return
            self.fetches += 1
            try:
                body = await fetch_policy(domain, egress=self.egress, context=self.context,
                                          timeout=self.timeout, max_bytes=self.max_bytes, port=self.port)
                entry.policy = parse_policy(body, sts_id=sts_id, fetched_at=self.wall())
                await self._save(domain, entry.policy)
                log.info("MTA-STS policy of %s: mode %s, mx %s, max_age %d", domain, entry.policy.mode,
                         ",".join(entry.policy.mx), entry.policy.max_age)
            except StsError as exc:
                log.info("MTA-STS policy of %s: %s", domain, exc.detail)
                entry.failure = exc  # a cached policy, if any, stays in force (§5.1)
        finally:
            busy, entry.busy = entry.busy, None
            busy.set()

    async def _save(self, domain: str, policy: StsPolicy) -> None:
        if self.store is None:
            return
        try:
            await self.store.put_sts_policy(StsPolicyRow(domain, policy.sts_id, policy.text, policy.fetched_at,
                                                         policy.expires_at))
        except Exception:  # the in-memory cache still holds it; the store may be back next time
            log.exception("MTA-STS: could not save the policy of %s", domain)

    async def load(self) -> int:
        """Unexpired policies from the store into the cache (at start); returns how many."""
        if self.store is None:
            return 0
        loaded = 0
        for row in await self.store.sts_policies(self.wall(), self.max_entries):
            try:
                policy = parse_policy(row.policy.encode(), sts_id=row.sts_id, fetched_at=row.fetched_at)
            except StsError:
                continue
            if row.domain not in self._entries:
                self._entries[row.domain] = _Entry(policy=policy)
                loaded += 1
        return loaded

    def cached(self) -> dict[str, StsPolicy]:
        return {d: e.policy for d, e in self._entries.items() if e.policy is not None}

    async def refresh_due(self, *, ahead: float) -> int:
        """Refetch cached policies expiring within ``ahead`` seconds (§5.1 proactive refresh)."""
        due = [d for d, e in self._entries.items()
               if e.policy is not None and e.busy is None and e.policy.expires_at - self.wall() < ahead]
        for domain in due:
            entry = self._entries.get(domain)
            if entry is not None and entry.busy is None:
                await self._refresh(domain, entry, force=True)
        return len(due)

    async def run(self, *, every: float = 3600.0, ahead: float = 86400.0,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background refresh: hourly, policies with less than a day left are fetched again. The stored
        policies are loaded first, so deliveries after a restart keep enforcing them."""
        try:
            loaded = await self.load()
            if loaded:
                log.info("MTA-STS: %d cached policies loaded", loaded)
        except Exception:
            log.exception("MTA-STS: could not load the stored policies; starting with an empty cache")
        task_status.started()
        while True:
            await trio.sleep(every)
            try:
                await self.refresh_due(ahead=ahead)
                if self.store is not None:
                    await self.store.purge_sts_policies(self.wall())
            except Exception:
                log.exception("MTA-STS background refresh failed; will try again")
