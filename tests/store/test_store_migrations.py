from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest

from relay.store import SchemaTooNew, StoreUnavailable, UnsupportedStore, open_store
from relay.store.db import Database
from relay.store.migrations import LATEST, MIGRATIONS, current_version, migrate, statements
from relay.store.sqlite import connect

from .conftest import Closer, database


def _versions(db: Database) -> list[int]:
    with db.read() as c:
        return [int(r["version"]) for r in c.execute("SELECT version FROM schema_version ORDER BY version").fetchall()]


def test_fresh_database_gets_every_version(fresh_url: str, closer: Closer) -> None:
    with closer(open_store(fresh_url)) as s:
        assert s.schema_version() == LATEST
    assert _versions(closer(database(fresh_url))) == [v for v, _ in sorted(MIGRATIONS)]


def test_rerunning_migrations_is_a_noop(fresh_url: str, closer: Closer) -> None:
    open_store(fresh_url).close()
    db = closer(database(fresh_url))
    assert migrate(db) == []
    assert len(_versions(db)) == len(MIGRATIONS)


def test_new_migration_applies_once_in_order(fresh_url: str, closer: Closer) -> None:
    open_store(fresh_url).close()
    db = closer(database(fresh_url))
    extra = [
        *MIGRATIONS,
        (LATEST + 1, "CREATE TABLE future_example (uri TEXT PRIMARY KEY, n INTEGER, at REAL, b BLOB)"
                     " WITHOUT ROWID;\nCREATE INDEX l ON future_example(uri);"),
    ]
    assert migrate(db, extra) == [LATEST + 1]
    assert migrate(db, extra) == []
    assert current_version(db) == LATEST + 1
    with db.write() as c:  # the translated types take what the SQLite ones take
        c.execute("INSERT INTO future_example (uri, n, at, b) VALUES (?, ?, ?, ?)", ("u", 1 << 40, 0.5, b"\0x"))
    with db.read() as c:
        row = c.execute("SELECT * FROM future_example").fetchone()
    assert row is not None and dict(row) == {"uri": "u", "n": 1 << 40, "at": 0.5, "b": b"\0x"}


def test_failed_migration_rolls_back_entirely(fresh_url: str, closer: Closer) -> None:
    open_store(fresh_url).close()
    db = closer(database(fresh_url))
    broken = [*MIGRATIONS, (LATEST + 1, "CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;")]
    with pytest.raises((StoreUnavailable, psycopg.ProgrammingError), match="syntax error"):
        migrate(db, broken)
    assert current_version(db) == LATEST
    assert not db.has_table("half")
    with db.write() as c:  # nothing left open: the next transaction begins
        c.execute("SELECT 1")


def test_database_from_a_newer_build_is_refused(fresh_url: str, closer: Closer) -> None:
    open_store(fresh_url).close()
    with closer(database(fresh_url)).write() as c:
        c.execute("INSERT INTO schema_version VALUES (?, 0)", (LATEST + 5,))
    with pytest.raises(SchemaTooNew, match="newer than this build"):
        closer(open_store(fresh_url))


def test_two_processes_starting_at_once_migrate_once(fresh_url: str, closer: Closer) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_store(fresh_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _versions(closer(database(fresh_url))) == [v for v, _ in sorted(MIGRATIONS)]


def test_sqlite_connection_settings(db_path: str, closer: Closer) -> None:
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


def test_an_unreachable_postgresql_server_is_unavailable_and_its_password_never_shown() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot open store") as caught:
        open_store(f"postgresql://relay:s3cret@127.0.0.1:{port}/relay", busy_timeout=0.5)
    assert "s3cret" not in str(caught.value) and "relay:***@127.0.0.1" in str(caught.value)
    assert time.monotonic() - started < 5


def test_open_store_rejects_unknown_urls() -> None:
    with pytest.raises(UnsupportedStore, match="unsupported store URL"):
        open_store("mysql://x")
    with pytest.raises(UnsupportedStore):
        open_store("sqlite:///")
