"""A real authoritative DNS server for tests: Knot DNS on 127.0.0.1 and a free port (DESIGN §8).

Each ``KnotServer`` is its own ``knotd`` process with its own config, zone files, database and
control socket in a temporary directory; it never touches the system's knot service or port 53.
Zones are given from Python as zone-file lines relative to the zone's origin; an SOA (with a
serial that grows on every change) and an NS record are added unless the lines have their own.

    from tests.peers.knot import knot_fixture  # noqa: F401  (registers the ``knot`` fixture)

    def test_something(knot):
        dns = knot({"example.test": ["@ 300 MX 10 mx", "mx A 127.0.0.1"]})
        resolver = Resolver(dns.nameservers, lifetime=2)      # ("127.0.0.1:<port>",)
        dns.update("example.test", ["@ MX 0 ."])              # visible once update() returns
        dns.servfail("broken.test")                           # that zone now answers SERVFAIL
        dns.queries("example.test")                           # {"MX": 1, "A": 2, ...} (mod-stats)

DNSSEC: zones named in ``signed=`` are signed by Knot itself (automatic signing, one ECDSA P-256
combined key, NSEC); ``dns.trust_anchor("dane.test")`` gives its DNSKEY as a zone-file line for a
validator (tests/peers/unbound.py). Keys live in the server's KASP database, so they stay the same
across ``update()`` and ``restart()``.

For a server shared by a whole module, use the class directly:
``with KnotServer(tmp_path_factory.mktemp("knot"), zones) as dns: ...``.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from tests.peers.ports import free_port
from tests.peers.process import terminate
from tests.peers.require import require

_DEFAULT_TTL = 300
_READY_TIMEOUT = 5.0
_STATS_LINE = re.compile(r"\]\s+mod-stats\.query-type\[(?P<type>[^\]]+)\]\s*=\s*(?P<count>\d+)")

Zones = Mapping[str, Sequence[str]]


def require_knot() -> tuple[str, str]:
    """(knotd, knotc) paths; the test stops when Knot is not installed (tests/peers/require.py)."""
    return require("knotd", package="knot"), require("knotc", package="knot")


def _origin(zone: str) -> str:
    return zone.rstrip(".").lower() + "."


def _has_type(records: Sequence[str], rdtype: str) -> bool:
    pattern = re.compile(rf"(^|\s){rdtype}(\s|$)", re.IGNORECASE)
    return any(pattern.search(line.split(";", 1)[0]) for line in records)


class KnotServer:
    """One knotd on 127.0.0.1:<free port>; see the module docstring."""

    host = "127.0.0.1"

    def __init__(
        self, base: Path, zones: Zones | None = None, *, servfail: Sequence[str] = (), signed: Sequence[str] = ()
    ) -> None:
        self.knotd, self.knotc = require_knot()
        self.base = Path(base)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.identity = "atmos-test-knot-" + secrets.token_hex(6)
        self._zones: dict[str, list[str] | None] = {}  # origin -> records; None: a zone that fails to load
        self._serials: dict[str, int] = {}
        self._counted: dict[str, dict[str, int]] = {}  # mod-stats banked before config reloads
        self._serial = int(time.time()) % 1_000_000_000  # grows on every write
        for zone, records in (zones or {}).items():
            self._zones[_origin(zone)] = list(records)
        for zone in servfail:
            self._zones[_origin(zone)] = None
        self.signed = {_origin(zone) for zone in signed}
        self.zone_dir = self.base / "zones"
        self.db_dir = self.base / "db"
        run = self.base / "run"
        if len(str(run / "knot.sock")) > 100:  # AF_UNIX path limit is 108 bytes
            run = Path(tempfile.mkdtemp(prefix="knot-run-"))
        self.run_dir = run
        self.config = self.base / "knot.conf"
        self.log_path = self.base / "knotd.log"

    # ---- public API ----

    @property
    def nameservers(self) -> tuple[str, ...]:
        """For ``Resolver(nameservers=...)`` and ``delivery.nameservers``."""
        return (f"{self.host}:{self.port}",)

    @property
    def zones(self) -> list[str]:
        """The origins configured (with the trailing dot)."""
        return list(self._zones)

    def start(self) -> KnotServer:
        for d in (self.zone_dir, self.db_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        for origin, records in self._zones.items():
            self._write_zone(origin, records)
        last_error = ""
        for _ in range(3):  # another process may grab the free port between our probe and knotd's bind
            self.port = free_port(udp=True)
            self._write_config()
            self._spawn()
            try:
                self._wait_ready()
            except RuntimeError as exc:
                last_error = str(exc)
                self._kill()
                continue
            try:
                for origin in self._zones:
                    self._wait_zone(origin)
            except BaseException:
                self._kill()
                raise
            return self
        raise RuntimeError(f"knotd did not start: {last_error}\n{self.log()}")

    def stop(self) -> None:
        self._kill()

    def restart(self) -> None:
        """Stop and start again on the same port (zones reload from disk; query counters start from zero)."""
        self._kill()
        self._counted.clear()
        self._spawn()
        self._wait_ready()
        for origin in self._zones:
            self._wait_zone(origin)

    def update(self, zone: str, records: Sequence[str]) -> None:
        """Replace (or add) a zone's records; returns once Knot serves the new contents."""
        origin = _origin(zone)
        known = origin in self._zones
        self._zones[origin] = list(records)
        self._write_zone(origin, records)
        if known:
            self._knotc("zone-reload", origin)
        else:
            self._reload_config()
        self._wait_zone(origin)

    def servfail(self, zone: str) -> None:
        """Make ``zone`` answer SERVFAIL: it stays configured, but its zone file no longer loads."""
        origin = _origin(zone)
        present = origin in self._zones
        self._zones[origin] = None
        self._write_zone(origin, None)
        if present:
            # A zone that fails to reload keeps serving its old contents, so unload it first.
            self._reconfigure_without(origin)
        else:
            self._reload_config()
        self._wait_zone(origin)

    def remove(self, zone: str) -> None:
        """Forget a zone: Knot then answers REFUSED for it (not authoritative)."""
        origin = _origin(zone)
        self._reload_config(without=origin)
        self._zones.pop(origin, None)
        deadline = time.monotonic() + _READY_TIMEOUT
        while self.rcode(origin, "SOA") != dns.rcode.REFUSED:
            if time.monotonic() > deadline:
                raise RuntimeError(f"knot still serves {origin}\n{self.log()}")
            time.sleep(0.01)

    def queries(self, zone: str) -> dict[str, int]:
        """Queries Knot answered for ``zone`` so far, by type (Knot's mod-stats; SOA includes the
        fixture's own readiness probes). Kept across updates; restart() starts again from zero."""
        origin = _origin(zone)
        counts = dict(self._counted.get(origin, {}))
        for rdtype, n in self._live_queries(origin).items():
            counts[rdtype] = counts.get(rdtype, 0) + n
        return counts

    def query(self, name: str, rdtype: str = "A", timeout: float = 1.0) -> dns.message.Message:
        """One UDP query straight to this server (for assertions and readiness)."""
        request = dns.message.make_query(name, rdtype)
        return dns.query.udp(request, self.host, port=self.port, timeout=timeout)

    def rcode(self, name: str, rdtype: str = "A") -> dns.rcode.Rcode:
        return self.query(name, rdtype).rcode()

    def trust_anchor(self, zone: str) -> str:
        """The signed zone's key-signing DNSKEY (flags 257) as one zone-file line, for a validator."""
        origin = _origin(zone)
        answer = self.query(origin, "DNSKEY")
        for rrset in answer.answer:
            for rdata in rrset:
                if rrset.rdtype == dns.rdatatype.DNSKEY and rdata.flags == 257:  # type: ignore[attr-defined]
                    return f"{origin} DNSKEY {rdata.to_text()}"
        raise RuntimeError(f"{origin} has no DNSKEY with flags 257 (is it in signed=?)\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> KnotServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- internals ----

    def _write_config(self, without: str | None = None) -> None:
        user = self._user()
        zones = "".join(
            f"  - domain: {origin}\n"
            + ("    dnssec-signing: on\n    dnssec-policy: atmos-test\n" if origin in self.signed else "")
            for origin in self._zones
            if origin != without
        )
        if zones:
            zones = "zone:\n" + zones
        text = f"""\
server:
    rundir: "{self.run_dir}"
    pidfile: "{self.run_dir}/knot.pid"
    user: {user}
    listen: {self.host}@{self.port}
    identity: "{self.identity}"
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: notice
database:
    storage: "{self.db_dir}"
    journal-db-max-size: 32M
    kasp-db-max-size: 8M
    timer-db-max-size: 8M
    catalog-db-max-size: 8M
control:
    listen: "{self.run_dir}/knot.sock"
policy:
  - id: atmos-test
    algorithm: ecdsap256sha256
    single-type-signing: on
    nsec3: off
mod-stats:
  - id: queries
    query-type: on
template:
  - id: default
    storage: "{self.zone_dir}"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
    module: mod-stats/queries
{zones}"""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config)

    @staticmethod
    def _user() -> str:
        import grp
        import pwd

        return f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"

    def _write_zone(self, origin: str, records: Sequence[str] | None) -> None:
        path = self.zone_dir / f"{origin.rstrip('.')}.zone"
        self._serial += 1
        if records is None:
            text = "this zone file is broken on purpose (SERVFAIL) !!!\n"
            self._serials.pop(origin, None)
        else:
            head = [f"$ORIGIN {origin}", f"$TTL {_DEFAULT_TTL}"]
            if not _has_type(records, "SOA"):
                head.append(f"@ 60 SOA ns.knot.test. hostmaster.knot.test. {self._serial} 3600 600 86400 60")
                self._serials[origin] = self._serial
            else:
                self._serials.pop(origin, None)
            if not _has_type(records, "NS"):
                head.append("@ NS ns.knot.test.")
            text = "\n".join([*head, *records]) + "\n"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def _live_queries(self, origin: str) -> dict[str, int]:
        if self._zones.get(origin, None) is None:
            return {}  # not configured, or not loaded: Knot keeps no counters for it
        # A zone not yet in the running config has no counters (knotc says "no such zone").
        out = self._knotc("zone-stats", origin, "mod-stats.query-type", check=False)
        return {m["type"]: int(m["count"]) for m in _STATS_LINE.finditer(out)}

    def _reload_config(self, without: str | None = None) -> None:
        """Rewrite knot.conf and reload it. A config reload resets mod-stats, so bank the counters first."""
        for origin in self._zones:
            counted = self._counted.setdefault(origin, {})
            for rdtype, n in self._live_queries(origin).items():
                counted[rdtype] = counted.get(rdtype, 0) + n
        self._write_config(without)
        self._knotc("reload")

    def _reconfigure_without(self, origin: str) -> None:
        self._reload_config(without=origin)
        self._reload_config()

    def _knotc(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [self.knotc, "-c", str(self.config), "-t", "5", "-b", *args],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        if result.returncode != 0 and check:
            raise RuntimeError(f"knotc {' '.join(args)} failed: {result.stdout}{result.stderr}\n{self.log()}")
        return result.stdout

    def _wait_ready(self) -> None:
        """Until *this* knotd answers (its random identity over CHAOS TXT id.server, RFC 4892)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        probe = dns.message.make_query("id.server.", dns.rdatatype.TXT, dns.rdataclass.CH)
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd exited with status {self.proc.returncode}\n{self.log()}")
            try:
                answer = dns.query.udp(probe, self.host, port=self.port, timeout=0.05)
            except (dns.exception.DNSException, OSError):
                time.sleep(0.01)
                continue
            if any(self.identity in rrset.to_text() for rrset in answer.answer):
                return
            raise RuntimeError(f"another server answers on port {self.port}")
        raise RuntimeError(f"knotd did not answer on {self.host}@{self.port} within {_READY_TIMEOUT} s")

    def _wait_zone(self, origin: str) -> None:
        """Until Knot serves the zone as last written: its SOA serial, or SERVFAIL for a broken zone."""
        records = self._zones[origin]
        serial = self._serials.get(origin)
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            try:
                answer = self.query(origin, "SOA", timeout=0.2)
                rcode = answer.rcode()
                if records is None and rcode == dns.rcode.SERVFAIL:
                    return
                if (
                    records is not None
                    and rcode == dns.rcode.NOERROR
                    and answer.answer
                    and (serial is None or _serial(answer) >= serial)
                ):
                    return  # signing may bump the serial (Knot's serial-policy), hence ">="
            except dns.exception.Timeout:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"knot does not serve {origin} as written\n{self.log()}")
            time.sleep(0.005)

    def _spawn(self) -> None:
        # Foreground knotd (no daemonizing, no systemd), logging to knotd.log; stop() ends it.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.knotd, "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        terminate(proc)


def _serial(answer: dns.message.Message) -> int:
    for rrset in answer.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)  # type: ignore[attr-defined]
    return -1


@pytest.fixture(name="knot")
def knot_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., KnotServer]]:
    """The ``knot`` fixture, a factory: ``knot(zones, servfail=())`` starts a KnotServer; all are stopped
    after the test. Skips (or fails under CI=true) when Knot is not installed: run scripts/install-test-peers.

    Use it from any test module with ``from tests.peers.knot import knot_fixture  # noqa: F401``
    (a different name than the fixture's, so test parameters named ``knot`` do not shadow the import).
    """
    require_knot()
    servers: list[KnotServer] = []

    def start(zones: Zones | None = None, *, servfail: Sequence[str] = (), signed: Sequence[str] = ()) -> KnotServer:
        server = KnotServer(tmp_path_factory.mktemp("knot"), zones, servfail=servfail, signed=signed)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
