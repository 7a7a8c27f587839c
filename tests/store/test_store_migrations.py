from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from relay.store import SchemaTooNew, StoreUnavailable, UnsupportedStore, open_store
from relay.store.migrations import LATEST, MIGRATIONS, current_version, migrate, statements
from relay.store.sqlite import SqliteDatabase, SqliteStore, connect

from .conftest import Closer


def _raw(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _db(path: str) -> SqliteDatabase:
    return SqliteDatabase(connect(path))


def test_fresh_database_gets_every_version(db_path: str, closer: Closer) -> None:
    with closer(SqliteStore.open(db_path)) as s:
        assert s.schema_version() == LATEST
    rows = closer(_raw(db_path)).execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]


def test_rerunning_migrations_is_a_noop(db_path: str, closer: Closer) -> None:
    SqliteStore.open(db_path).close()
    db = closer(_db(db_path))
    assert migrate(db) == []
    assert closer(_raw(db_path)).execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_new_migration_applies_once_in_order(db_path: str, closer: Closer) -> None:
    SqliteStore.open(db_path).close()
    conn = closer(_db(db_path))
    extra = [
        *MIGRATIONS,
        (LATEST + 1, "CREATE TABLE future_example (uri TEXT PRIMARY KEY);\nCREATE INDEX l ON future_example(uri);"),
    ]
    assert migrate(conn, extra) == [LATEST + 1]
    assert migrate(conn, extra) == []
    assert current_version(conn) == LATEST + 1


def test_failed_migration_rolls_back_entirely(db_path: str, closer: Closer) -> None:
    SqliteStore.open(db_path).close()
    db = closer(_db(db_path))
    broken = [*MIGRATIONS, (LATEST + 1, "CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;")]
    with pytest.raises(StoreUnavailable, match="syntax error"):
        migrate(db, broken)
    assert current_version(db) == LATEST
    assert not db.has_table("half")
    with db.write() as c:  # nothing left open: the next transaction begins
        c.execute("SELECT 1")


def test_database_from_a_newer_build_is_refused(db_path: str, closer: Closer) -> None:
    SqliteStore.open(db_path).close()
    closer(_raw(db_path)).execute("INSERT INTO schema_version VALUES (?, 0)", (LATEST + 5,))
    with pytest.raises(SchemaTooNew, match="newer than this build"):
        closer(SqliteStore.open(db_path))


def test_two_processes_starting_at_once_migrate_once(db_path: str, closer: Closer) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            SqliteStore.open(db_path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert closer(_raw(db_path)).execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(
        MIGRATIONS
    )


def test_connection_settings(db_path: str, closer: Closer) -> None:
    conn = closer(connect(db_path))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_statement_splitter_keeps_comments_and_semicolons_in_strings() -> None:
    sql = "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT 'a;b');\nCREATE INDEX i ON t(x);\n"
    parts = statements(sql)
    assert len(parts) == 2
    assert parts[0].endswith("DEFAULT 'a;b');")


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = open_store("sqlite:///:memory:")
    assert memory.schema_version() == LATEST
    memory.close()
    monkeypatch.chdir(tmp_path)
    open_store("sqlite:///state/relay.db").close()  # relative to the working directory
    assert (tmp_path / "state" / "relay.db").exists()
    absolute = tmp_path / "abs.db"
    open_store(f"sqlite:///{absolute}").close()
    assert absolute.exists()


def test_open_store_rejects_postgres_and_unknown_urls() -> None:
    with pytest.raises(UnsupportedStore, match="PostgreSQL store not available in this build"):
        open_store("postgresql://relay@db/relay")
    with pytest.raises(UnsupportedStore, match="unsupported store URL"):
        open_store("mysql://x")
    with pytest.raises(UnsupportedStore):
        open_store("sqlite:///")
