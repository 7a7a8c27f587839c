"""Private loopback Postfix instances for tests: a bouncing relay (the real DSN generator for the inbound
tests, and the smarthost client of the docs and client tests) and a TLS recipient MX (DANE, MTA-STS).

Each has its own config directory, queue and log under ``base`` (``postfix -c DIR``; never the system
instance), one smtpd on 127.0.0.1:<free port>, no DNS at all (``smtp_dns_support_level = disabled``,
bracketed next hops only, no peer name lookups). ``transport_maps`` sends each test domain to a loopback
port, so a message relayed to a destination that answers 5xx bounces at once, and the DSN (from ``<>``)
goes to the VERP address's domain, i.e. to our inbound listener.

Needs root (Postfix drops privileges to its ``postfix`` user itself) and the Debian ``postfix`` package:
``require_postfix()`` stops the test otherwise (a failure under CI=true, tests/peers/require.py).

    mx = PostfixMx(["dane.test"], chain_pem=key_and_chain, forward_port=sink.port).start()
    mx.port, mx.maillog()
    mx.stop()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.peers.ports import free_port, wait_for_banner
from tests.peers.require import find, missing

_MASTER_TAIL = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
"""

# A loaded 2-core CI machine has taken well over 20 s for a first smtpd to answer; a port taken between
# the probe and master's bind makes master exit at once ("bind ... Address already in use"): both are
# retried with a fresh port rather than failing the test.
_BANNER_TIMEOUT = 45.0
_ATTEMPTS = 3


def require_postfix() -> str:
    reason = None
    if find("postfix") is None or find("postconf") is None:
        reason = "Postfix is not installed: run scripts/install-test-peers (Debian package postfix)"
    elif os.geteuid() != 0:
        reason = "a private Postfix instance needs root (postfix -c DIR start)"
    else:
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            reason = "no 'postfix' system user"
    if reason is not None:
        missing(reason)
    postfix = find("postfix")
    assert postfix is not None
    return postfix


class PrivatePostfix:
    """One private instance; subclasses say what its main.cf holds (``_main_cf``) and, when it listens
    on more than one port, its smtpd services (``listeners``, ``_services``). scripts/bench's Postfix is
    one too (scripts/benchlib/postfix.py).

    Lives in ``base`` when given (its owner removes it), else in its own ``mkdtemp`` directory under /tmp
    (the ``postfix`` user must be able to reach it, which pytest's 0700 tmp_path does not allow), removed
    by ``stop``. ``postfix``: the program, when the caller has found it (else ``require_postfix``).
    """

    listeners = 1  # smtpd ports, on fresh free ports at each try: ``ports``; ``port`` is the first

    def __init__(
        self, routes: dict[str, int], *, hostname: str, base: Path | None = None, postfix: str | None = None
    ) -> None:
        self.postfix = postfix or require_postfix()
        self.owns_base = base is None
        self.base = Path(tempfile.mkdtemp(prefix="atmos-postfix-")) if base is None else base
        self.conf = self.base / "conf"
        self.routes = routes
        self.hostname = hostname
        self.relayhost = ""  # main.cf relayhost: where mail for a domain not in ``routes`` goes
        self.ports: list[int] = []
        self.port = 0
        self.started = False
        self.extra_main = ""  # main.cf lines appended last (Postfix: a later entry overrides an earlier one)

    def _services(self) -> str:
        """master.cf's smtpd lines, one service on each of ``ports``."""
        return f"127.0.0.1:{self.port} inet n - n - - smtpd\n"

    def _main_cf(self) -> str:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Files the config names (certificates), written before the first start."""

    def _common_main_cf(self) -> str:
        b = self.base
        transport = ", ".join(f"{dom}=smtp:[127.0.0.1]:{port}" for dom, port in self.routes.items())
        # An empty inline table is an error to Postfix ("need inline:{name=value...}"): no routes, no map.
        transport_maps = f"inline:{{ {transport} }}" if transport else ""
        return f"""\
compatibility_level = 3.6
queue_directory = {b}/queue
data_directory = {b}/data
maillog_file_prefixes = {b}
maillog_file = {b}/maillog
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = {self.hostname}
mydomain = {self.hostname}
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = {self.relayhost}
transport_maps = {transport_maps}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
smtp_connect_timeout = 5s
delay_warning_time = 0
"""

    def start(self) -> PrivatePostfix:
        b = self.base
        for d in (self.conf, b / "queue", b / "data"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(b, 0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(b / "data", pw.pw_uid, pw.pw_gid)
        self._prepare()
        failures = []
        for _ in range(_ATTEMPTS):
            self.ports = [free_port() for _ in range(self.listeners)]
            self.port = self.ports[0]
            (self.conf / "main.cf").write_text(self._common_main_cf() + self._main_cf() + self.extra_main)
            (self.conf / "master.cf").write_text(self._services() + _MASTER_TAIL)
            res = subprocess.run(
                [self.postfix, "-c", str(self.conf), "start"], capture_output=True, text=True, timeout=60, check=False
            )
            self.started = True
            if res.returncode == 0:
                try:
                    for port in self.ports:
                        wait_for_banner(port, _BANNER_TIMEOUT, alive=self._master_alive)
                    return self
                except TimeoutError as e:
                    failures.append(f"{e}\n{self.maillog()}")
            else:
                failures.append(f"postfix start failed rc={res.returncode}: {res.stderr.strip()}\n{self.maillog()}")
            self._stop()
        raise RuntimeError(f"private Postfix did not start in {_ATTEMPTS} tries:\n" + "\n---\n".join(failures))

    def _master_alive(self) -> bool:
        master = self.master_pid()
        return master is None or Path(f"/proc/{master}").exists()  # no pid file yet: still starting

    def maillog(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.base / "maillog").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no maillog)"

    def master_pid(self) -> int | None:
        try:
            return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            if self.owns_base:
                shutil.rmtree(self.base, ignore_errors=True)

    def _stop(self) -> None:
        if not self.started:
            return
        self.started = False
        master = self.master_pid()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([self.postfix, "-c", str(self.conf), "stop"], capture_output=True, timeout=30, check=False)
        if master is None:
            return
        deadline = time.monotonic() + 10
        while Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{master}").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [self.postfix, "-c", str(self.conf), "abort"], capture_output=True, timeout=30, check=False
                )


class BouncingPostfix(PrivatePostfix):
    """``routes``: {domain: loopback port}; everything else is refused by smtpd (no open relay here either)."""

    def __init__(self, routes: dict[str, int], *, hostname: str = "pfbounce.test") -> None:
        super().__init__(routes, hostname=hostname)

    def _main_cf(self) -> str:
        return """\
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
"""


class PostfixMx(PrivatePostfix):
    """A recipient MTA offering STARTTLS. ``chain_pem``: the private key, then the certificate chain (leaf
    first); mail for ``domains`` is handed on to ``forward_port`` (an smtp-sink the test reads)."""

    def __init__(
        self, domains: Sequence[str], *, chain_pem: bytes, forward_port: int, hostname: str = "mx.test"
    ) -> None:
        super().__init__({d: forward_port for d in domains}, hostname=hostname)
        self.chain_pem = chain_pem

    def _prepare(self) -> None:
        chain = self.conf / "chain.pem"
        chain.write_bytes(self.chain_pem)
        os.chmod(chain, 0o600)

    def _main_cf(self) -> str:
        return f"""\
relay_domains = {", ".join(self.routes)}
mynetworks =
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_tls_security_level = may
smtpd_tls_chain_files = {self.conf / "chain.pem"}
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
"""
