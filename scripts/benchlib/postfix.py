"""A private Postfix instance (never the system one) relaying to an ``smtp-sink`` on loopback.

Layout under ``base``: conf/ (main.cf, master.cf, sasl/smtpd.conf), queue/, data/, sasldb2, maillog.
Three smtpd services on free loopback ports:
  plain       permit_mynetworks, no AUTH             (smtp-source)
  submission  STARTTLS required, Cyrus SASL (sasldb), permit_sasl_authenticated only
  idle        like plain, with a process limit high enough to hold the idle-connection test
Everything queued goes to ``relayhost = [127.0.0.1]:<sink port>``: nothing leaves loopback. The sink is
its own ``smtp-sink``, or one the caller started (``sink_port``; the delivery scenario's dumping sink).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .common import BENCH_DOMAIN, free_port, log, wait_for_banner

POSTFIX_PACKAGES = ["postfix", "sasl2-bin", "libsasl2-modules"]
SASL_USER = f"benchuser@{BENCH_DOMAIN}"
SASL_PASSWORD = "bench-" + "p" * 20

_MASTER_TAIL = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
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
"""


def ensure_installed() -> None:
    """Install Postfix + Cyrus SASL tools from Debian when missing (a fresh machine)."""
    missing = [
        tool
        for tool in ("postfix", "postconf", "smtp-source", "smtp-sink", "saslpasswd2")
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()
    ]
    if not missing:
        return
    log(f"installing {' '.join(POSTFIX_PACKAGES)} (missing: {' '.join(missing)})")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if shutil.which("postfix") is None:
        # "No configuration": the package must not set up or start a system Postfix of its own.
        subprocess.run(
            [*sudo, "debconf-set-selections"],
            input="postfix postfix/main_mailer_type select No configuration\n",
            text=True,
            check=False,
            env=env,
        )
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *POSTFIX_PACKAGES],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _version() -> str:
    try:
        out = subprocess.run(
            [_tool("postconf"), "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out or "?"


class PostfixPeer:
    def __init__(self, base: Path, cert: Path, key: Path, idle_procs: int, sink_port: int = 0) -> None:
        self.base = base
        self.conf = base / "conf"
        self.cert, self.key = cert, key
        self.idle_procs = idle_procs
        self.sink: subprocess.Popen[bytes] | None = None
        self.sink_port = sink_port  # 0: start an smtp-sink of our own
        self.plain_port = self.submission_port = self.idle_port = 0
        self.started = False
        self.version = _version()

    # --- setup -----------------------------------------------------------------------------------

    def _write_config(self) -> None:
        b = self.base
        for d in (self.conf / "sasl", b / "queue", b / "data"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(b, 0o755)  # daemons running as the postfix user must reach sasldb2 and the cert
        pw = pwd.getpwnam("postfix")
        os.chown(b / "data", pw.pw_uid, pw.pw_gid)
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {b}/queue
data_directory = {b}/data
maillog_file_prefixes = {b}
maillog_file = {b}/maillog
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pfbench.localhost
mydomain = localhost
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{self.sink_port}
smtp_tls_security_level = none
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
smtpd_tls_cert_file = {self.cert}
smtpd_tls_key_file = {self.key}
smtpd_tls_security_level = may
cyrus_sasl_config_path = {self.conf}/sasl
""")
        (self.conf / "master.cf").write_text(
            f"127.0.0.1:{self.plain_port} inet n - n - - smtpd\n"
            f"127.0.0.1:{self.submission_port} inet n - n - - smtpd\n"
            "  -o smtpd_tls_security_level=encrypt\n"
            "  -o smtpd_tls_auth_only=yes\n"
            "  -o smtpd_sasl_auth_enable=yes\n"
            f"  -o smtpd_sasl_local_domain={BENCH_DOMAIN}\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
            f"127.0.0.1:{self.idle_port} inet n - n - {self.idle_procs} smtpd\n" + _MASTER_TAIL
        )
        # Debian's Postfix looks for $config_directory/sasl/smtpd.conf
        (self.conf / "sasl" / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {b}/sasldb2\n"
        )
        user, _, realm = SASL_USER.partition("@")
        subprocess.run(
            [_tool("saslpasswd2"), "-p", "-c", "-f", str(b / "sasldb2"), "-u", realm, user],
            input=SASL_PASSWORD,
            text=True,
            check=True,
            timeout=30,
        )
        os.chown(b / "sasldb2", pw.pw_uid, pw.pw_gid)
        os.chmod(b / "sasldb2", 0o640)

    def start(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance needs root (postfix -c DIR start)")
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.sink_port:
            self.sink_port = free_port()
            with open(self.base / "smtp-sink.log", "wb") as errlog:
                self.sink = subprocess.Popen(
                    [_tool("smtp-sink"), "-u", "nobody", f"127.0.0.1:{self.sink_port}", "1000"],
                    stdout=subprocess.DEVNULL,
                    stderr=errlog,
                    start_new_session=True,
                )
        wait_for_banner("127.0.0.1", self.sink_port, 10)
        self.plain_port, self.submission_port, self.idle_port = free_port(), free_port(), free_port()
        self._write_config()
        res = subprocess.run(
            [_tool("postfix"), "-c", str(self.conf), "start"], capture_output=True, text=True, timeout=60
        )
        self.started = True
        if res.returncode != 0:
            raise RuntimeError(
                f"postfix -c {self.conf} start failed rc={res.returncode}: {res.stderr.strip()}\n{self.maillog_tail()}"
            )
        for port in (self.plain_port, self.submission_port, self.idle_port):
            wait_for_banner("127.0.0.1", port, 20)
        log(
            f"Postfix {self.version} up: plain :{self.plain_port}, submission :{self.submission_port}, "
            f"idle :{self.idle_port}, smtp-sink :{self.sink_port}"
        )

    def maillog_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self.base / "maillog").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no maillog)"

    # --- state -----------------------------------------------------------------------------------

    def master_pid(self) -> int | None:
        try:
            return int((self.base / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queued(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred"):
            for _dirpath, _dirs, files in os.walk(self.base / "queue" / sub):
                n += len(files)
        return n

    def delivery_counts(self) -> dict[str, int]:
        """``status=sent|deferred|bounced`` lines in this instance's maillog (one per recipient attempt)."""
        counts = {"sent": 0, "deferred": 0, "bounced": 0}
        try:
            with open(self.base / "maillog", errors="replace") as fh:
                for line in fh:
                    for status in counts:
                        if f" status={status} " in line:
                            counts[status] += 1
        except OSError:
            pass
        return counts

    def wait_drained(self, timeout: float = 60.0) -> int:
        """Wait (bounded) until the queue is empty, so one run's delivery does not load the next run."""
        deadline = time.monotonic() + timeout
        left = self.queued()
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = self.queued()
        return left

    # --- teardown --------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.started:
            self.started = False
            master = self.master_pid()
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([_tool("postfix"), "-c", str(self.conf), "stop"], capture_output=True, timeout=30)
            if master is not None:
                deadline = time.monotonic() + 10
                while Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                if Path(f"/proc/{master}").exists():
                    with contextlib.suppress(OSError, subprocess.SubprocessError):
                        subprocess.run(
                            [_tool("postfix"), "-c", str(self.conf), "abort"], capture_output=True, timeout=30
                        )
        if self.sink is not None and self.sink.poll() is None:
            self.sink.send_signal(signal.SIGTERM)
            try:
                self.sink.wait(5)
            except subprocess.TimeoutExpired:
                self.sink.kill()
                self.sink.wait(5)
        self.sink = None
