"""A real validating resolver for tests: Unbound on 127.0.0.1 and a free port, in front of Knot (DESIGN §8).

Each ``UnboundServer`` is its own ``unbound -d`` process with its own config in a temporary directory
(never the system service, never port 53, no root hints: every name goes to the given Knot server,
which answers REFUSED for zones it does not serve). Trust anchors are given as DNSKEY zone-file lines,
typically ``knot.trust_anchor("dane.test")`` of a zone Knot signs; zones without an anchor are insecure.

    from tests.peers.unbound import unbound_fixture  # noqa: F401  (registers the ``unbound`` fixture)

    def test_something(knot, unbound):
        dns = knot({"dane.test": [...]}, signed=["dane.test"])
        resolver = unbound(dns, anchors=[dns.trust_anchor("dane.test")])
        resolver.nameservers      # ("127.0.0.1:<port>",) for delivery.nameservers (delivery.dnssec = true)

Skips (or fails under CI=true) when Unbound is missing: run scripts/install-test-peers (Debian package
``unbound``; its system service is never started).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import pytest

from tests.peers.knot import KnotServer
from tests.peers.ports import free_port
from tests.peers.process import terminate
from tests.peers.require import require

_READY_TIMEOUT = 10.0


def require_unbound() -> str:
    """The unbound program; the test stops when it is not installed (tests/peers/require.py)."""
    return require("unbound")


class UnboundServer:
    host = "127.0.0.1"

    def __init__(self, base: Path, upstream: KnotServer, *, anchors: Sequence[str] = ()) -> None:
        self.unbound = require_unbound()
        self.base = Path(base)
        self.upstream = upstream
        self.anchors = list(anchors)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = self.base / "unbound.conf"
        self.log_path = self.base / "unbound.log"

    @property
    def nameservers(self) -> tuple[str, ...]:
        return (f"{self.host}:{self.port}",)

    def start(self) -> UnboundServer:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        last = ""
        for _ in range(3):
            self.port = free_port(udp=True)
            self._write_config()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [self.unbound, "-d", "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            try:
                self._wait_ready()
                return self
            except RuntimeError as exc:
                last = str(exc)
                self.stop()
        raise RuntimeError(f"unbound did not start: {last}\n{self.log()}")

    def _write_config(self) -> None:
        up = f"{self.upstream.host}@{self.upstream.port}"
        anchors = "".join(f'    trust-anchor: "{a}"\n' for a in self.anchors)
        # RFC 6761 names (test., invalid., ...) are blocked by Unbound's default local zones.
        unblocked = "".join(f'    local-zone: "{z}" nodefault\n' for z in ("test.", "invalid.", "example."))
        stubs = "".join(f'stub-zone:\n    name: "{zone}"\n    stub-addr: {up}\n' for zone in self.upstream.zones)
        # One stub for the root: every name is asked of Knot; names it does not serve get REFUSED.
        self.config.write_text(f"""\
server:
    interface: {self.host}@{self.port}
    port: {self.port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{self.base}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    so-reuseport: no
    do-ip6: no
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "validator iterator"
    qname-minimisation: no
    harden-referral-path: no
    val-log-level: 2
    cache-max-ttl: 1
    cache-max-negative-ttl: 1
    infra-host-ttl: 1
{anchors}{unblocked}remote-control:
    control-enable: no
stub-zone:
    name: "."
    stub-addr: {up}
    stub-first: no
{stubs}""")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        probe = dns.message.make_query("version.server.", "TXT", "CH")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited with status {self.proc.returncode}")
            try:
                dns.query.udp(probe, self.host, port=self.port, timeout=0.1)
                return
            except (dns.exception.DNSException, OSError):
                time.sleep(0.02)
        raise RuntimeError(f"unbound did not answer on {self.host}@{self.port}")

    def query(self, name: str, rdtype: str = "A") -> dns.message.Message:
        request = dns.message.make_query(name, rdtype, want_dnssec=True)
        request.flags |= dns.flags.AD
        return dns.query.udp(request, self.host, port=self.port, timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        terminate(proc)


@pytest.fixture(name="unbound")
def unbound_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., UnboundServer]]:
    """A factory: ``unbound(knot_server, anchors=[...])`` starts an UnboundServer; all stop after the test."""
    require_unbound()
    servers: list[UnboundServer] = []

    def start(upstream: KnotServer, *, anchors: Sequence[str] = ()) -> UnboundServer:
        server = UnboundServer(tmp_path_factory.mktemp("unbound"), upstream, anchors=anchors)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
