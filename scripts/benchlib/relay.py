"""The real relay: ``atmos serve --config CFG`` as a subprocess on free loopback ports, one member.

Its outbound mail always goes to the bench's own ``smtp-sink`` (``[delivery] relayhost = "[127.0.0.1]:PORT"``,
no MX lookup), and its DNS resolver is pointed at a closed loopback port: nothing the bench starts ever
queries the system resolver or sends traffic off this machine.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.peers.ports import free_port
from tests.peers.process import terminate

from .common import BENCH_DOMAIN, log

BENCH_DID = "did:plc:benchbenchbenchbenchbenc"
BIG = 1_000_000_000  # rate limits and warming caps out of the way: the bench measures the accept path


class RelayStartError(RuntimeError):
    """The relay could not be started or set up; the message holds the command and its output."""


class RelayPeer:
    def __init__(self, root: Path, base: Path, cert: Path, key: Path, *, relayhost: str) -> None:
        """``relayhost``: ``[127.0.0.1]:PORT`` of the bench's sink (required: never the system resolver + MX)."""
        if not relayhost.startswith("[127.0.0.1]:"):
            raise ValueError(f"bench relayhost must be a bracketed loopback address, got {relayhost!r}")
        self.root = root
        self.base = base
        self.cert, self.key = cert, key
        self.relayhost = relayhost
        self.dead_dns = f"127.0.0.1:{free_port()}"  # nothing listens there: any lookup fails fast, on loopback
        self.config = base / "atmos.toml"
        self.logfile = base / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}
        self.api_key = ""
        self.env = dict(os.environ, ATMOS_ADMIN_TOKEN=secrets.token_hex(16), ATMOS_SECRET_KEY=secrets.token_hex(16))
        self.env.pop("ATMOS_LOG_LEVEL", None)

    def atmos(self) -> list[str]:
        exe = self.root / ".venv" / "bin" / "atmos"
        return [str(exe)] if exe.exists() else [sys.executable, "-m", "relay"]

    def write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""\
operator_domain = "relay.bench.localhost"
state_dir = "{self.base / "state"}"

[smtp]
submission_addr = "127.0.0.1:0"
submissions_addr = "127.0.0.1:0"
inbound_addr = "127.0.0.1:0"
# Every bench client is 127.0.0.1: the per-address budgets are lifted so the bench measures capacity.
max_connections_per_ip = {BIG}
pre_auth_timeout = 300.0
pre_auth_time = 3600.0
pre_mail_timeout = 300.0
pre_mail_time = 3600.0

[auth]
per_ip_burst = {BIG}
per_ip_per_minute = {BIG}
per_ip_concurrency = {BIG}

[http]
addr = "127.0.0.1:0"

[tls]
cert_file = "{self.cert}"
key_file = "{self.key}"

[limits]
hourly = {BIG}
daily = {BIG}
relay_per_minute = {BIG}
warming_tiers = [[0, {BIG}, {BIG}]]

[delivery]
relayhost = "{self.relayhost}"
nameservers = ["{self.dead_dns}"]
tls = "none"

[inbound]
operator_inbox = "operator@sink.example"
per_ip_per_minute = {BIG}
per_ip_burst = {BIG}

[dns]
nameservers = ["{self.dead_dns}"]

[identity]
plc_url = "http://{self.dead_dns}"
""")

    def _log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        cmd = [*self.atmos(), "serve", "--config", str(self.config)]
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.base, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self._log_text().splitlines():
                if line.startswith("ATMOS_READY "):
                    self.ready = json.loads(line.split(" ", 1)[1])
                    log(f"relay up (pid {self.proc.pid}): {line.split(' ', 1)[1]}")
                    return
            if self.proc.poll() is not None:
                raise RelayStartError(
                    f"`{' '.join(cmd)}` exited rc={self.proc.returncode}:\n" + _tail(self._log_text(), 40)
                )
            time.sleep(0.1)
        raise RelayStartError(
            f"`{' '.join(cmd)}` printed no ATMOS_READY line within {timeout:.0f}s:\n" + _tail(self._log_text(), 40)
        )

    def enroll(self) -> str:
        cmd = [
            *self.atmos(),
            "admin",
            "--config",
            str(self.config),
            "enroll",
            "--did",
            BENCH_DID,
            "--domain",
            BENCH_DOMAIN,
            "--skip-dns",
            "--json",
        ]
        res = subprocess.run(cmd, cwd=self.base, env=self.env, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RelayStartError(f"`{' '.join(cmd)}` failed rc={res.returncode}:\n{res.stdout}{res.stderr}")
        try:
            self.api_key = str(json.loads(res.stdout)["api_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RelayStartError(f"`{' '.join(cmd)}`: no api_key in output ({exc}):\n{res.stdout}") from None
        return self.api_key

    # --- HTTP API ------------------------------------------------------------------------------------

    def _get(self, path: str, headers: dict[str, str], timeout: float) -> Any:
        req = urllib.request.Request(self.http + path, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def queue_stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """``GET /admin/api/queue`` stats: live_messages, delivered, deferred, bounced, in_flight, ..."""
        doc = self._get("/admin/api/queue", {"Authorization": f"Bearer {self.env['ATMOS_ADMIN_TOKEN']}"}, timeout)
        return dict(doc.get("stats") or {})

    def live_messages(self) -> int | None:
        """Messages still in the spool (``/healthz``, cheap); None when the relay does not answer."""
        try:
            return int(self._get("/healthz", {}, 5.0)["spool"]["liveMessages"])
        except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError):
            return None

    def wait_drained(self, timeout: float) -> int | None:
        """Wait (bounded) until the spool is empty; returns what is left (None: no answer)."""
        deadline = time.monotonic() + timeout
        left = self.live_messages()
        while left and time.monotonic() < deadline and self.alive():
            time.sleep(0.25)
            left = self.live_messages()
        return left

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @staticmethod
    def _hostport(value: str) -> tuple[str, int]:
        host, _, port = value.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def submission(self) -> tuple[str, int]:
        return self._hostport(self.ready["submission"][0])

    @property
    def inbound(self) -> tuple[str, int] | None:
        values = self.ready.get("inbound") or []
        return self._hostport(values[0]) if values else None

    @property
    def http(self) -> str:
        return str(self.ready["http"][0])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if terminate(proc, grace=20):
            log("relay did not exit 20 s after SIGTERM; killed it")


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])
