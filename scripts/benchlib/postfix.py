"""The bench's private Postfix: the tests' ``PrivatePostfix`` (tests/peers/postfix.py: config, start with
retries, stop; never the system instance, no DNS) with three smtpd services and Cyrus SASL, relaying
to an ``smtp-sink`` on loopback.

Layout under ``base``: conf/ (main.cf, master.cf, sasl/smtpd.conf), queue/, data/, sasldb2, maillog.
Three smtpd services on free loopback ports:
  plain       permit_mynetworks, no AUTH             (smtp-source)
  submission  STARTTLS required, Cyrus SASL (sasldb), permit_sasl_authenticated only
  idle        like plain, with a process limit high enough to hold the idle-connection test
Everything queued goes to ``relayhost = [127.0.0.1]:<sink port>``: nothing leaves loopback. The sink is
its own ``smtp-sink``, or one the caller started (``sink_port``; the delivery scenario's dumping sink).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from tests.peers.postfix import PrivatePostfix
from tests.peers.require import find

from .common import BENCH_DOMAIN, log, tool
from .sink import SmtpSink

POSTFIX_PACKAGES = ["postfix", "sasl2-bin", "libsasl2-modules"]
SASL_USER = f"benchuser@{BENCH_DOMAIN}"
SASL_PASSWORD = "bench-" + "p" * 20


def ensure_installed() -> None:
    """Install Postfix + Cyrus SASL tools from Debian when missing (a fresh machine)."""
    tools = ("postfix", "postconf", "smtp-source", "smtp-sink", "saslpasswd2")
    missing = [name for name in tools if find(name) is None]
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


def _version() -> str:
    try:
        out = subprocess.run(
            [tool("postconf"), "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out or "?"


class PostfixPeer(PrivatePostfix):
    listeners = 3  # plain, submission, idle

    def __init__(self, base: Path, cert: Path, key: Path, idle_procs: int, sink_port: int = 0) -> None:
        super().__init__({}, hostname="pfbench.localhost", base=base, postfix=tool("postfix"))
        self.cert, self.key = cert, key
        self.idle_procs = idle_procs
        self.sink: SmtpSink | None = None
        self.sink_port = sink_port  # 0: start an smtp-sink of our own
        self.version = _version()

    @property
    def plain_port(self) -> int:
        return self.ports[0]

    @property
    def submission_port(self) -> int:
        return self.ports[1]

    @property
    def idle_port(self) -> int:
        return self.ports[2]

    # --- setup -----------------------------------------------------------------------------------

    def _main_cf(self) -> str:
        return f"""\
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
smtpd_tls_cert_file = {self.cert}
smtpd_tls_key_file = {self.key}
smtpd_tls_security_level = may
cyrus_sasl_config_path = {self.conf}/sasl
"""

    def _services(self) -> str:
        plain, submission, idle = self.ports
        return (
            f"127.0.0.1:{plain} inet n - n - - smtpd\n"
            f"127.0.0.1:{submission} inet n - n - - smtpd\n"
            "  -o smtpd_tls_security_level=encrypt\n"
            "  -o smtpd_tls_auth_only=yes\n"
            "  -o smtpd_sasl_auth_enable=yes\n"
            f"  -o smtpd_sasl_local_domain={BENCH_DOMAIN}\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
            f"127.0.0.1:{idle} inet n - n - {self.idle_procs} smtpd\n"
        )

    def _prepare(self) -> None:
        b = self.base
        (self.conf / "sasl").mkdir(parents=True, exist_ok=True)
        # Debian's Postfix looks for $config_directory/sasl/smtpd.conf
        (self.conf / "sasl" / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {b}/sasldb2\n"
        )
        user, _, realm = SASL_USER.partition("@")
        subprocess.run(
            [tool("saslpasswd2"), "-p", "-c", "-f", str(b / "sasldb2"), "-u", realm, user],
            input=SASL_PASSWORD,
            text=True,
            check=True,
            timeout=30,
        )
        pw = pwd.getpwnam("postfix")  # daemons running as the postfix user must read sasldb2 (and the cert)
        os.chown(b / "sasldb2", pw.pw_uid, pw.pw_gid)
        os.chmod(b / "sasldb2", 0o640)

    def start(self) -> PostfixPeer:
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance needs root (postfix -c DIR start)")
        if not self.sink_port:
            self.sink = SmtpSink(self.base, dump=False).start()
            self.sink_port = self.sink.port
        self.relayhost = f"[127.0.0.1]:{self.sink_port}"
        super().start()
        log(
            f"Postfix {self.version} up: plain :{self.plain_port}, submission :{self.submission_port}, "
            f"idle :{self.idle_port}, smtp-sink :{self.sink_port}"
        )
        return self

    # --- state -----------------------------------------------------------------------------------

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
        try:
            super().stop()
        finally:
            if self.sink is not None:
                self.sink.stop()
                self.sink = None
