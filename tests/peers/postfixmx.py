"""A TLS-capable recipient MTA for tests: a private Postfix smtpd with STARTTLS on 127.0.0.1 (DESIGN §8).

Its own config, queue and log in a temporary directory (``postfix -c DIR``, never the system instance,
no DNS). smtpd offers STARTTLS with the given certificate chain (e.g. from a trustme CA) and accepts
mail for ``domains``, which Postfix hands on to ``forward_port`` (an smtp-sink the test reads), so a
test sees both what Postfix logged about TLS and the message itself.

    mx = PostfixMx(["dane.test"], chain_pem=key_and_chain, forward_port=sink.port).start()
    mx.port, mx.maillog()
    mx.stop()

Needs root (Postfix drops to its ``postfix`` user) and the Debian ``postfix`` package.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence

from tests.inbound.postfix import _MASTER_TAIL, BouncingPostfix, free_port, wait_for_banner


class PostfixMx(BouncingPostfix):
    """See the module docstring. ``chain_pem``: the private key, then the certificate chain (leaf first)."""

    def __init__(self, domains: Sequence[str], *, chain_pem: bytes, forward_port: int,
                 hostname: str = "mx.test") -> None:
        super().__init__({d: forward_port for d in domains}, hostname=hostname)
        self.chain_pem = chain_pem

    def start(self) -> None:
        b = self.base
        for d in (self.conf, b / "queue", b / "data"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(b, 0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(b / "data", pw.pw_uid, pw.pw_gid)
        chain = self.conf / "chain.pem"
        chain.write_bytes(self.chain_pem)
        os.chmod(chain, 0o600)
        self.port = free_port()
        transport = ", ".join(f"{dom}=smtp:[127.0.0.1]:{port}" for dom, port in self.routes.items())
        relay = ", ".join(self.routes)
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
relay_domains = {relay}
transport_maps = inline:{{ {transport} }}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_peername_lookup = no
mynetworks =
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_tls_security_level = may
smtpd_tls_chain_files = {chain}
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_banner = $myhostname ESMTP
biff = no
append_dot_mydomain = no
smtp_connect_timeout = 5s
delay_warning_time = 0
""")
        tlsmgr = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"  # TLS needs it (entropy, cache)
        (self.conf / "master.cf").write_text(f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + _MASTER_TAIL + tlsmgr)
        res = subprocess.run([self.postfix, "-c", str(self.conf), "start"], capture_output=True, text=True,
                             timeout=60, check=False)
        self.started = True
        if res.returncode != 0:
            raise RuntimeError(f"postfix start failed rc={res.returncode}: {res.stderr.strip()}\n{self.maillog()}")
        wait_for_banner(self.port, 20)

