"""The store: every query of the relay, written once, over a ``relay.store.db.Database``.

Backends (``relay.store.open_store``): SQLite (relay.store.sqlite, the default) and PostgreSQL
(relay.store.postgres, for several machines on one database). The SQL here is the dialect both
share; relay.store.db says what a backend translates and what concurrency it guarantees.

Errors::

    StoreError
    ├── StoreUnavailable     database locked past busy_timeout, unreachable, disk full, I/O error
    ├── UnsupportedStore     a store URL this build cannot open
    ├── SchemaTooNew         the database was migrated by a newer build
    ├── NotFound             a mutator named a row that does not exist (getters return None)
    ├── InvalidRow           a value broke a constraint (unknown status, ...)
    ├── DomainLimitReached   a DID already has MAX_DOMAINS_PER_DID domains
    └── DomainTaken          the domain is enrolled under another DID

The relay maps StoreUnavailable to ``451 4.4.2`` / 503 (relay.errors.QueueUnavailable).
Methods are synchronous; the relay runs them in a worker thread through relay.store.aio.AsyncStore.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from relay.address import normalize_domain
from relay.mail.text import display_text
from relay.store import migrations
from relay.store.db import Conn, Database, Result, Row
from relay.store.errors import (
    MAX_DOMAINS_PER_DID,
    DomainLimitReached,
    DomainTaken,
    InvalidRow,
    NotFound,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
    UnsupportedStore,
)
from relay.store.rows import (
    MESSAGE_STATUSES,
    TERMINAL_STATUSES,
    Attempt,
    DkimState,
    Domain,
    DomainState,
    IdempotencyClaim,
    IdempotentResponse,
    InboundTlsReport,
    LabelRow,
    LeaseAsk,
    LeaseGrant,
    LeaseReport,
    LeaseScope,
    Member,
    MemberStatus,
    MemberTotal,
    MessageRow,
    MessageStatus,
    NewAttempt,
    NodeCommand,
    NodeRow,
    OutboxEvent,
    ReputationCount,
    SendCount,
    SpoolMark,
    StatusUpdate,
    StsPolicyRow,
    Suppression,
    TlsRptCount,
    UnattributedReport,
    Webhook,
    WebSession,
    WriteOp,
)

__all__ = [
    "MAX_DOMAINS_PER_DID",
    "MESSAGE_RETENTION",
    "REPUTATION_RETENTION",
    "SEND_COUNTER_RETENTION",
    "Attempt",
    "DkimState",
    "Domain",
    "DomainLimitReached",
    "DomainState",
    "DomainTaken",
    "IdempotentResponse",
    "InvalidRow",
    "Member",
    "MemberStatus",
    "MemberTotal",
    "MessageRow",
    "MessageStatus",
    "NewAttempt",
    "NotFound",
    "ReputationCount",
    "SchemaTooNew",
    "SendCount",
    "StatusUpdate",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Suppression",
    "UnsupportedStore",
    "Webhook",
    "WriteOp",
]  # row types are re-exported: callers may take everything from relay.store.base

MESSAGE_RETENTION = 30 * 86400.0  # DESIGN §4: terminal message rows are kept 30 days
SEND_COUNTER_RETENTION = 48 * 3600  # DESIGN §4: rate counters 48 h
REPUTATION_RETENTION = 15 * 86400  # /member/deliverability shows 14 days (plus today's partial day)

Clock = Callable[[], float]

_INSERT_MESSAGE = """
INSERT INTO messages (id, queue_id, did, from_domain, mail_from, recipient, subject, category, source,
                      status, attempts, last_reply, next_attempt_at, created_at, updated_at, tags, metadata)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
"""
# ON CONFLICT (id) rather than INSERT OR IGNORE: OR IGNORE would also silently skip CHECK failures.

# A None handle keeps the stored one; updated_at moves only when the handle changes.
_UPSERT_MEMBER = """
INSERT INTO members (did, handle, status, created_at, updated_at) VALUES (?, ?, 'active', ?, ?)
ON CONFLICT (did) DO UPDATE SET
    handle = COALESCE(excluded.handle, members.handle),
    updated_at = CASE WHEN excluded.handle IS NOT NULL AND excluded.handle IS DISTINCT FROM members.handle
                      THEN excluded.updated_at ELSE members.updated_at END
"""

_UPDATE_STATUS = """
UPDATE messages SET status = ?, updated_at = ?, attempts = COALESCE(?, attempts),
       last_reply = COALESCE(?, last_reply), next_attempt_at = ?
WHERE id = ?
"""

_INSERT_ATTEMPT = """
INSERT INTO attempts (message_id, at, mx_host, reply, tls, outcome) VALUES (?, ?, ?, ?, ?, ?)
"""

_ADD_SEND = """
INSERT INTO send_counters (did, domain, bucket_start, count) VALUES (?, ?, ?, ?)
ON CONFLICT (did, domain, bucket_start) DO UPDATE SET count = send_counters.count + excluded.count
"""
_ADD_EVENT = """
INSERT INTO reputation_counts (did, domain, bucket_start, kind, klass, count) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (did, bucket_start, domain, kind, klass) DO UPDATE SET count = reputation_counts.count + excluded.count
"""
_ADD_TOTAL = """
INSERT INTO member_totals (did, kind, count) VALUES (?, ?, ?)
ON CONFLICT (did, kind) DO UPDATE SET count = member_totals.count + excluded.count
"""

# A lease counts its granted units while live, its used units once expired (a crashed holder's unused
# reserve is free again after the TTL; what it spent still counts).
_COUNTED = "CASE WHEN expires_at > ? THEN granted ELSE used END"
_LEASE_TOTALS = f"""
SELECT bucket_start, SUM({_COUNTED}) AS n FROM rate_leases
WHERE scope = ? AND subject = ? AND bucket_start >= ? AND bucket_start <= ? GROUP BY bucket_start
"""
# The holder's lease handed back down to what it spent (expires_at now: only ``used`` counts from here on).
_RETURN_LEASE = """
INSERT INTO rate_leases (scope, subject, bucket_start, holder, granted, used, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (scope, subject, bucket_start, holder) DO UPDATE SET
    granted = excluded.granted, used = excluded.used, expires_at = excluded.expires_at
"""
# Renewed while live (a holder that spent more than it was granted, ``consume``, is counted for all of it);
# an expired lease is not revived (its units may be someone else's now): it keeps counting ``used`` only.
_RENEW_LEASE = """
INSERT INTO rate_leases (scope, subject, bucket_start, holder, granted, used, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (scope, subject, bucket_start, holder) DO UPDATE SET
    used = excluded.used,
    granted = CASE WHEN rate_leases.expires_at > ? AND rate_leases.granted > excluded.used
                   THEN rate_leases.granted ELSE excluded.used END,
    expires_at = CASE WHEN rate_leases.expires_at > ? THEN excluded.expires_at ELSE rate_leases.expires_at END
RETURNING expires_at
"""

_TERMINAL = "status IN ({})".format(", ".join(f"'{s}'" for s in TERMINAL_STATUSES))


class Store:
    """The relay's store on one database; see the module docstring."""

    def __init__(self, db: Database, *, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock
        migrations.migrate(db)

    @property
    def dialect(self) -> str:
        return self._db.dialect

    @property
    def concurrency(self) -> int:
        """How many calls may run at once (relay.store.aio): one per connection the backend has."""
        return self._db.concurrency

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        return migrations.current_version(self._db)

    # -- plumbing -----------------------------------------------------------------------------

    def _all(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Row]:
        with self._db.read() as c:
            return c.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._db.read() as c:
            return c.execute(sql, params).fetchone()

    # -- members ------------------------------------------------------------------------------

    def create_member(self, did: str, handle: str | None = None) -> Member:
        """Create the member, or update its handle; None keeps the stored handle."""
        now = self._clock()
        handle = _norm_handle(handle) if handle else None
        with self._db.write() as c:
            if handle is not None:
                # atproto handles move between DIDs: the DID that proved it last owns it.
                c.execute(
                    "UPDATE members SET handle = NULL, updated_at = ? WHERE handle = ? AND did != ?",
                    (now, handle, did),
                )
            c.execute(_UPSERT_MEMBER, (did, handle, now, now))
            return _member(_first(c.execute("SELECT * FROM members WHERE did = ?", (did,))))

    def get_member(self, did: str) -> Member | None:
        row = self._one("SELECT * FROM members WHERE did = ?", (did,))
        return _member(row) if row else None

    def get_member_by_handle(self, handle: str) -> Member | None:
        row = self._one("SELECT * FROM members WHERE handle = ?", (_norm_handle(handle),))
        return _member(row) if row else None

    def list_members(self) -> list[Member]:
        return [_member(r) for r in self._all("SELECT * FROM members ORDER BY created_at, did")]

    def set_member_status(self, did: str, status: MemberStatus, reason: str | None = None) -> Member:
        """Suspend (with a reason shown on /account) or reactivate (clears the reason)."""
        reason = reason if status == "suspended" else None
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE members SET status = ?, suspension_reason = ?, updated_at = ? WHERE did = ?",
                (status, reason, self._clock(), did),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no member {did}")
            _bump(c, "member_status")  # in the same transaction: a node that sees the new seq sees the status
            return _member(_first(c.execute("SELECT * FROM members WHERE did = ?", (did,))))

    # -- domains ------------------------------------------------------------------------------

    def add_domain(
        self,
        did: str,
        domain: str,
        *,
        selector: str,
        rsa_private: bytes,
        ed25519_private: bytes,
        verify_token: str,
        state: DomainState = "pending",
        claim_ttl: float | None = None,
    ) -> Domain:
        """Enroll (claim) a domain. Re-adding one's own domain returns the stored row unchanged (its
        DKIM keys may already be published). ``state="verified"`` is for operator enrollment without
        DNS checks (``atmos admin enroll --skip-dns``, dev demo): it takes the domain from any pending
        claimant. A domain another DID holds *pending* is not taken: this DID gets a competing claim
        (``domain_claims``) and the first DNS proof wins (``promote_claim``); a pending claim older
        than ``claim_ttl`` seconds is dropped first (DomainTaken only for a verified domain)."""
        domain = normalize_domain(domain)
        now = self._clock()
        with self._db.write() as c:
            if c.execute("SELECT 1 FROM members WHERE did = ?", (did,)).fetchone() is None:
                raise NotFound(f"no member {did}")
            if claim_ttl is not None:
                _expire(c, domain, now - claim_ttl)
            existing = c.execute("SELECT * FROM domains WHERE domain = ?", (domain,)).fetchone()
            mine = c.execute("SELECT * FROM domain_claims WHERE domain = ? AND did = ?", (domain, did)).fetchone()
            if existing is not None and existing["did"] == did:
                return _domain(existing)
            if existing is not None and existing["state"] == "verified":
                raise DomainTaken(domain)
            if mine is not None and state != "verified":
                return _claim(mine)
            # Counted under the write lock, so two processes cannot both add a third domain.
            count = _first(c.execute(
                "SELECT (SELECT COUNT(*) FROM domains WHERE did = ?) + (SELECT COUNT(*) FROM domain_claims"
                " WHERE did = ?) AS n", (did, did)))["n"]
            if count >= MAX_DOMAINS_PER_DID and mine is None:
                raise DomainLimitReached(did)
            if existing is not None and state != "verified":
                c.execute(
                    "INSERT INTO domain_claims (domain, did, selector, rsa_private, ed25519_private, verify_token,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (domain, did, selector, rsa_private, ed25519_private, verify_token, now))
                return _claim(_first(c.execute("SELECT * FROM domain_claims WHERE domain = ? AND did = ?",
                                        (domain, did))))
            if existing is not None:  # verified by the operator: every pending claimant loses
                c.execute("DELETE FROM domains WHERE domain = ?", (domain,))
            c.execute("DELETE FROM domain_claims WHERE domain = ? AND did = ?", (domain, did))
            c.execute(
                "INSERT INTO domains (domain, did, selector, rsa_private, ed25519_private, verify_token,"
                " state, created_at, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (domain, did, selector, rsa_private, ed25519_private, verify_token, state, now,
                 now if state == "verified" else None),
            )  # fmt: skip
            if state == "verified":
                c.execute("DELETE FROM domain_claims WHERE domain = ?", (domain,))
            return _domain(_first(c.execute("SELECT * FROM domains WHERE domain = ?", (domain,))))

    def get_domain(self, domain: str) -> Domain | None:
        row = self._one("SELECT * FROM domains WHERE domain = ?", (normalize_domain(domain),))
        return _domain(row) if row else None

    def domains_for(self, did: str) -> list[Domain]:
        """The DID's domains, its competing pending claims included (``Domain.claim``)."""
        rows = self._all("SELECT * FROM domains WHERE did = ? ORDER BY created_at, domain", (did,))
        claims = self._all("SELECT * FROM domain_claims WHERE did = ? ORDER BY created_at, domain", (did,))
        return sorted([*map(_domain, rows), *map(_claim, claims)], key=lambda d: (d.created_at, d.domain))

    def promote_claim(self, domain: str, did: str) -> Domain:
        """``did`` proved the domain first: its claim becomes the verified row, the others are dropped."""
        domain = normalize_domain(domain)
        now = self._clock()
        with self._db.write() as c:
            existing = c.execute("SELECT * FROM domains WHERE domain = ?", (domain,)).fetchone()
            if existing is not None and existing["did"] == did:
                c.execute("UPDATE domains SET state = 'verified', verified_at = COALESCE(verified_at, ?)"
                          " WHERE domain = ?", (now, domain))
            else:
                if existing is not None and existing["state"] == "verified":
                    raise DomainTaken(domain)
                claim = c.execute("SELECT * FROM domain_claims WHERE domain = ? AND did = ?",
                                  (domain, did)).fetchone()
                if claim is None:
                    raise NotFound(f"no claim of {domain} by {did}")
                c.execute("DELETE FROM domains WHERE domain = ?", (domain,))
                c.execute(
                    "INSERT INTO domains (domain, did, selector, rsa_private, ed25519_private, verify_token,"
                    " state, created_at, verified_at) VALUES (?, ?, ?, ?, ?, ?, 'verified', ?, ?)",
                    (domain, did, claim["selector"], claim["rsa_private"], claim["ed25519_private"],
                     claim["verify_token"], claim["created_at"], now))
            c.execute("DELETE FROM domain_claims WHERE domain = ?", (domain,))
            return _domain(_first(c.execute("SELECT * FROM domains WHERE domain = ?", (domain,))))

    def release_domain(self, domain: str) -> int:
        """Drop a domain and every claim on it (``atmos admin domain release``); rows removed."""
        domain = normalize_domain(domain)
        with self._db.write() as c:
            n = c.execute("DELETE FROM domains WHERE domain = ?", (domain,)).rowcount
            return int(n) + int(c.execute("DELETE FROM domain_claims WHERE domain = ?", (domain,)).rowcount)

    def expire_claims(self, ttl: float) -> list[tuple[str, str]]:
        """Drop pending claims (own rows and competing ones) older than ``ttl``; (domain, did) dropped."""
        cutoff = self._clock() - ttl
        with self._db.write() as c:
            old = [(r["domain"], r["did"]) for r in c.execute(
                "SELECT domain, did FROM domains WHERE state = 'pending' AND created_at < ? UNION ALL"
                " SELECT domain, did FROM domain_claims WHERE created_at < ?", (cutoff, cutoff)).fetchall()]
            for domain in {d for d, _ in old}:
                _expire(c, domain, cutoff)
            return old

    def set_domain_state(
        self, domain: str, state: DomainState | None = None, dkim_state: DkimState | None = None
    ) -> Domain:
        """Record a DNS check; None leaves that part unchanged. ``verified_at`` keeps the
        first verification so a DNS hiccup does not restart warming."""
        domain = normalize_domain(domain)
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE domains SET state = COALESCE(?, state), dkim_state = COALESCE(?, dkim_state),"
                " verified_at = CASE WHEN COALESCE(?, state) = 'verified' THEN COALESCE(verified_at, ?)"
                " ELSE verified_at END WHERE domain = ?",
                (state, dkim_state, state, self._clock(), domain),
            )
            if state == "verified":  # the first DNS proof wins: competing claims are dropped
                c.execute("DELETE FROM domain_claims WHERE domain = ?", (domain,))
            return _domain(_updated(c, cur, domain))

    def set_forward_to(self, domain: str, forward_to: str | None) -> Domain:
        """A new target starts unconfirmed (replies to it are refused until its link is followed);
        setting the same target again keeps its confirmation."""
        domain = normalize_domain(domain)
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE domains SET forward_confirmed_at = CASE WHEN forward_to IS NOT DISTINCT FROM ?"
                " THEN forward_confirmed_at ELSE NULL END, forward_to = ? WHERE domain = ?",
                (forward_to or None, forward_to or None, domain),
            )
            return _domain(_updated(c, cur, domain))

    def set_default_category(self, domain: str, category: str) -> Domain:
        domain = normalize_domain(domain)
        with self._db.write() as c:
            cur = c.execute("UPDATE domains SET default_category = ? WHERE domain = ?", (category, domain))
            return _domain(_updated(c, cur, domain))

    def confirm_forward_to(self, domain: str, forward_to: str, at: float) -> Domain | None:
        """Mark ``forward_to`` confirmed if it is still the domain's target (None when it changed since)."""
        domain = normalize_domain(domain)
        with self._db.write() as c:
            cur = c.execute("UPDATE domains SET forward_confirmed_at = COALESCE(forward_confirmed_at, ?)"
                            " WHERE domain = ? AND forward_to = ?", (at, domain, forward_to))
            if cur.rowcount == 0:
                return None
            return _domain(_first(c.execute("SELECT * FROM domains WHERE domain = ?", (domain,))))

    # -- abuse resistance ---------------------------------------------------------------------

    def record_complaint(self, rcpt_id: int, did: str, recipient: str, feedback_type: str, source: str) -> bool:
        """True the first time recipient ``rcpt_id`` is complained about; False for every repeat."""
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO complaints (rcpt_id, did, recipient, feedback_type, source, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rcpt_id) DO NOTHING",
                (rcpt_id, did, recipient, feedback_type[:32], source[:200], self._clock()))
            return cur.rowcount > 0

    def add_unattributed(self, kind: str, peer: str, mail_from: str, reason: str, summary: str) -> int:
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO unattributed_reports (kind, peer, mail_from, reason, summary, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id", (kind, peer[:64], mail_from[:320], reason[:300],
                                                          summary[:1000], self._clock()))
            return int(_first(cur)["id"])

    def list_unattributed(self, limit: int = 100) -> list[UnattributedReport]:
        rows = self._all("SELECT * FROM unattributed_reports ORDER BY id DESC LIMIT ?", (limit,))
        return [UnattributedReport(**dict(r)) for r in rows]

    def take_daily(self, scope: str, key: str, day: int, cap: int) -> bool:
        """Count one against (scope, key, day) unless ``cap`` is reached; atomic across processes."""
        with self._db.write() as c:
            row = c.execute("SELECT count FROM daily_counts WHERE scope = ? AND key = ? AND day = ?",
                            (scope, key, day)).fetchone()
            if row is not None and int(row["count"]) >= cap:
                return False
            c.execute("INSERT INTO daily_counts (scope, key, day, count) VALUES (?, ?, ?, 1)"
                      " ON CONFLICT (scope, key, day) DO UPDATE SET count = daily_counts.count + 1", (scope, key, day))
            return True

    # -- budget leases (relay.reputation.limiter, issue 17) -------------------------------------

    def lease_budget(
        self, holder: str, asks: Sequence[LeaseAsk], now: float, ttl: float, size: Callable[[int, int], int]
    ) -> list[LeaseGrant]:
        """Lease rate budget for every ask, all or nothing, in one write transaction (atomic across
        processes and machines: relay.store.db).

        Each ask first hands ``holder``'s lease on its bucket back down to ``ask.used`` (reporting what it
        spent). Then, if every ask's ``need`` fits each of its caps (every holder's counted units in the
        cap's buckets, plus ``need``, at most the limit), each gets ``size(need, available)`` units (clamped
        to [need, available]), ``need`` of them spent at once, live until ``now + ttl``; the grant is a
        conditional UPDATE that re-counts the other holders, so no interleaving can let the leases of a
        window exceed its limit. Otherwise nothing is granted (``units`` 0 everywhere)."""
        with self._db.write() as c:
            counted: list[dict[int, int]] = []
            room: list[int] = []
            for a in asks:
                c.execute(_RETURN_LEASE, (a.scope, a.subject, a.bucket, holder, a.used, a.used, now))
                totals = _lease_totals(c, a.scope, a.subject, min(f for f, _ in a.caps), a.bucket, now)
                counted.append(totals)
                room.append(min(limit - sum(n for b, n in totals.items() if b >= first) for first, limit in a.caps))
            if any(free < a.need for a, free in zip(asks, room, strict=True)):
                return [LeaseGrant(a.scope, a.subject, a.bucket, 0, now, t) for a, t in zip(asks, counted, strict=True)]
            out = []
            for a, free, totals in zip(asks, room, counted, strict=True):
                units = max(a.need, min(free, size(a.need, free)))
                guard = " AND ".join(
                    f"(SELECT COALESCE(SUM({_COUNTED}), 0) FROM rate_leases WHERE scope = ? AND subject = ?"
                    " AND bucket_start >= ? AND bucket_start <= ? AND holder != ?) + ? <= ?" for _ in a.caps)
                params: list[object] = [a.used + units, a.used + a.need, now + ttl,
                                        a.scope, a.subject, a.bucket, holder]
                for first, limit in a.caps:
                    params += [now, a.scope, a.subject, first, a.bucket, holder, a.used + units, limit]
                cur = c.execute("UPDATE rate_leases SET granted = ?, used = ?, expires_at = ? WHERE scope = ?"
                                f" AND subject = ? AND bucket_start = ? AND holder = ? AND {guard}", params)
                if cur.rowcount != 1:  # unreachable under the write lock: roll the whole request back
                    raise StoreError(f"lease on {a.scope} {a.subject} would exceed its limit")
                totals = dict(totals)
                totals[a.bucket] = totals.get(a.bucket, 0) + units
                out.append(LeaseGrant(a.scope, a.subject, a.bucket, units, now + ttl, totals))
            return out

    def report_leases(self, holder: str, reports: Sequence[LeaseReport], now: float, ttl: float) -> list[bool]:
        """Write what ``holder`` spent of its leases; renew those it keeps (``keep``), hand the unused units of
        the others back. One flag per report: the lease is still live (False: it had expired, its unused
        units may be another holder's now, so the holder must lease again)."""
        live: list[bool] = []
        with self._db.write() as c:
            for r in reports:
                if not r.keep:
                    c.execute(_RETURN_LEASE, (r.scope, r.subject, r.bucket, holder, r.used, r.used, now))
                    live.append(False)
                    continue
                row = _first(c.execute(_RENEW_LEASE, (r.scope, r.subject, r.bucket, holder, r.used, r.used, now + ttl,
                                                      now, now)))
                live.append(float(row["expires_at"]) > now)
        return live

    def lease_totals(
        self, keys: Sequence[tuple[LeaseScope, str, int, int]], now: float
    ) -> list[dict[int, int]]:
        """Counted units per bucket of each (scope, subject, first bucket, last bucket), every holder's."""
        with self._db.read() as c:
            return [_lease_totals(c, scope, subject, first, last, now) for scope, subject, first, last in keys]

    def change_seq(self, name: str) -> int:
        """The change counter ``name`` ('member_status': bumped by every ``set_member_status``); 0 before the
        first change. Polling it is one primary-key read: nodes learn of a change within their poll interval."""
        row = self._one("SELECT seq FROM change_counters WHERE name = ?", (name,))
        return int(row["seq"]) if row is not None else 0

    # -- API keys -----------------------------------------------------------------------------

    def set_api_key_hash(self, did: str, key_hash: str) -> None:
        with self._db.write() as c:
            if c.execute("SELECT 1 FROM members WHERE did = ?", (did,)).fetchone() is None:
                raise NotFound(f"no member {did}")
            c.execute(
                "INSERT INTO api_keys (did, hash, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (did) DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at",
                (did, key_hash, self._clock()),
            )

    def get_api_key_hash(self, did: str) -> str | None:
        row = self._one("SELECT hash FROM api_keys WHERE did = ?", (did,))
        return str(row["hash"]) if row else None

    # -- messages and attempts ----------------------------------------------------------------

    def insert_messages(self, rows: Sequence[MessageRow]) -> int:
        """Insert recipient rows; ids already present are skipped (spool recovery replays)."""
        with self._db.write() as c:
            return _insert_messages(c, rows)

    def update_statuses(self, updates: Sequence[StatusUpdate]) -> int:
        with self._db.write() as c:
            return _update_statuses(c, updates)

    def add_attempts(self, rows: Sequence[NewAttempt]) -> None:
        with self._db.write() as c:
            _add_attempts(c, rows)

    def apply_batch(self, ops: Sequence[WriteOp]) -> None:
        """Apply mixed ops in one transaction: inserts, then updates, then attempts, each
        kind in submission order. Safe because a row is always inserted before it is updated,
        and an update for a missing row is a no-op that recovery later re-derives."""
        with self._db.write() as c:
            _insert_messages(c, [op for op in ops if isinstance(op, MessageRow)])
            _update_statuses(c, [op for op in ops if isinstance(op, StatusUpdate)])
            _add_attempts(c, [op for op in ops if isinstance(op, NewAttempt)])
            _put_idempotents(c, [op for op in ops if isinstance(op, IdempotentResponse)])
            counts = [op for op in ops if isinstance(op, ReputationCount)]
            if counts:
                c.executemany(_ADD_EVENT, [(r.did, r.domain, r.bucket_start, r.kind, r.klass, r.count) for r in counts])
            totals = [op for op in ops if isinstance(op, MemberTotal)]
            if totals:
                c.executemany(_ADD_TOTAL, [(r.did, r.kind, r.count) for r in totals])
            marks = [op for op in ops if isinstance(op, SpoolMark)]
            if marks:  # in the same transaction as the rows it vouches for
                m = marks[-1]
                c.execute('INSERT INTO spool_marks (node, segment, "offset", updated_at) VALUES (?, ?, ?, ?)'
                          ' ON CONFLICT (node) DO UPDATE SET segment = excluded.segment,'
                          ' "offset" = excluded."offset", updated_at = excluded.updated_at',
                          (m.node, m.segment, m.offset, m.at))

    def spool_mark(self, node: int = 1) -> tuple[int, int] | None:
        """How far this store has caught up with the node's spool log; None before the first mark."""
        row = self._one('SELECT segment, "offset" FROM spool_marks WHERE node = ?', (node,))
        return (int(row["segment"]), int(row["offset"])) if row else None

    def get_message(self, message_id: int) -> MessageRow | None:
        if not _INT64_MIN <= message_id <= _INT64_MAX:  # an id from a URL: no row beyond SQLite's range
            return None
        row = self._one("SELECT * FROM messages WHERE id = ?", (message_id,))
        return _message(row) if row else None

    def list_messages(
        self,
        did: str | None = None,
        status: MessageStatus | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[MessageRow]:
        """Newest first; page with ``before_id`` = the last id of the previous page."""
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (("did = ?", did), ("status = ?", status), ("id < ?", before_id)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT * FROM messages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._all(sql + " ORDER BY id DESC LIMIT ?", [*params, max(1, limit)])
        return [_message(r) for r in rows]

    def counts_by_status(self) -> dict[MessageStatus, int]:
        counts: dict[MessageStatus, int] = dict.fromkeys(MESSAGE_STATUSES, 0)
        for row in self._all("SELECT status, COUNT(*) AS n FROM messages GROUP BY status"):
            counts[row["status"]] = int(row["n"])
        return counts

    def attempts_for(self, message_id: int) -> list[Attempt]:
        if not _INT64_MIN <= message_id <= _INT64_MAX:
            return []
        rows = self._all("SELECT * FROM attempts WHERE message_id = ? ORDER BY at, id", (message_id,))
        return [_attempt(r) for r in rows]

    # -- suppressions -------------------------------------------------------------------------

    def add_suppression(self, did: str, recipient: str, reason: str) -> bool:
        """True when newly added; an existing entry keeps its first reason and time."""
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO suppressions (did, recipient, reason, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (did, recipient) DO NOTHING",
                (did, _norm_address(recipient), reason, self._clock()),
            )
            return cur.rowcount > 0

    def remove_suppression(self, did: str, recipient: str) -> bool:
        with self._db.write() as c:
            cur = c.execute(
                "DELETE FROM suppressions WHERE did = ? AND recipient = ?", (did, _norm_address(recipient))
            )
            return cur.rowcount > 0

    def list_suppressions(self, did: str) -> list[Suppression]:
        rows = self._all(
            "SELECT * FROM suppressions WHERE did = ? ORDER BY created_at DESC, recipient", (did,)
        )
        return [Suppression(**dict(r)) for r in rows]

    def is_suppressed(self, did: str, recipient: str) -> bool:
        row = self._one(
            "SELECT 1 FROM suppressions WHERE did = ? AND recipient = ?", (did, _norm_address(recipient))
        )
        return row is not None

    # -- webhooks ----------------------------------------------------------------------------

    def set_webhook(self, hook: Webhook) -> Webhook:
        """Create or replace the member's endpoint (a new secret each time); ``created_at`` is now."""
        with self._db.write() as c:
            if c.execute("SELECT 1 FROM members WHERE did = ?", (hook.did,)).fetchone() is None:
                raise NotFound(f"no member {hook.did}")
            now = self._clock()
            c.execute(
                "INSERT INTO webhooks (did, url, secret, events, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (did) DO UPDATE SET url = excluded.url, secret = excluded.secret,"
                " events = excluded.events, created_at = excluded.created_at",
                (hook.did, hook.url, hook.secret, ",".join(hook.events), now),
            )
            return Webhook(did=hook.did, url=hook.url, secret=hook.secret, events=tuple(hook.events),
                           created_at=now)

    def get_webhook(self, did: str) -> Webhook | None:
        row = self._one("SELECT * FROM webhooks WHERE did = ?", (did,))
        return _webhook(row) if row else None

    def delete_webhook(self, did: str) -> bool:
        with self._db.write() as c:
            return c.execute("DELETE FROM webhooks WHERE did = ?", (did,)).rowcount > 0

    def list_webhooks(self) -> list[Webhook]:
        return [_webhook(r) for r in self._all("SELECT * FROM webhooks ORDER BY did")]

    # -- webhook outbox -------------------------------------------------------------------------

    def outbox_add(self, events: Sequence[OutboxEvent]) -> int:
        """Queue events (an id already queued is kept as it is); returns how many were new."""
        with self._db.write() as c:
            return c.executemany(
                "INSERT INTO webhook_outbox (id, did, body, attempts, next_attempt_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                [(e.id, e.did, e.body, e.attempts, e.next_attempt_at, e.created_at) for e in events])

    def outbox_members_due(self, now: float, limit: int = 1000) -> list[str]:
        rows = self._all("SELECT did FROM webhook_outbox WHERE next_attempt_at <= ? GROUP BY did"
                         " ORDER BY MIN(next_attempt_at) LIMIT ?", (now, limit))
        return [r["did"] for r in rows]

    def outbox_due(self, did: str, now: float, limit: int = 20) -> list[OutboxEvent]:
        rows = self._all("SELECT * FROM webhook_outbox WHERE did = ? AND next_attempt_at <= ?"
                         " ORDER BY next_attempt_at, created_at LIMIT ?", (did, now, limit))
        return [OutboxEvent(**dict(r)) for r in rows]

    def outbox_next_due(self) -> float | None:
        row = self._one("SELECT MIN(next_attempt_at) AS t FROM webhook_outbox")
        return None if row is None or row["t"] is None else float(row["t"])

    def outbox_done(self, event_id: str) -> None:
        with self._db.write() as c:
            c.execute("DELETE FROM webhook_outbox WHERE id = ?", (event_id,))

    def outbox_retry(self, event_id: str, attempts: int, next_attempt_at: float) -> None:
        with self._db.write() as c:
            c.execute("UPDATE webhook_outbox SET attempts = ?, next_attempt_at = ? WHERE id = ?",
                      (attempts, next_attempt_at, event_id))

    def outbox_drop_member(self, did: str) -> int:
        with self._db.write() as c:
            return c.execute("DELETE FROM webhook_outbox WHERE did = ?", (did,)).rowcount

    # -- pending OAuth sign-ins -----------------------------------------------------------------

    def put_oauth_pending(self, state: str, data: str, created_at: float) -> None:
        with self._db.write() as c:
            c.execute("INSERT INTO oauth_pending (state, data, created_at) VALUES (?, ?, ?)"
                      " ON CONFLICT (state) DO UPDATE SET data = excluded.data", (state, data, created_at))

    def take_oauth_pending(self, state: str) -> tuple[str, float] | None:
        """The pending sign-in for ``state``, removed in the same step: each state works once."""
        with self._db.write() as c:
            row = c.execute("DELETE FROM oauth_pending WHERE state = ? RETURNING data, created_at",
                            (state,)).fetchone()
            return None if row is None else (str(row["data"]), float(row["created_at"]))

    def purge_oauth_pending(self, older_than: float) -> int:
        with self._db.write() as c:
            return c.execute("DELETE FROM oauth_pending WHERE created_at < ?", (older_than,)).rowcount

    # -- idempotency --------------------------------------------------------------------------

    def get_idempotent(self, did: str, key: str) -> IdempotentResponse | None:
        row = self._one("SELECT * FROM idempotency WHERE did = ? AND key = ?", (did, key))
        return IdempotentResponse(**dict(row)) if row else None

    def put_idempotent(
        self,
        did: str,
        key: str,
        request_hash: str,
        status_code: int,
        response_json: str,
        created_at: float | None = None,
    ) -> bool:
        """Store the first response for (did, key); False if one is already stored (it wins)."""
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO idempotency (did, key, request_hash, status_code, response_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (did, key) DO NOTHING",
                (
                    did,
                    key,
                    request_hash,
                    status_code,
                    response_json,
                    self._clock() if created_at is None else created_at,
                ),
            )
            return cur.rowcount > 0

    def purge_idempotent(self, older_than: float) -> int:
        with self._db.write() as c:
            c.execute("DELETE FROM idempotency_claims WHERE expires_at < ?", (older_than,))
            return c.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,)).rowcount

    def claim_idempotent(
        self, did: str, key: str, holder: str, request_hash: str, now: float, ttl: float, stored_after: float
    ) -> IdempotencyClaim:
        """Claim (did, key) for one request before it sends, across every node sharing the store.

        'stored' with the answer when one was stored after ``stored_after``; else 'mine' when the claim is
        new, or taken over from a holder whose claim expired (a node that died mid-request), live until
        ``now + ttl``; else 'busy' with the live claim's request hash."""
        with self._db.write() as c:
            row = c.execute("SELECT * FROM idempotency WHERE did = ? AND key = ? AND created_at > ?",
                            (did, key, stored_after)).fetchone()
            if row is not None:
                return IdempotencyClaim("stored", IdempotentResponse(**dict(row)))
            cur = c.execute(
                "INSERT INTO idempotency_claims (did, key, holder, request_hash, expires_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (did, key) DO UPDATE SET holder = excluded.holder,"
                " request_hash = excluded.request_hash, expires_at = excluded.expires_at"
                " WHERE idempotency_claims.expires_at <= ?", (did, key, holder, request_hash, now + ttl, now))
            if cur.rowcount == 1:
                return IdempotencyClaim("mine")
            other = _first(c.execute("SELECT request_hash FROM idempotency_claims WHERE did = ? AND key = ?",
                                     (did, key)))
            return IdempotencyClaim("busy", request_hash=str(other["request_hash"]))

    def release_idempotent(self, did: str, key: str, holder: str) -> bool:
        """Drop ``holder``'s claim (its answer is stored, or it failed and a retry must be able to send)."""
        with self._db.write() as c:
            cur = c.execute("DELETE FROM idempotency_claims WHERE did = ? AND key = ? AND holder = ?",
                            (did, key, holder))
            return cur.rowcount > 0

    # -- retention ----------------------------------------------------------------------------

    def purge(self, now: float) -> int:
        """Delete terminal message rows (and their attempts) finished over 30 days ago."""
        cutoff = now - MESSAGE_RETENTION
        old = f"SELECT id FROM messages WHERE {_TERMINAL} AND updated_at < ?"
        with self._db.write() as c:
            c.execute(f"DELETE FROM attempts WHERE message_id IN ({old})", (cutoff,))
            # Complaint de-duplication lives as long as the rows it is about; daily counters two days.
            c.execute("DELETE FROM complaints WHERE received_at < ?", (cutoff,))
            c.execute("DELETE FROM unattributed_reports WHERE received_at < ?", (cutoff,))
            c.execute("DELETE FROM daily_counts WHERE day < ?", (int(now // 86400) - 2,))
            return c.execute(f"DELETE FROM messages WHERE id IN ({old})", (cutoff,)).rowcount


    # -- reputation counters ------------------------------------------------------------------

    def add_counts(
        self,
        sends: Sequence[SendCount] = (),
        events: Sequence[ReputationCount] = (),
        totals: Sequence[MemberTotal] = (),
    ) -> None:
        """Add increments to the hourly counters and lifetime totals in one transaction."""
        if not (sends or events or totals):
            return
        with self._db.write() as c:
            if sends:
                c.executemany(_ADD_SEND, [(r.did, r.domain, r.bucket_start, r.count) for r in sends])
            if events:
                c.executemany(
                    _ADD_EVENT, [(r.did, r.domain, r.bucket_start, r.kind, r.klass, r.count) for r in events]
                )
            if totals:
                c.executemany(_ADD_TOTAL, [(r.did, r.kind, r.count) for r in totals])

    def send_counts_since(self, bucket_start: int) -> list[SendCount]:
        rows = self._all(
            "SELECT did, domain, bucket_start, count FROM send_counters WHERE bucket_start >= ? AND count != 0",
            (bucket_start,),
        )
        return [SendCount(**dict(r)) for r in rows]

    def reputation_counts_since(self, bucket_start: int, did: str | None = None) -> list[ReputationCount]:
        sql = "SELECT did, domain, bucket_start, kind, klass, count FROM reputation_counts WHERE bucket_start >= ?"
        params: list[Any] = [bucket_start]
        if did is not None:
            sql += " AND did = ?"
            params.append(did)
        rows = self._all(sql + " ORDER BY bucket_start, domain, kind, klass", params)
        return [ReputationCount(**dict(r)) for r in rows]

    def member_standing(self, did: str, bucket_start: int) -> tuple[int, int, int]:
        """(recipients accepted, bounces, complaints) of ``did`` in hour buckets from ``bucket_start``,
        as every node has written them (send_counters and reputation_counts are shared by the nodes)."""
        with self._db.read() as c:
            sent = c.execute("SELECT COALESCE(SUM(count), 0) AS n FROM send_counters"
                             " WHERE did = ? AND bucket_start >= ?", (did, bucket_start)).fetchone()
            rows = c.execute("SELECT kind, COALESCE(SUM(count), 0) AS n FROM reputation_counts"
                             " WHERE did = ? AND bucket_start >= ? AND kind != 'sent' GROUP BY kind",
                             (did, bucket_start)).fetchall()
        kinds = {str(r["kind"]): int(r["n"]) for r in rows}
        return int(sent["n"]) if sent is not None else 0, kinds.get("bounce", 0), kinds.get("complaint", 0)

    def member_totals(self, did: str) -> dict[str, int]:
        rows = self._all("SELECT kind, count FROM member_totals WHERE did = ?", (did,))
        return {str(r["kind"]): int(r["count"]) for r in rows}

    def message_counts_for(self, did: str) -> dict[MessageStatus, int]:
        counts: dict[MessageStatus, int] = dict.fromkeys(MESSAGE_STATUSES, 0)
        for row in self._all("SELECT status, COUNT(*) AS n FROM messages WHERE did = ? GROUP BY status", (did,)):
            counts[row["status"]] = int(row["n"])
        return counts

    def suspended_members(self) -> list[Member]:
        return [_member(r) for r in self._all("SELECT * FROM members WHERE status = 'suspended' ORDER BY did")]

    def purge_counters(self, now: float) -> int:
        """Drop send counters older than 48 h and reputation counters older than 15 days."""
        with self._db.write() as c:
            n = c.execute("DELETE FROM send_counters WHERE bucket_start < ?", (now - SEND_COUNTER_RETENTION,))
            m = c.execute("DELETE FROM reputation_counts WHERE bucket_start < ?", (now - REPUTATION_RETENTION,))
            leases = c.execute("DELETE FROM rate_leases WHERE bucket_start < ?", (now - SEND_COUNTER_RETENTION,))
            return int(n.rowcount) + int(m.rowcount) + int(leases.rowcount)


    # -- web sessions -------------------------------------------------------------------------

    def put_web_session(self, session: WebSession) -> None:
        with self._db.write() as c:
            c.execute(
                "INSERT INTO web_sessions (id_hash, did, handle, csrf, data, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id_hash) DO UPDATE SET did = excluded.did,"
                " handle = excluded.handle, csrf = excluded.csrf, data = excluded.data,"
                " expires_at = excluded.expires_at",
                (session.id_hash, session.did, session.handle, session.csrf, session.data, session.created_at,
                 session.expires_at),
            )

    def get_web_session(self, id_hash: str, now: float) -> WebSession | None:
        row = self._one("SELECT * FROM web_sessions WHERE id_hash = ? AND expires_at > ?", (id_hash, now))
        return WebSession(**dict(row)) if row is not None else None

    def delete_web_session(self, id_hash: str) -> bool:
        with self._db.write() as c:
            return c.execute("DELETE FROM web_sessions WHERE id_hash = ?", (id_hash,)).rowcount > 0

    def purge_web_sessions(self, now: float) -> int:
        with self._db.write() as c:
            return int(c.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (now,)).rowcount)

    # -- labels (relay.labeler) ----------------------------------------------------------------

    # -- TLS reports ----------------------------------------------------------------------------

    def add_tlsrpt_counts(self, rows: Sequence[TlsRptCount]) -> None:
        with self._db.write() as c:
            c.executemany(
                "INSERT INTO tlsrpt_counts (day, policy_domain, policy_type, policy_strings, mx_patterns, mx_host,"
                " result_type, receiving_ip, sessions, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (day, policy_domain, policy_type, policy_strings, mx_patterns, mx_host, result_type,"
                " receiving_ip) DO UPDATE SET sessions = tlsrpt_counts.sessions + excluded.sessions,"
                " detail = CASE WHEN excluded.detail != '' THEN excluded.detail ELSE tlsrpt_counts.detail END",
                [(r.day, r.policy_domain, r.policy_type, "\n".join(r.policy_strings), "\n".join(r.mx_patterns),
                  r.mx_host, r.result_type, r.receiving_ip, r.sessions, r.detail) for r in rows],
            )

    def tlsrpt_counts(self, day: str) -> list[TlsRptCount]:
        rows = self._all("SELECT * FROM tlsrpt_counts WHERE day = ? ORDER BY policy_domain", (day,))
        return [TlsRptCount(day=r["day"], policy_domain=r["policy_domain"], policy_type=r["policy_type"],
                            policy_strings=tuple(filter(None, r["policy_strings"].split("\n"))),
                            mx_patterns=tuple(filter(None, r["mx_patterns"].split("\n"))), mx_host=r["mx_host"],
                            result_type=r["result_type"], receiving_ip=r["receiving_ip"], sessions=r["sessions"],
                            detail=r["detail"]) for r in rows]

    def claim_tlsrpt_report(self, day: str, policy_domain: str, now: float) -> bool:
        """True once per (day, domain): the caller sends that report (at most once, even after a crash)."""
        with self._db.write() as c:
            cur = c.execute("INSERT INTO tlsrpt_sent (day, policy_domain, sent_at) VALUES (?, ?, ?)"
                            " ON CONFLICT DO NOTHING", (day, policy_domain, now))
            return cur.rowcount == 1

    def add_tlsrpt_inbound(self, report: InboundTlsReport) -> bool:
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO tlsrpt_inbound (organization, report_id, policy_domain, start_time, end_time,"
                " successes, failures, failure_types, report, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (report.organization, report.report_id, report.policy_domain, report.start, report.end,
                 report.successes, report.failures, report.failure_types, report.report, report.received_at),
            )
            return cur.rowcount == 1

    def list_tlsrpt_inbound(self, limit: int) -> list[InboundTlsReport]:
        rows = self._all("SELECT * FROM tlsrpt_inbound ORDER BY received_at DESC, id DESC LIMIT ?", (limit,))
        return [InboundTlsReport(organization=r["organization"], report_id=r["report_id"],
                                 policy_domain=r["policy_domain"], start=r["start_time"], end=r["end_time"],
                                 successes=r["successes"], failures=r["failures"], received_at=r["received_at"],
                                 failure_types=r["failure_types"], report=r["report"], id=r["id"]) for r in rows]

    def purge_tlsrpt(self, before_day: str) -> int:
        with self._db.write() as c:
            n = c.execute("DELETE FROM tlsrpt_counts WHERE day < ?", (before_day,)).rowcount
            n += c.execute("DELETE FROM tlsrpt_sent WHERE day < ?", (before_day,)).rowcount
            return int(n)

    def put_sts_policy(self, row: StsPolicyRow) -> None:
        with self._db.write() as c:
            c.execute("INSERT INTO mta_sts_policies (domain, sts_id, policy, fetched_at, expires_at)"
                      " VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET sts_id = excluded.sts_id,"
                      " policy = excluded.policy, fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
                      (row.domain, row.sts_id, row.policy, row.fetched_at, row.expires_at))

    def sts_policies(self, now: float, limit: int) -> list[StsPolicyRow]:
        rows = self._all("SELECT * FROM mta_sts_policies WHERE expires_at > ? ORDER BY fetched_at DESC LIMIT ?",
                         (now, limit))
        return [StsPolicyRow(r["domain"], r["sts_id"], r["policy"], r["fetched_at"], r["expires_at"]) for r in rows]

    def purge_sts_policies(self, now: float) -> int:
        with self._db.write() as c:
            return int(c.execute("DELETE FROM mta_sts_policies WHERE expires_at <= ?", (now,)).rowcount)

    def get_firehose_cursor(self, url: str) -> int | None:
        row = self._one("SELECT cursor FROM firehose_cursor WHERE url = ?", (url,))
        return int(row["cursor"]) if row is not None else None

    def set_firehose_cursor(self, url: str, cursor: int, now: float) -> None:
        with self._db.write() as c:
            c.execute("INSERT INTO firehose_cursor (url, cursor, updated_at) VALUES (?, ?, ?) ON CONFLICT (url)"
                      " DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at", (url, cursor, now))

    def add_labels(self, labels: Sequence[LabelRow]) -> list[LabelRow]:
        out = []
        with self._db.write() as c:
            for lab in labels:
                cur = c.execute(
                    "INSERT INTO labels (src, uri, val, neg, cts, exp, sig) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                    (lab.src, lab.uri, lab.val, int(lab.neg), lab.cts, lab.exp, lab.sig),
                )
                out.append(_label_row(lab, int(_first(cur)["seq"])))
        return out

    def labels_after(self, cursor: int, limit: int) -> list[LabelRow]:
        rows = self._all("SELECT * FROM labels WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit))
        return [_label(r) for r in rows]

    def query_labels(
        self, uri_patterns: Sequence[str], sources: Sequence[str], cursor: int, limit: int
    ) -> list[LabelRow]:
        """The latest label per (src, uri, val) (negations included), seq > cursor, ascending.
        A pattern ending in ``*`` is a prefix match (``*`` alone: everything), else an exact uri."""
        where: list[str] = ["l.seq > ?"]
        params: list[object] = [cursor]
        match = []
        for pattern in uri_patterns:
            if pattern.endswith("*"):
                prefix = pattern[:-1]
                match.append("substr(l.uri, 1, ?) = ?")
                params += [len(prefix), prefix]
            else:
                match.append("l.uri = ?")
                params.append(pattern)
        if match:
            where.append("(" + " OR ".join(match) + ")")
        if sources:
            where.append("l.src IN ({})".format(", ".join("?" * len(sources))))
            params += list(sources)
        sql = (
            "SELECT * FROM labels l WHERE " + " AND ".join(where)
            + " AND l.seq = (SELECT MAX(m.seq) FROM labels m WHERE m.uri = l.uri AND m.val = l.val"
            " AND m.src = l.src) ORDER BY l.seq LIMIT ?"
        )
        return [_label(r) for r in self._all(sql, [*params, limit])]

    def label_seq_bounds(self) -> tuple[int, int]:
        """(lowest, highest) seq kept; (0, 0) when there are none."""
        row = self._one("SELECT COALESCE(MIN(seq), 0) AS lo, COALESCE(MAX(seq), 0) AS hi FROM labels")
        return (int(row["lo"]), int(row["hi"])) if row is not None else (0, 0)


    # -- nodes (relay.cluster) -----------------------------------------------------------------

    def register_node(self, name: str, host: str, pid: int) -> NodeRow:
        """The node called ``name``, (re)started now: a known name keeps its number, a new one gets the
        lowest number never used (numbers are queue-id spaces: never reused by another name)."""
        now = self._clock()
        with self._db.write() as c:
            row = c.execute("SELECT number FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                top = _first(c.execute("SELECT COALESCE(MAX(number), 0) AS n FROM nodes"))
                c.execute("INSERT INTO nodes (number, name, host, pid, started_at, heartbeat_at)"
                          " VALUES (?, ?, ?, ?, ?, ?)", (int(top["n"]) + 1, name, host, pid, now, now))
            else:
                c.execute("UPDATE nodes SET host = ?, pid = ?, started_at = ?, heartbeat_at = ?, stopped_at = NULL"
                          " WHERE name = ?", (host, pid, now, now, name))
            return _node(_first(c.execute("SELECT * FROM nodes WHERE name = ?", (name,))))

    def node_heartbeat(self, number: int, stats: str, *, stopped: bool = False) -> None:
        now = self._clock()
        with self._db.write() as c:
            c.execute("UPDATE nodes SET heartbeat_at = ?, stats = ?, stopped_at = ? WHERE number = ?",
                      (now, stats, now if stopped else None, number))

    def list_nodes(self) -> list[NodeRow]:
        return [_node(r) for r in self._all("SELECT * FROM nodes ORDER BY number")]

    def take_lease(self, name: str, holder: str, ttl: float) -> float | None:
        """Take or renew the lease ``name`` for ``ttl`` seconds: its expiry, or None while another
        holder's lease runs. Atomic across nodes (one write transaction)."""
        now = self._clock()
        with self._db.write() as c:
            row = c.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row["holder"] != holder and float(row["expires_at"]) > now:
                return None
            c.execute("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name)"
                      " DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                      (name, holder, now + ttl))
            return now + ttl

    def release_lease(self, name: str, holder: str) -> bool:
        with self._db.write() as c:
            return c.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)).rowcount > 0

    def lease_holder(self, name: str) -> str | None:
        row = self._one("SELECT holder FROM leases WHERE name = ? AND expires_at > ?", (name, self._clock()))
        return str(row["holder"]) if row else None

    def add_node_command(self, node: int, action: str, target: str) -> int:
        with self._db.write() as c:
            cur = c.execute("INSERT INTO node_commands (node, action, target, created_at) VALUES (?, ?, ?, ?)"
                            " RETURNING id", (node, action, target, self._clock()))
            return int(_first(cur)["id"])

    def pending_node_commands(self, node: int, limit: int = 50) -> list[NodeCommand]:
        rows = self._all("SELECT * FROM node_commands WHERE node = ? AND done_at IS NULL ORDER BY id LIMIT ?",
                         (node, limit))
        return [_node_command(r) for r in rows]

    def finish_node_command(self, command_id: int, ok: bool, result: str) -> None:
        with self._db.write() as c:
            c.execute("UPDATE node_commands SET done_at = ?, ok = ?, result = ? WHERE id = ?",
                      (self._clock(), int(ok), result, command_id))

    def get_node_command(self, command_id: int) -> NodeCommand | None:
        row = self._one("SELECT * FROM node_commands WHERE id = ?", (command_id,))
        return _node_command(row) if row else None

    def purge_node_commands(self, older_than: float) -> int:
        with self._db.write() as c:
            return c.execute("DELETE FROM node_commands WHERE created_at < ?", (older_than,)).rowcount


# -- helpers ----------------------------------------------------------------------------------


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1  # SQLite INTEGER, PostgreSQL BIGINT


def _updated(c: Conn, cur: Result, domain: str) -> Row:
    if cur.rowcount == 0:
        raise NotFound(f"no domain {domain}")
    return _first(c.execute("SELECT * FROM domains WHERE domain = ?", (domain,)))


def _lease_totals(c: Conn, scope: str, subject: str, first: int, last: int, now: float) -> dict[int, int]:
    rows = c.execute(_LEASE_TOTALS, (now, scope, subject, first, last)).fetchall()
    return {int(r["bucket_start"]): int(r["n"]) for r in rows if int(r["n"])}


def _bump(c: Conn, name: str) -> None:
    c.execute("INSERT INTO change_counters (name, seq) VALUES (?, 1)"
              " ON CONFLICT (name) DO UPDATE SET seq = change_counters.seq + 1", (name,))


def _first(result: Result) -> Row:
    """The row a statement of this transaction must have found (one it just wrote, an aggregate)."""
    row = result.fetchone()
    if row is None:
        raise StoreError("a statement returned no row where one must exist")
    return row


def _insert_messages(c: Conn, rows: Sequence[MessageRow]) -> int:
    # Subjects and addresses come from what clients sent: undecodable 8-bit bytes reach here as lone
    # surrogates (surrogateescape), which no UTF-8 column can hold. The message itself stays byte-exact
    # in the spool; the row is for display, so those bytes are stored as U+FFFD.
    params = [
        (r.id, r.queue_id, r.did, r.from_domain, display_text(r.mail_from), display_text(r.recipient),
         display_text(r.subject), r.category, r.source, r.status, r.attempts, display_text(r.last_reply),
         r.next_attempt_at, r.created_at, r.updated_at, r.tags, r.metadata)
        for r in rows
    ]  # fmt: skip
    return c.executemany(_INSERT_MESSAGE, params)


def _update_statuses(c: Conn, updates: Sequence[StatusUpdate]) -> int:
    params = [(u.status, u.at, u.attempts, display_text(u.last_reply), u.next_attempt_at, u.id) for u in updates]
    return c.executemany(_UPDATE_STATUS, params)


def _put_idempotents(c: Conn, rows: Sequence[IdempotentResponse]) -> None:
    params = [(r.did, r.key, r.request_hash, r.status_code, r.response_json, r.created_at) for r in rows]
    if params:
        c.executemany(
            "INSERT INTO idempotency (did, key, request_hash, status_code, response_json, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (did, key) DO NOTHING", params)


def _add_attempts(c: Conn, rows: Sequence[NewAttempt]) -> None:
    params = [(a.message_id, a.at, a.mx_host, a.reply, int(a.tls), a.outcome) for a in rows]
    if params:
        c.executemany(_INSERT_ATTEMPT, params)


def _norm_handle(handle: str) -> str:
    return handle.strip().lstrip("@").lower()


def _norm_address(address: str) -> str:
    return address.strip().lower()


def _member(row: Row) -> Member:
    return Member(**dict(row))


def _webhook(row: Row) -> Webhook:
    events = tuple(e for e in str(row["events"]).split(",") if e)
    return Webhook(did=row["did"], url=row["url"], secret=row["secret"], events=events,
                   created_at=float(row["created_at"]))


def _domain(row: Row) -> Domain:
    return Domain(**dict(row))


def _claim(row: Row) -> Domain:
    return Domain(domain=row["domain"], did=row["did"], selector=row["selector"], rsa_private=row["rsa_private"],
                  ed25519_private=row["ed25519_private"], verify_token=row["verify_token"], state="pending",
                  created_at=float(row["created_at"]), claim=True)


def _expire(c: Conn, domain: str, cutoff: float) -> None:
    """Drop ``domain``'s pending claims made before ``cutoff``; when its own pending row goes, the
    oldest surviving competing claim takes its place (still pending)."""
    c.execute("DELETE FROM domain_claims WHERE domain = ? AND created_at < ?", (domain, cutoff))
    gone = c.execute("DELETE FROM domains WHERE domain = ? AND state = 'pending' AND created_at < ?",
                     (domain, cutoff)).rowcount
    if not gone:
        return
    nxt = c.execute("SELECT * FROM domain_claims WHERE domain = ? ORDER BY created_at LIMIT 1", (domain,)).fetchone()
    if nxt is not None:
        c.execute("INSERT INTO domains (domain, did, selector, rsa_private, ed25519_private, verify_token, state,"
                  " created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                  (domain, nxt["did"], nxt["selector"], nxt["rsa_private"], nxt["ed25519_private"],
                   nxt["verify_token"], nxt["created_at"]))
        c.execute("DELETE FROM domain_claims WHERE domain = ? AND did = ?", (domain, nxt["did"]))


def _message(row: Row) -> MessageRow:
    return MessageRow(**dict(row))


def _attempt(row: Row) -> Attempt:
    return Attempt(**{**dict(row), "tls": bool(row["tls"])})


def _node(row: Row) -> NodeRow:
    stopped = row["stopped_at"]
    return NodeRow(number=int(row["number"]), name=str(row["name"]), host=str(row["host"]), pid=int(row["pid"]),
                   started_at=float(row["started_at"]), heartbeat_at=float(row["heartbeat_at"]),
                   stopped_at=None if stopped is None else float(stopped), stats=str(row["stats"]))


def _node_command(row: Row) -> NodeCommand:
    ok, done = row["ok"], row["done_at"]
    return NodeCommand(id=int(row["id"]), node=int(row["node"]), action=str(row["action"]),
                       target=str(row["target"]), created_at=float(row["created_at"]),
                       done_at=None if done is None else float(done), ok=None if ok is None else bool(ok),
                       result=None if row["result"] is None else str(row["result"]))


def _label(row: Row) -> LabelRow:
    return LabelRow(src=row["src"], uri=row["uri"], val=row["val"], neg=bool(row["neg"]), cts=row["cts"],
                    sig=bytes(row["sig"]), exp=row["exp"], seq=int(row["seq"]))


def _label_row(lab: LabelRow, seq: int) -> LabelRow:
    return LabelRow(src=lab.src, uri=lab.uri, val=lab.val, neg=lab.neg, cts=lab.cts, sig=lab.sig, exp=lab.exp,
                    seq=seq)
