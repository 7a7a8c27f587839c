"""Versioned schema migrations of the store, one list for every backend.

``MIGRATIONS`` is append-only: never edit a released entry, add a new version.
Each one runs in its own write transaction (relay.store.db.Database.write)
together with its ``schema_version`` row, so a crash leaves either all of it or
none of it, and two processes starting at once (server + ``atmos admin``, two
nodes) cannot both apply it: the second waits on the write lock, then sees the
version already recorded.

The DDL is written for SQLite, in the subset a backend can translate word by
word (relay.store.postgres: INTEGER PRIMARY KEY [AUTOINCREMENT] -> identity,
INTEGER -> BIGINT, REAL -> DOUBLE PRECISION, BLOB -> BYTEA; COLLATE NOCASE and
WITHOUT ROWID dropped, the store lower-cases what it compares). Keep new
migrations in that subset: plain CREATE TABLE / INDEX and ALTER TABLE ADD COLUMN.

Version 2: rate counters (48 h retention) and reputation counters (bounces, complaints,
deliveries; hourly aggregates kept 15 days) for relay.reputation.
Planned later versions: labels.
"""

from __future__ import annotations

import sqlite3
import time

from relay.store.db import Database
from relay.store.errors import SchemaTooNew

_V1 = """
CREATE TABLE members (
    did               TEXT PRIMARY KEY,
    handle            TEXT COLLATE NOCASE UNIQUE,
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    suspension_reason TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL
);

CREATE TABLE domains (
    domain          TEXT PRIMARY KEY CHECK (domain = lower(domain)),
    did             TEXT NOT NULL REFERENCES members(did),
    selector        TEXT NOT NULL,
    rsa_private     BLOB NOT NULL,
    ed25519_private BLOB NOT NULL,
    verify_token    TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'verified')),
    dkim_state      TEXT NOT NULL DEFAULT 'unverified' CHECK (dkim_state IN ('unverified', 'verified')),
    forward_to      TEXT,
    created_at      REAL NOT NULL,
    verified_at     REAL
);
CREATE INDEX domains_did ON domains(did);

CREATE TABLE api_keys (
    did        TEXT PRIMARY KEY REFERENCES members(did),
    hash       TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- One row per recipient. No foreign keys on purpose: a status row must never be
-- refused because of other tables, the spool already accepted the message.
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    queue_id        INTEGER NOT NULL,
    did             TEXT NOT NULL,
    from_domain     TEXT NOT NULL,
    mail_from       TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT,
    category        TEXT,
    source          TEXT NOT NULL CHECK (source IN ('smtp', 'http')),
    status          TEXT NOT NULL
                    CHECK (status IN ('accepted', 'deferred', 'sent', 'bounced', 'held')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_reply      TEXT,
    next_attempt_at REAL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX messages_did_created ON messages(did, created_at);
CREATE INDEX messages_status ON messages(status);
CREATE INDEX messages_queue ON messages(queue_id);

CREATE TABLE attempts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL,
    at         REAL NOT NULL,
    mx_host    TEXT,
    reply      TEXT NOT NULL,
    tls        INTEGER NOT NULL CHECK (tls IN (0, 1)),
    outcome    TEXT NOT NULL
);
CREATE INDEX attempts_message ON attempts(message_id, at);

CREATE TABLE suppressions (
    did        TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (did, recipient)
) WITHOUT ROWID;

CREATE TABLE idempotency (
    did           TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    response_json TEXT NOT NULL,
    created_at    REAL NOT NULL,
    PRIMARY KEY (did, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_created ON idempotency(created_at);
"""

# relay.reputation: hourly aggregates, incremented in batches (never one row per message).
_V2 = """
CREATE TABLE send_counters (
    did          TEXT NOT NULL,
    domain       TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (did, domain, bucket_start)
) WITHOUT ROWID;
CREATE INDEX send_counters_bucket ON send_counters(bucket_start);

CREATE TABLE reputation_counts (
    did          TEXT NOT NULL,
    domain       TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('sent', 'bounce', 'complaint')),
    klass        TEXT NOT NULL DEFAULT '',
    count        INTEGER NOT NULL,
    PRIMARY KEY (did, bucket_start, domain, kind, klass)
) WITHOUT ROWID;
CREATE INDEX reputation_counts_bucket ON reputation_counts(bucket_start);

CREATE TABLE member_totals (
    did   TEXT NOT NULL,
    kind  TEXT NOT NULL CHECK (kind IN ('accepted', 'sent', 'bounce', 'complaint')),
    count INTEGER NOT NULL,
    PRIMARY KEY (did, kind)
) WITHOUT ROWID;
"""

# web.session: server-side sessions of the member pages (the cookie carries a token; only its hash is stored).
_V3 = """
CREATE TABLE web_sessions (
    id_hash    TEXT PRIMARY KEY,
    did        TEXT,
    handle     TEXT,
    csrf       TEXT NOT NULL,
    data       TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX web_sessions_expires ON web_sessions(expires_at);
"""

# relay.labeler: signed atproto labels, append-only; seq is the subscribeLabels/queryLabels cursor.
_V4 = """
CREATE TABLE labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    src TEXT NOT NULL,
    uri TEXT NOT NULL,
    val TEXT NOT NULL,
    neg INTEGER NOT NULL DEFAULT 0 CHECK (neg IN (0, 1)),
    cts TEXT NOT NULL,
    exp TEXT,
    sig BLOB NOT NULL
);
CREATE INDEX labels_uri ON labels(uri, val, src, seq);
"""

# relay.members.webhooks: one HTTPS endpoint per member; ``events`` is a comma list, ``secret`` signs the POSTs.
_V5 = """
CREATE TABLE webhooks (
    did        TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    events     TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Issue 14 (durability): how far the store has caught up with the spool (one row), the webhook
# outbox (an event survives restarts until its endpoint took it; ``id`` is the stable event id) and
# the OAuth sign-ins in progress (a restart mid sign-in no longer loses it).
_V7 = """
CREATE TABLE spool_mark (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    segment    INTEGER NOT NULL,
    "offset"   INTEGER NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE webhook_outbox (
    id              TEXT PRIMARY KEY,
    did             TEXT NOT NULL,
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at      REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhook_outbox_due ON webhook_outbox(did, next_attempt_at);

CREATE TABLE oauth_pending (
    state      TEXT PRIMARY KEY,
    data       TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Version 9 (issue 18): a per-domain default category (mail without X-Atmos-Category, e.g. a PDS's
# password resets, can be transactional), and the tags/metadata a sender attached on /v1/send (JSON text).
_V9 = """
ALTER TABLE domains ADD COLUMN default_category TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN tags TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN metadata TEXT NOT NULL DEFAULT '';
"""

# Abuse resistance (issue 15): complaints de-duplicated per recipient id (the VERP address names
# one recipient of one message); reports nobody can be held to, kept for the operator; forward-to
# confirmation; per-day counters (forwards per member, delivery reports per SRS0 address);
# competing pending domain claims.
_V8 = """
CREATE TABLE complaints (
    rcpt_id       INTEGER PRIMARY KEY,
    did           TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    feedback_type TEXT NOT NULL,
    source        TEXT NOT NULL,
    received_at   REAL NOT NULL
);
CREATE INDEX complaints_received ON complaints(received_at);

CREATE TABLE unattributed_reports (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    peer        TEXT NOT NULL,
    mail_from   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX unattributed_reports_received ON unattributed_reports(received_at);

ALTER TABLE domains ADD COLUMN forward_confirmed_at REAL;

CREATE TABLE daily_counts (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    day   INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (scope, key, day)
) WITHOUT ROWID;

CREATE TABLE domain_claims (
    domain          TEXT NOT NULL CHECK (domain = lower(domain)),
    did             TEXT NOT NULL REFERENCES members(did),
    selector        TEXT NOT NULL,
    rsa_private     BLOB NOT NULL,
    ed25519_private BLOB NOT NULL,
    verify_token    TEXT NOT NULL,
    created_at      REAL NOT NULL,
    PRIMARY KEY (domain, did)
);
"""

# relay.delivery.tlsrpt (RFC 8460): sessions per policy and outcome per UTC day, which daily reports went
# out, and reports received about the operator domain; MTA-STS policies; relay.labeler.firehose: cursors.
_V10 = """
CREATE TABLE tlsrpt_counts (
    day            TEXT NOT NULL,
    policy_domain  TEXT NOT NULL,
    policy_type    TEXT NOT NULL,
    policy_strings TEXT NOT NULL,
    mx_patterns    TEXT NOT NULL,
    mx_host        TEXT NOT NULL,
    result_type    TEXT NOT NULL,
    receiving_ip   TEXT NOT NULL,
    sessions       INTEGER NOT NULL,
    detail         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (day, policy_domain, policy_type, policy_strings, mx_patterns, mx_host, result_type, receiving_ip)
) WITHOUT ROWID;

CREATE TABLE tlsrpt_sent (
    day           TEXT NOT NULL,
    policy_domain TEXT NOT NULL,
    sent_at       REAL NOT NULL,
    PRIMARY KEY (day, policy_domain)
) WITHOUT ROWID;

CREATE TABLE tlsrpt_inbound (
    id            INTEGER PRIMARY KEY,
    organization  TEXT NOT NULL,
    report_id     TEXT NOT NULL,
    policy_domain TEXT NOT NULL,
    start_time    TEXT NOT NULL,
    end_time      TEXT NOT NULL,
    successes     INTEGER NOT NULL,
    failures      INTEGER NOT NULL,
    failure_types TEXT NOT NULL,
    report        TEXT NOT NULL,
    received_at   REAL NOT NULL,
    UNIQUE (organization, report_id)
);

-- relay.delivery.mtasts: policies survive a restart (RFC 8461 §5.1: a cached policy is what defeats an
-- attacker who strips the TXT record or blocks the HTTPS fetch).
CREATE TABLE mta_sts_policies (
    domain     TEXT PRIMARY KEY,
    sts_id     TEXT NOT NULL,
    policy     TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- relay.labeler.firehose: the last sequence number (or Jetstream time_us) handled, per stream URL.
CREATE TABLE firehose_cursor (
    url        TEXT PRIMARY KEY,
    cursor     INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Issue 17 (nodes): every relay process is a node with its own spool. ``nodes``: the registry (a name
# keeps its number, which is the node's queue-id space and its spool mark), heartbeats and a small
# JSON snapshot each node writes for the operator plane. ``leases``: cluster-wide jobs run by one
# holder at a time. ``node_commands``: an operator action for the node that owns the message.
# ``spool_marks``: how far the store has caught up with each node's spool (``spool_mark`` was one row;
# its row becomes node 1's, the single node a relay had before).
_V11 = """
CREATE TABLE nodes (
    number       INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    stopped_at   REAL,
    stats        TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE node_commands (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    node       INTEGER NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    created_at REAL NOT NULL,
    done_at    REAL,
    ok         INTEGER,
    result     TEXT
);
CREATE INDEX node_commands_pending ON node_commands(node, done_at);

CREATE TABLE spool_marks (
    node       INTEGER PRIMARY KEY,
    segment    INTEGER NOT NULL,
    "offset"   INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO spool_marks (node, segment, "offset", updated_at) SELECT id, segment, "offset", updated_at FROM spool_mark;
"""

# Issue 17 (one relay, whatever the number of nodes): budget leases behind the rate caps (relay.reputation.limiter),
# one row per (window scope, subject, bucket, holder): a holder is one RateLimiter instance, a node's process;
# ``granted`` units reserved of which ``used`` are spent; past ``expires_at`` only ``used`` counts. Claims of
# an Idempotency-Key while its first request runs (web.api). A change counter per kind of change, so every
# node sees a suspension within a second by reading one row.
_V12 = """
CREATE TABLE rate_leases (
    scope        TEXT NOT NULL CHECK (scope IN ('relay', 'domain', 'member')),
    subject      TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    holder       TEXT NOT NULL,
    granted      INTEGER NOT NULL,
    used         INTEGER NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (scope, subject, bucket_start, holder)
) WITHOUT ROWID;
CREATE INDEX rate_leases_bucket ON rate_leases(bucket_start);

CREATE TABLE idempotency_claims (
    did          TEXT NOT NULL,
    key          TEXT NOT NULL,
    holder       TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (did, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_claims_expires ON idempotency_claims(expires_at);

CREATE TABLE change_counters (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX members_status ON members(status);
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
    (5, _V5),
    (7, _V7),
    (8, _V8),
    (9, _V9),
    (10, _V10),
    (11, _V11),
    (12, _V12),
]

LATEST = max(version for version, _ in MIGRATIONS)

_BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
)


def current_version(db: Database) -> int:
    return max(_applied(db), default=0)


def statements(sql: str) -> list[str]:
    """Split a script into statements (executescript would COMMIT our transaction first)."""
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def migrate(db: Database, migrations: list[tuple[int, str]] = MIGRATIONS) -> list[int]:
    """Apply pending migrations in order; return the versions applied (empty: already current).

    A current database is only read, so opening it never waits for another process's writer.
    """
    known = {v for v, _ in migrations}
    applied_before = _applied(db)
    newest = max(applied_before, default=0)
    if newest > max(known, default=0):
        raise SchemaTooNew(f"database schema version {newest} is newer than this build ({max(known)})")
    if known <= applied_before:
        return []
    with db.write() as c:  # under the write lock: PostgreSQL's CREATE IF NOT EXISTS is not safe in a race
        c.execute(db.ddl(_BOOTSTRAP))
    return [version for version, sql in sorted(migrations) if _apply(db, version, sql)]


def _applied(db: Database) -> set[int]:
    if not db.has_table("schema_version"):
        return set()
    with db.read() as c:
        return {int(row["version"]) for row in c.execute("SELECT version FROM schema_version").fetchall()}


def _apply(db: Database, version: int, sql: str) -> bool:
    """One migration and its schema_version row in one transaction (DDL is transactional in both)."""
    with db.write() as c:
        # Re-checked under the write lock: another process may have applied it meanwhile.
        if c.execute("SELECT 1 FROM schema_version WHERE version = ?", (version,)).fetchone():
            return False
        for statement in statements(sql):
            c.execute(db.ddl(statement))
        c.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", (version, time.time()))
    return True
