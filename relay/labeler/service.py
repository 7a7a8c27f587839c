"""The labeler service: decides, signs, stores and announces labels (DESIGN §3, issue 9).

    labeler = Labeler(store, cfg, verifier=verifier)      # key from <state>/labeler/key.pem
    verifier.on_change = labeler.on_domain_change         # DNS state changes re-label at once
    await nursery.start(labeler.run)                      # every member now, then on schedule

``run`` checks every member at start, then each again after ``labeler.recheck_interval`` (24 h), or
after ``labeler.pending`` (5 min) when a check could not conclude (DNS or PDS failure: the published
labels stay as they are until a check concludes). ``request_check(did)`` wakes it (enrollment, a
member pressing "check now"). Each pass per member: the DNS report of each domain (fresh from
``DomainVerifier.check``, or the one handed to ``on_domain_change``), the member's identity (handle
confirmed both ways, PDS endpoint) and the attestation record of each domain
(``com.atproto.repo.getRecord``), then the verdicts of relay.labeler.conditions. A label is written
only on a change: a positive label when it starts to hold, a negation (``neg: true``) when it stops.

Subscribers (``subscribeLabels``) wait on ``changed()`` and read new rows from the store by seq.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import trio

from relay.config import Config
from relay.dns.checks import DnsLookup, DnsLookupError, DomainReport, TxtLookup
from relay.dns.verifier import DomainVerifier, UnknownDomain
from relay.identity import IdentityError, IdentityResolver
from relay.labeler.conditions import (
    ATTESTATION_COLLECTION,
    any_verdict,
    clean_sender,
    operator_verdict,
    parse_attestation,
    selectors_published,
)
from relay.labeler.keys import LabelerKey, default_did, did_document
from relay.labeler.labels import CLEAN_SENDER, LABEL_VALUES, RELAY_MEMBER, VERIFIED_MAIL_OPERATOR, sign_label
from relay.mail.dkimkeys import SecretBoxError
from relay.net.egress import Egress
from relay.net.fetch import DOCUMENT_BYTES, FetchError, get_json
from relay.store.aio import AsyncStore
from relay.store.base import Store, StoreError
from relay.store.rows import Domain, LabelRow

__all__ = ["AttestationFetch", "Labeler", "MemberCheck", "PdsAttestations", "key_path"]

log = logging.getLogger("relay.labeler")

CLEAN_WINDOW = 14 * 86400
Verdict = bool | None


def key_path(cfg: Config) -> Any:
    return cfg.state_path / "labeler" / "key.pem"


@dataclass(frozen=True, slots=True)
class AttestationFetch:
    """``found`` (value set), ``absent`` (RecordNotFound) or ``error`` (could not tell; ``detail``)."""

    status: Literal["found", "absent", "error"]
    value: Any = None
    detail: str = ""


class AttestationSource(Protocol):
    async def fetch(self, did: str, domain: str) -> AttestationFetch: ...


class Resolver(Protocol):
    """What the labeler needs from relay.identity.IdentityResolver."""

    async def resolve_did(self, did: str) -> Any: ...  # Identity: .handle, .pds_url


class PdsAttestations:
    """Fetches ``email.atmos.attestation/<domain>`` from the member's PDS (found through its DID)."""

    def __init__(self, resolver: Resolver, *, timeout: float = 10.0, max_bytes: int = DOCUMENT_BYTES,
                 deadline: float = 30.0, egress: Egress | None = None) -> None:
        self.resolver = resolver
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.egress = egress or Egress()

    async def fetch(self, did: str, domain: str) -> AttestationFetch:

        try:
            ident = await self.resolver.resolve_did(did)
        except IdentityError as exc:
            return AttestationFetch("error", detail=str(exc))
        return await get_record(ident.pds_url, did, domain, timeout=self.timeout, max_bytes=self.max_bytes,
                                deadline=self.deadline, egress=self.egress)


async def get_record(pds_url: str, did: str, domain: str, *, timeout: float = 10.0,  # noqa: ASYNC109
                     max_bytes: int = DOCUMENT_BYTES, deadline: float = 30.0,
                     egress: Egress | None = None) -> AttestationFetch:
    """``GET <pds>/xrpc/com.atproto.repo.getRecord`` (httpx on Trio, through anyio), bounded (relay.net.fetch),
    connected through the outbound address policy (relay.net.egress)."""
    url = pds_url.rstrip("/") + "/xrpc/com.atproto.repo.getRecord"
    params = {"repo": did, "collection": ATTESTATION_COLLECTION, "rkey": domain}
    with trio.move_on_after(deadline):
        try:
            async with (egress or Egress()).http_client(
                    timeout=timeout, headers={"user-agent": "atmosphere-relay-labeler"}) as client:
                status, body = await get_json(client, url, params=params, max_bytes=max_bytes,
                                              what="attestation record")
        except FetchError as exc:
            return AttestationFetch("error", detail=f"PDS: {exc}")
        if status == 200 and isinstance(body, dict):
            return AttestationFetch("found", value=body.get("value"))
        if status in (400, 404) and isinstance(body, dict) and body.get("error") == "RecordNotFound":
            return AttestationFetch("absent", detail="no attestation record")
        return AttestationFetch("error", detail=f"PDS answered HTTP {status}")
    return AttestationFetch("error", detail=f"PDS did not answer within {deadline:g} s")


@dataclass(slots=True)
class MemberCheck:
    """The latest verdicts for one member, with reasons (for /member/status, /account, console)."""

    did: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    checked_at: float = 0.0
    emitted: list[LabelRow] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        return all(v is not None for v in self.verdicts.values())

    def to_json(self) -> dict[str, Any]:
        return {"did": self.did, "labels": dict(self.verdicts), "reasons": list(self.reasons),
                "checked_at": self.checked_at}


class Labeler:
    def __init__(
        self,
        store: AsyncStore,
        cfg: Config,
        key: LabelerKey | None = None,
        *,
        verifier: DomainVerifier | None = None,
        attestations: AttestationSource | None = None,
        resolver: Resolver | None = None,
        lookup: TxtLookup | None = None,
        clock: Callable[[], float] = time.time,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.did = cfg.labeler.did or default_did(cfg.public_url)
        self.key = key if key is not None else LabelerKey.load_or_create(key_path(cfg))
        self.lookup: TxtLookup = lookup if lookup is not None else (
            verifier.lookup if verifier is not None else DnsLookup.from_config(cfg))
        self.verifier = verifier if verifier is not None else DomainVerifier(store, cfg, lookup=self.lookup)
        if resolver is None:

            resolver = IdentityResolver.from_config(cfg, txt=self.lookup)
        self.resolver = resolver
        self.attestations: AttestationSource = (
            attestations if attestations is not None else PdsAttestations(
                resolver, timeout=cfg.identity.timeout, max_bytes=cfg.identity.document_bytes,
                deadline=cfg.identity.deadline, egress=Egress.from_config(cfg)))
        self.clock = clock
        self.results: dict[str, MemberCheck] = {}
        self._fresh: dict[str, DomainReport] = {}  # reports handed over by on_domain_change
        self._limiter = trio.CapacityLimiter(concurrency)
        self._locks: dict[str, trio.Lock] = {}
        self._changed = trio.Event()
        self._due: dict[str, float] = {}
        self._requested: set[str] = set()
        self._request_all = False
        self._wake = trio.Event()
        self._looping = False  # the periodic loop runs here (on the node holding the jobs lease)

    # ---- identity ----

    async def labels_in_force(self, did: str) -> list[str]:
        """This labeler's labels on ``did`` now: the newest label per value, a negation removing it."""
        rows = await self.store.query_labels([did], [self.did], 0, 250)
        latest: dict[str, bool] = {}
        for row in sorted(rows, key=lambda r: r.seq):
            latest[row.val] = not row.neg
        return sorted(val for val, on in latest.items() if on)

    def did_document(self, endpoint: str | None = None) -> dict[str, Any]:
        return did_document(self.did, self.key, endpoint or self.cfg.public_url)

    # ---- subscribers ----

    def changed(self) -> trio.Event:
        """Set once new labels were stored after this call (take a fresh one each time)."""
        return self._changed

    def _announce(self) -> None:
        old, self._changed = self._changed, trio.Event()
        old.set()

    # ---- one member ----

    async def check_member(self, did: str) -> MemberCheck:
        """Evaluate one member now and store the labels that changed."""
        lock = self._locks.setdefault(did, trio.Lock())
        async with lock, self._limiter:
            result = await self._evaluate(did)
            result.emitted = await self.store.call(lambda s: self._apply(s, did, result.verdicts))
        self.results[did] = result
        if result.emitted:
            log.info("labels for %s: %s", did,
                     ", ".join(("-" if r.neg else "+") + r.val for r in result.emitted))
            self._announce()
        return result

    async def _report(self, row: Domain) -> DomainReport | None:
        fresh = self._fresh.pop(row.domain, None)
        if fresh is not None:
            return fresh
        try:
            return await self.verifier.check(row.domain)
        except (UnknownDomain, SecretBoxError, StoreError) as exc:
            log.warning("labeler: cannot check %s: %s", row.domain, exc)
            return None

    async def _identity(self, did: str, reasons: list[str]) -> Any:

        try:
            return await self.resolver.resolve_did(did)
        except IdentityError as exc:
            reasons.append(f"identity: {exc}")
            return None

    async def _selectors_ok(self, domain: str, selectors: tuple[str, ...]) -> Verdict:
        found: dict[str, list[str]] = {}
        try:
            for sel in selectors:
                found[sel] = ["".join(t) for t in await self.lookup.txt(f"{sel}._domainkey.{domain}")]
        except DnsLookupError:
            return None
        return selectors_published(found)

    async def _attested(self, did: str, domain: str, reasons: list[str]) -> Verdict:
        fetched = await self.attestations.fetch(did, domain)
        if fetched.status == "error":
            reasons.append(f"{domain}: attestation not fetched ({fetched.detail})")
            return None
        if fetched.status == "absent":
            reasons.append(f"{domain}: no {ATTESTATION_COLLECTION} record with rkey {domain}")
            return False
        att, why = parse_attestation(fetched.value, domain)
        if att is None:
            reasons.append(f"{domain}: invalid attestation: {why}")
            return False
        if not att.relay_member:
            reasons.append(f"{domain}: the attestation does not say relayMember: true")
            return False
        ok = await self._selectors_ok(domain, att.dkim_selectors)
        if ok is False:
            reasons.append(f"{domain}: a selector in dkimSelectors has no v=DKIM1 record")
        return ok

    async def _evaluate(self, did: str) -> MemberCheck:
        result = MemberCheck(did=did, checked_at=self.clock())
        reasons = result.reasons
        member = await self.store.get_member(did)
        domains = await self.store.domains_for(did) if member is not None else []
        if member is None or not domains:
            reasons.append("no enrolled domain")
            result.verdicts = dict.fromkeys(LABEL_VALUES, False)
            return result
        identity: list[Any] = []  # resolved at most once, and only when a verdict depends on it

        async def handle() -> str | None:
            if not identity:
                identity.append(await self._identity(did, reasons))
            return identity[0].handle if identity[0] is not None else None

        operator: list[Verdict] = []
        membership: list[Verdict] = []
        for row in domains:
            report = await self._report(row)
            op = operator_verdict(report, None)
            if op is False and report is not None and operator_verdict(report, report.domain):
                op = operator_verdict(report, await handle())  # only domain control failed: the handle may prove it
            if op is False and report is not None:
                failed: list[str] = [r.kind for r in report.results if r.required and not r.passed]
                mx = report.result("mx")
                if mx is None or not mx.found:
                    failed.append("mx")
                reasons.append(f"{row.domain}: not a verified mail operator ({', '.join(failed)})")
            elif op is None:
                reasons.append(f"{row.domain}: DNS check incomplete")
            operator.append(op)
            if op is True:
                membership.append(await self._attested(did, row.domain, reasons))
            else:
                membership.append(op)  # False: cannot be a member; None: cannot tell yet
        vmo = any_verdict(operator)
        active = member.status == "active"
        if not active:
            reasons.append("member suspended")
        rm = any_verdict(membership) if active else False
        clean: Verdict
        if vmo is None:
            clean = None
        elif not vmo or not active:
            clean = False
        else:
            since = int(self.clock() - CLEAN_WINDOW) // 3600 * 3600
            counts = await self.store.reputation_counts_since(since, did)
            susp = self.cfg.suspension
            clean = clean_sender(counts, max_bounce_rate=susp.max_bounce_rate,
                                 max_complaint_rate=susp.max_complaint_rate, min_sends=susp.min_sends)
        result.verdicts = {VERIFIED_MAIL_OPERATOR: vmo, RELAY_MEMBER: rm, CLEAN_SENDER: clean}
        return result

    def _apply(self, store: Store, did: str, verdicts: dict[str, Verdict]) -> list[LabelRow]:
        """In the store's worker thread (serial with every other store call): compare with the latest
        published labels and write the changes."""
        current = {r.val: r for r in store.query_labels([did], [self.did], 0, 250)}
        new = []
        for val, verdict in verdicts.items():
            if verdict is None:
                continue
            latest = current.get(val)
            live = latest is not None and not latest.neg
            if verdict and not live:
                new.append(sign_label(self.key, src=self.did, uri=did, val=val))
            elif not verdict and live:
                new.append(sign_label(self.key, src=self.did, uri=did, val=val, neg=True))
        return store.add_labels(new) if new else []

    def _labelled(self, store: Store) -> set[str]:
        return {r.uri for r in store.query_labels(["*"], [self.did], 0, 1_000_000) if not r.neg}

    # ---- hooks ----

    async def on_domain_change(self, row: Domain, report: DomainReport) -> None:
        """``DomainVerifier.on_change``: re-label the domain's member with this report. Where the periodic
        loop does not run (a node that does not hold the jobs lease, relay.cluster.node) the check is
        done here and now: a check a member asked for on any node labels within seconds. (Two nodes
        labelling one member at once is harmless: ``_apply`` diffs and writes in one store transaction.)"""
        self._fresh[row.domain] = report
        if self._looping:
            self.request_check(row.did)
            return
        try:
            await self.check_member(row.did)
        except Exception:  # the periodic check is the safety net
            log.exception("labeler: re-check of %s after its domain changed failed", row.did)

    def request_check(self, did: str | None = None) -> None:
        if did is None:
            self._request_all = True
        else:
            self._requested.add(did)
        self._wake.set()

    # ---- the periodic job ----

    async def _scheduled(self, did: str) -> None:
        decided = False
        try:
            decided = (await self.check_member(did)).decided
        except Exception:
            log.exception("labeler: checking %s failed", did)
        lab = self.cfg.labeler
        self._due[did] = trio.current_time() + (lab.recheck_interval if decided else lab.pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        lab = self.cfg.labeler
        poll = min(lab.pending, lab.recheck_interval)
        task_status.started()
        self._looping = True
        try:
            await self._loop(poll)
        finally:
            self._looping = False

    async def _loop(self, poll: float) -> None:
        while True:
            wake = self._wake = trio.Event()
            requested, self._requested = self._requested, set()
            request_all, self._request_all = self._request_all, False
            try:
                members = await self.store.list_members()
                published = await self.store.call(self._labelled)
            except StoreError as exc:
                log.warning("labeler: cannot list members (%s); retrying in %g s", exc, poll)
                self._requested |= requested
                self._request_all |= request_all
                with trio.move_on_after(poll):
                    await wake.wait()
                continue
            dids = {m.did for m in members} | published  # published: a member gone still gets negations
            now = trio.current_time()
            due = sorted(d for d in dids if request_all or d in requested or self._due.get(d, -math.inf) <= now)
            if due:
                async with trio.open_nursery() as nursery:
                    for did in due:
                        nursery.start_soon(self._scheduled, did)
            next_at = min([trio.current_time() + poll, *(t for d, t in self._due.items() if d in dids)])
            with trio.move_on_at(next_at):
                await wake.wait()
