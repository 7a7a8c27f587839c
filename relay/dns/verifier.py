"""Domain verification states and the periodic DNS re-check job (DESIGN §2 periodic jobs, §7).

States (relay.store.rows): ``state`` is ``pending`` until the ownership challenge is seen, then
``verified``; ``dkim_state`` is ``verified`` while both DKIM keys are published correctly.
``next_states`` is the pure decision; a DNS failure (status ``error``) never changes a state.

``DomainVerifier(store, cfg)`` checks one domain (``check``) or runs forever (``run``): every domain
at start, then pending ones every ``dns.pending_recheck_interval`` and verified ones every
``dns.recheck_interval`` (sooner after a DNS failure). ``request_check`` wakes the loop (a domain was
just enrolled, a member pressed "check now"). ``check_once`` is the same for a CLI, store optional.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable

import trio

from relay.address import normalize_domain
from relay.config import Config
from relay.dns.challenge import verify_token
from relay.dns.checks import DnsLookup, DomainReport, TxtLookup, check_domain
from relay.dns.records import DnsRecord, records_for
from relay.mail.dkimkeys import SecretBox, SecretBoxError, public_records
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.base import Store, StoreError
from relay.store.rows import DkimState, Domain, DomainState

__all__ = ["DomainVerifier", "UnknownDomain", "check_once", "expected_records", "next_states"]

log = logging.getLogger("relay.dns")

OnChange = Callable[[Domain, DomainReport], Awaitable[None]]


class UnknownDomain(LookupError):
    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain} is not enrolled")
        self.domain = domain


def next_states(
    current_state: DomainState, current_dkim_state: DkimState, report: DomainReport
) -> tuple[DomainState, DkimState]:
    """The states after a check.

    - ownership ok -> ``verified``; definitively absent (``missing``, or ``wrong``: another token) ->
      ``pending``; a DNS error (or no ownership result) keeps the current state.
    - both DKIM keys ok -> ``verified``; either definitively absent or wrong -> ``unverified``; a DNS
      error on either keeps the current DKIM state.
    """
    state = current_state
    ownership = report.result("ownership")
    if ownership is not None:
        if ownership.passed:
            state = "verified"
        elif ownership.status in ("missing", "wrong"):
            state = "pending"
    dkim = [report.result("dkim-rsa"), report.result("dkim-ed25519")]
    dkim_state = current_dkim_state
    if all(r is not None and r.passed for r in dkim):
        dkim_state = "verified"
    elif not any(r is not None and r.status == "error" for r in dkim):
        dkim_state = "unverified"
    return state, dkim_state


def expected_records(row: Domain, cfg: Config, secret: bytes | None = None) -> list[DnsRecord]:
    """The records an enrolled domain must publish, from its stored (encrypted) keys.

    Raises relay.mail.dkimkeys.SecretBoxError when the keys cannot be decrypted with ``secret``
    (default ``cfg.secret_key``). CPU-bound (loads an RSA key): call from a worker thread.
    """
    secret = cfg.secret_key if secret is None else secret
    box = SecretBox(secret)
    public = public_records(row.domain, row.selector, box.decrypt(row.rsa_private), box.decrypt(row.ed25519_private))
    token = row.verify_token
    if not token:
        token = verify_token(secret, row.did)
    return records_for(
        row.domain,
        did=row.did,
        verify_token=token,
        selector=row.selector,
        rsa_txt=public["rsa"]["value"],
        ed25519_txt=public["ed25519"]["value"],
        cfg=cfg,
    )


def _all_domains(store: Store) -> list[Domain]:
    return [d for member in store.list_members() for d in store.domains_for(member.did)]


class DomainVerifier:
    """Checks enrolled domains and records their states (see the module docstring).

    ``secret`` decrypts the stored DKIM keys (default ``cfg.secret_key``); ``lookup`` defaults to
    ``DnsLookup.from_config(cfg)``. ``on_change(domain_row, report)`` is awaited after a state changed
    (events, labels); its failures are logged, never fatal.
    """

    def __init__(
        self,
        store: AsyncStore,
        cfg: Config,
        secret: bytes | None = None,
        lookup: TxtLookup | None = None,
        *,
        on_change: OnChange | None = None,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.secret = cfg.secret_key if secret is None else secret
        self.lookup: TxtLookup = lookup if lookup is not None else DnsLookup.from_config(cfg)
        self.on_change = on_change
        self._limiter = trio.CapacityLimiter(concurrency)
        self._expected: dict[tuple[str, str, bytes, bytes, str], list[DnsRecord]] = {}
        self._reports: dict[str, DomainReport] = {}
        self._due: dict[str, float] = {}  # domain -> trio.current_time() of its next check
        self._requested: set[str] = set()
        self._request_all = False
        self._wake = trio.Event()

    # ---- one domain ----

    async def check(self, domain: str, *, did: str | None = None) -> DomainReport:
        """Check one enrolled domain now and record its states; raises UnknownDomain. With ``did``,
        that DID's own claim of it (which may be a competing pending claim)."""
        name = normalize_domain(domain)
        if did is None:
            row = await self.store.get_domain(name)
        else:
            row = next((d for d in await self.store.domains_for(did) if d.domain == name), None)
        if row is None:
            raise UnknownDomain(name)
        return await self._check_row(row)

    def last_report(self, domain: str) -> DomainReport | None:
        """The latest report of a domain checked by this verifier (in memory only)."""
        return self._reports.get(normalize_domain(domain))

    async def _expected_for(self, row: Domain) -> list[DnsRecord]:
        key = (row.domain, row.selector, row.rsa_private, row.ed25519_private, row.verify_token)
        records = self._expected.get(key)
        if records is None:
            records = await trio.to_thread.run_sync(expected_records, row, self.cfg, self.secret)
            if len(self._expected) > 10_000:
                self._expected.clear()
            self._expected[key] = records
        return records

    async def _check_row(self, row: Domain) -> DomainReport:
        expected = await self._expected_for(row)
        async with self._limiter:
            report = await check_domain(row.domain, expected=expected, did=row.did, lookup=self.lookup)
        state, dkim_state = next_states(row.state, row.dkim_state, report)
        changed = (state, dkim_state) != (row.state, row.dkim_state)
        updated = row
        if row.claim:
            # A competing claim: only ownership matters; proving it first takes the domain.
            changed = state == "verified"
            if changed:
                try:
                    updated = await self.store.call(lambda s: s.promote_claim(row.domain, row.did))
                except StoreError as exc:  # another claimant (or the operator) was faster
                    log.info("domain %s: claim of %s not promoted: %s", row.domain, row.did, exc)
                    changed = False
                else:
                    log.info("domain %s: %s proved it first; other claims dropped", row.domain, row.did)
        elif changed:
            updated = await self.store.set_domain_state(
                row.domain,
                state=state if state != row.state else None,
                dkim_state=dkim_state if dkim_state != row.dkim_state else None,
            )
            log.info(
                "domain %s: state %s -> %s, dkim %s -> %s",
                row.domain, row.state, state, row.dkim_state, dkim_state,
            )
        report = dataclasses.replace(report, state=state, dkim_state=dkim_state)
        if not row.claim:  # last_report(domain) is about the domain's own row
            self._reports[row.domain] = report
        if changed and self.on_change is not None:
            try:
                await self.on_change(updated, report)
            except Exception:
                log.exception("domain %s: state change hook failed", row.domain)
        return report

    # ---- the periodic job ----

    def request_check(self, domain: str | None = None) -> None:
        """Have the running loop check ``domain`` (every domain when None) as soon as it can."""
        if domain is None:
            self._request_all = True
        else:
            self._requested.add(normalize_domain(domain))
        self._wake.set()

    def _interval(self, report: DomainReport | None) -> float:
        dns_cfg = self.cfg.dns
        if report is None or report.dns_error or report.state != "verified":
            return dns_cfg.pending_recheck_interval
        return dns_cfg.recheck_interval

    async def _scheduled_check(self, row: Domain) -> None:
        report: DomainReport | None = None
        try:
            report = await self._check_row(row)
        except SecretBoxError as exc:  # a stored-key problem, not a bug: no traceback every few minutes
            log.error("domain %s: cannot check, the stored DKIM keys are unreadable: %s", row.domain, exc)
        except Exception:
            log.exception("domain %s: DNS check failed", row.domain)
        self._due[row.domain] = trio.current_time() + self._interval(report)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: check every domain now, then each again when due (see the module docstring)."""
        poll = min(self.cfg.dns.pending_recheck_interval, self.cfg.dns.recheck_interval)
        task_status.started()
        while True:
            wake = self._wake = trio.Event()
            requested, self._requested = self._requested, set()
            request_all, self._request_all = self._request_all, False
            try:
                for domain, did in await self.store.call(lambda s: s.expire_claims(self.cfg.dns.pending_claim_ttl)):
                    log.info("domain %s: the pending claim of %s expired", domain, did)
                rows = await self.store.call(_all_domains)
            except StoreError as exc:
                log.warning("DNS re-check: cannot list domains (%s); retrying in %g s", exc, poll)
                with trio.move_on_after(poll):
                    await wake.wait()
                self._requested |= requested
                self._request_all |= request_all
                continue
            present = {row.domain for row in rows}
            for gone in set(self._due) - present:
                del self._due[gone]
                self._reports.pop(gone, None)
            now = trio.current_time()
            due = [
                row for row in rows
                if request_all or row.domain in requested or self._due.get(row.domain, -math.inf) <= now
            ]
            if due:
                async with trio.open_nursery() as nursery:
                    for row in due:
                        nursery.start_soon(self._scheduled_check, row)
            next_at = min([trio.current_time() + poll, *self._due.values()])
            with trio.move_on_at(next_at):
                await wake.wait()


async def check_once(
    cfg: Config,
    store: Store | AsyncStore | None,
    domain: str,
    *,
    lookup: TxtLookup | None = None,
    record_states: bool = True,
) -> DomainReport:
    """Check one enrolled domain (``atmos admin domain check X``): ``trio.run(check_once, cfg, None, X)``.

    ``store``: an AsyncStore, a synchronous Store (wrapped; not closed), or None to open
    ``cfg.store_url`` for this call. With ``record_states`` the new states are written (as the periodic
    job would); without, the report still says which states the check would give. Raises
    UnknownDomain, and relay.mail.dkimkeys.SecretBoxError when the stored keys cannot be decrypted.
    """
    opened: AsyncStore | None = None
    if store is None:
        astore = opened = AsyncStore(open_store(cfg.store_url))
    elif isinstance(store, AsyncStore):
        astore = store
    else:
        astore = AsyncStore(store)
    try:
        verifier = DomainVerifier(astore, cfg, lookup=lookup)
        if record_states:
            return await verifier.check(domain)
        row = await astore.get_domain(normalize_domain(domain))
        if row is None:
            raise UnknownDomain(normalize_domain(domain))
        expected = await verifier._expected_for(row)
        report = await check_domain(row.domain, expected=expected, did=row.did, lookup=verifier.lookup)
        state, dkim_state = next_states(row.state, row.dkim_state, report)
        return dataclasses.replace(report, state=state, dkim_state=dkim_state)
    finally:
        if opened is not None:
            await opened.aclose()
