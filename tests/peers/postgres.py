"""A real PostgreSQL server for tests: Debian's ``postgres`` on 127.0.0.1 and a free port (DESIGN §8).

One server per test session (``postgres_server``, started on first use): ``initdb`` into a fresh
temporary directory, then ``postgres`` in the foreground with durability off (fsync, synchronous
commit: the tests never survive a power cut) and trust authentication on loopback only. PostgreSQL
refuses to run as root, so under root (the suite's CI) both run as the Debian package's ``postgres``
user through ``runuser``. Each test that asks for ``postgres_url`` gets a database of its own, dropped
after it: tests never see each other's rows, and the advisory write lock is per database.

    from tests.peers.postgres import postgres_server, postgres_url  # noqa: F401  (registers the fixtures)

    def test_something(postgres_url):
        store = open_store(postgres_url)   # postgresql://relay@127.0.0.1:<port>/t_<n>

Skips (or fails under CI=true) when PostgreSQL is missing: run scripts/install-test-peers (Debian
package ``postgresql``; its system cluster and service are never used).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.peers.ports import free_port
from tests.peers.process import terminate
from tests.peers.require import missing

_READY_TIMEOUT = 30.0
_USER = "relay"  # the test cluster's superuser
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "200",
    "log_min_messages": "warning",
}


def postgres_bin(name: str) -> str:
    """``name`` from the newest /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    on_path = shutil.which(name)
    if on_path is None:
        missing(f"PostgreSQL's {name} is not installed (Debian package postgresql): run scripts/install-test-peers")
    return on_path


class PostgresServer:
    host = "127.0.0.1"

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._as: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="atmos-postgres-"))
        if os.geteuid() == 0:  # postgres will not run as root: hand the directory to the package's user
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                missing("the postgres user is missing (Debian package postgresql): run scripts/install-test-peers")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._as = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
        self.data = self.base / "data"
        self.log_path = self.base / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{_USER}@{self.host}:{self.port}/{dbname}"

    def start(self) -> None:
        initdb = postgres_bin("initdb")
        postgres = postgres_bin("postgres")
        subprocess.run(
            [
                *self._as,
                initdb,
                "-D",
                str(self.data),
                "-U",
                _USER,
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.base,
        )
        self.port = free_port()
        settings = {**_SETTINGS, "port": str(self.port), "unix_socket_directories": str(self.base)}
        args = [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
        log = open(self.log_path, "wb")  # noqa: SIM115  (closed with the process, in stop)
        self.proc = subprocess.Popen(
            [*self._as, postgres, "-D", str(self.data), *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.base
        )  # a directory its user may enter
        log.close()
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        terminate(self.proc, grace=10)  # SIGTERM: "smart" shutdown, children end with it
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def postgres_migrated(postgres_server: PostgresServer) -> Iterator[str]:
    """One database migrated once for the session (creating and migrating one per test costs ~1 s)."""
    from relay.store import open_store

    url = postgres_server.url(postgres_server.create_database())
    open_store(url).close()
    yield url


@pytest.fixture
def postgres_clean_url(postgres_migrated: str) -> Iterator[str]:
    """The session's migrated database, emptied after the test (schema_version kept)."""
    yield postgres_migrated
    with psycopg.connect(postgres_migrated, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename != 'schema_version'"
            )
        ]
        conn.execute("TRUNCATE {} RESTART IDENTITY CASCADE".format(", ".join(tables)))
