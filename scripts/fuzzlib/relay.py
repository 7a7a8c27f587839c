"""The relay under test: ``atmos serve --dev`` as a subprocess, every listener on loopback port 0.

Dev mode delivers all outbound mail to the relay's own capture sink and runs no DNS checks, so nothing
the battery provokes leaves the machine; sign-in's identity lookups go to a closed loopback port.
Rate and warming caps are lifted so that accepted mail keeps exercising the accept path, and every
per-address budget too, as ``scripts/bench`` does: every case comes from 127.0.0.1, so the connection
cap per address, the failed-auth budgets, the inbound per-IP budget, the sign-ins per IP and the
per-session error limits would otherwise refuse most of the battery after its first seconds, and the
run would measure our throttles instead of what the parsers and protocol code do with hostile input.
(The budgets themselves are proved by tests/e2e/test_budgets.py; the time limits stay as configured.)
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIG = 1_000_000_000
ADMIN_TOKEN = "fuzz-admin-" + secrets.token_hex(12)


@dataclass
class Target:
    """Where the current relay process listens (updated when it has to be restarted)."""

    submission: tuple[str, int] = ("", 0)
    inbound: tuple[str, int] = ("", 0)
    http: tuple[str, int] = ("", 0)
    did: str = ""
    domain: str = ""
    api_key: str = ""
    admin_token: str = ADMIN_TOKEN
    operator_domain: str = "relay.localhost"


@dataclass
class Relay:
    base: Path
    target: Target = field(default_factory=Target)
    proc: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)  # exit codes of every unexpected end
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.base / "atmos.toml"

    @property
    def logfile(self) -> Path:
        return self.base / "relay.log"

    def write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        dead = f"127.0.0.1:{closed_port()}"  # an identity lookup (sign-in) fails at once, on loopback
        self.config.write_text(f"""\
operator_domain = "{self.target.operator_domain}"
state_dir = "{self.base / "state"}"
[smtp]
submission_addr = "127.0.0.1:0"
inbound_addr = "127.0.0.1:0"
shutdown_grace = 3.0
max_connections_per_ip = {BIG}
error_limit = {BIG}
junk_command_limit = {BIG}
[auth]
per_ip_per_minute = {BIG}
per_ip_burst = {BIG}
per_ip_concurrency = {BIG}
per_did_per_minute = {BIG}
per_did_burst = {BIG}
[identity]
plc_url = "http://{dead}"
signins_per_ip = {BIG}
[http]
addr = "127.0.0.1:0"
[limits]
hourly = {BIG}
daily = {BIG}
relay_per_minute = {BIG}
warming_tiers = [[0, {BIG}, {BIG}]]
[inbound]
per_ip_per_minute = {BIG}
per_ip_burst = {BIG}
forward_per_ip_per_hour = {BIG}
""")

    def start(self, timeout: float = 60.0) -> None:
        if not self.config.exists():
            self.write_config()
        env = dict(
            os.environ,
            ATMOS_ADMIN_TOKEN=ADMIN_TOKEN,
            ATMOS_SECRET_KEY="fuzz-secret-" + "k" * 24,
            PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        )
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        log = open(self.logfile, "ab")  # noqa: SIM115 (the child owns it for its lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--dev", "--config", str(self.config), "--log-level", "WARNING"],
            cwd=self.base,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited rc={self.proc.returncode} at start:\n{self.log_text()[-4000:]}")
            with open(self.logfile, "rb") as fh:
                fh.seek(offset)
                for line in fh.read().decode("utf-8", "replace").splitlines():
                    if line.startswith("ATMOS_READY "):
                        self._ready(json.loads(line.split(" ", 1)[1]))
                        return
            time.sleep(0.1)
        raise RuntimeError("relay did not become ready:\n" + self.log_text()[-4000:])

    def _ready(self, ready: dict[str, list[str]]) -> None:
        def addr(value: str) -> tuple[str, int]:
            host, _, port = value.rpartition(":")
            host = host.strip("[]")
            if host not in ("127.0.0.1", "::1"):
                raise RuntimeError(f"refusing to fuzz a non-loopback address {value}")
            return host, int(port)

        self.target.submission = addr(ready["submission"][0])
        self.target.inbound = addr(ready["inbound"][0])
        self.target.http = addr(ready["http"][0].removeprefix("http://"))
        creds = json.loads((self.base / "state" / "dev-credentials.json").read_text())
        self.target.did, self.target.domain, self.target.api_key = creds["did"], creds["domain"], creds["api_key"]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> bool:
        """True when the relay is running; an unexpected exit is counted and the relay restarted."""
        if self.alive():
            return True
        assert self.proc is not None
        self.exits.append(self.proc.returncode)
        self.start()
        return False

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.logfile.read_text("utf-8", "replace") if self.logfile.exists() else ""


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go: the kernel does not hand it out again soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tracebacks(text: str) -> list[str]:
    """One entry per traceback in the log (plain or exception group): its innermost exception line."""
    found: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        top = line.startswith("Traceback (most recent call last)") or line.startswith("  + Exception Group Traceback")
        if not top:
            continue
        summary = "(truncated)"
        for follow in lines[i + 1 : i + 400]:
            bare = follow.lstrip(" |+-").rstrip()
            if bare and not follow.startswith(" ") and not follow.startswith("  ") and ":" in bare:
                summary = bare  # a plain traceback ends at its first unindented line
                break
            if (
                follow.lstrip().startswith("| ")
                and not bare.startswith(("File ", "Traceback", "^"))
                and (":" in bare)
                and bare.split(":")[0].replace(".", "").replace("_", "").isalnum()
                and bare.split(":")[0][:1].isupper()
            ):
                summary = bare  # inside a group: the first "| SomeError: message" line
                break
            if follow.startswith(("Traceback", "  + Exception Group")):
                break
        found.append(summary[:200])
    return found


__all__ = ["Relay", "Target", "tracebacks"]
