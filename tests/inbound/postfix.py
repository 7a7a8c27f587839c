"""A private loopback Postfix that bounces mail: the real DSN generator for the inbound tests.

Its own config directory, queue and log under ``base`` (``postfix -c DIR``; never the system
instance), one smtpd on 127.0.0.1:<free port>, no DNS at all (``smtp_dns_support_level =
disabled``, bracketed next hops only, no peer name lookups). ``transport_maps`` sends each test
domain to a loopback port, so a message relayed to a destination that answers 5xx bounces at
once, and the DSN (from ``<>``) goes to the VERP address's domain, i.e. to our inbound listener.

Needs root (Postfix drops privileges to its ``postfix`` user itself) and the Debian ``postfix``
package: ``require_postfix()`` skips otherwise (fails under CI=true).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.peers.require import missing

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


def _tool(name: str) -> str | None:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    return path if os.access(path, os.X_OK) else None


def require_postfix() -> str:
    reason = None
    if _tool("postfix") is None or _tool("postconf") is None:
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
    postfix = _tool("postfix")
    assert postfix is not None
    return postfix


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_banner(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SMTP banner on 127.0.0.1:{port} within {timeout} s")
        time.sleep(0.05)


class BouncingPostfix:
    """``routes``: {domain: loopback port}; everything else is refused by smtpd (no open relay here either).

    Lives in its own ``mkdtemp`` directory under /tmp (the ``postfix`` user must be able to reach it,
    which pytest's 0700 tmp_path does not allow), removed by ``stop``.
    """

    def __init__(self, routes: dict[str, int], *, hostname: str = "pfbounce.test") -> None:
        self.postfix = require_postfix()
        self.base = Path(tempfile.mkdtemp(prefix="atmos-postfix-"))
        self.conf = self.base / "conf"
        self.routes = routes
        self.hostname = hostname
        self.port = 0
        self.started = False
        self.extra_main = ""  # main.cf lines appended last (Postfix: a later entry overrides an earlier one)

    def start(self) -> None:
        b = self.base
        for d in (self.conf, b / "queue", b / "data"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(b, 0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(b / "data", pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        transport = ", ".join(f"{dom}=smtp:[127.0.0.1]:{port}" for dom, port in self.routes.items())
        (self.conf / "main.cf").write_text(f"""\
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
relayhost =
relay_domains =
transport_maps = inline:{{ {transport} }}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_peername_lookup = no
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
smtp_connect_timeout = 5s
delay_warning_time = 0
""" + self.extra_main)
        (self.conf / "master.cf").write_text(f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + _MASTER_TAIL)
        res = subprocess.run([self.postfix, "-c", str(self.conf), "start"], capture_output=True, text=True,
                             timeout=60, check=False)
        self.started = True
        if res.returncode != 0:
            raise RuntimeError(f"postfix start failed rc={res.returncode}: {res.stderr.strip()}\n{self.maillog()}")
        wait_for_banner(self.port, 20)

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
                subprocess.run([self.postfix, "-c", str(self.conf), "abort"], capture_output=True, timeout=30,
                               check=False)
