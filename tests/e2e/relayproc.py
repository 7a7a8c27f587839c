"""Run the real ``atmos serve`` as a subprocess on free loopback ports, as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

ROOT = Path(__file__).resolve().parents[2]
ATMOS = [sys.executable, "-m", "relay"]


@dataclass
class TLSFiles:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_pem: Path


def make_tls(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "relay.test")
    cert, key, ca_pem = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    return TLSFiles(ca, cert, key, ca_pem)


@dataclass
class RelayProcess:
    base: Path
    tls: TLSFiles
    extra_toml: str = ""
    shutdown_grace: float = 3.0
    dev: bool = False  # `atmos serve --dev --config F`: generated secrets and TLS in state_dir
    workers: int = 1  # `--workers N` (one node unless a test is about nodes)
    node_name: str = "e2e"  # [node] name: worker i is node "e2e-i", its spool state/spool/e2e-i
    smtp_toml: str = ""  # more [smtp] keys (the table itself is written here)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    submission: tuple[str, int] = ("", 0)
    submissions: tuple[str, int] = ("", 0)  # implicit TLS (port 465 in production)
    inbound: tuple[str, int] = ("", 0)
    http: str = ""
    output: list[str] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    @property
    def config_path(self) -> Path:
        return self.base / "atmos.toml"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    def spool_dir(self, worker: int = 1) -> Path:
        """Node ``worker``'s spool (relay.cluster.layout)."""
        return self.state_dir / "spool" / f"{self.node_name}-{worker}"

    def write_config(self) -> None:
        self.config_path.write_text(
            f'operator_domain = "relay.test"\nstate_dir = "{self.state_dir}"\n'
            '[smtp]\nsubmission_addr = "127.0.0.1:0"\nsubmissions_addr = "127.0.0.1:0"\ninbound_addr = "127.0.0.1:0"\n'
            f'shutdown_grace = {self.shutdown_grace}\n' + self.smtp_toml + '[http]\naddr = "127.0.0.1:0"\n'
            + ("" if self.dev else f'[tls]\ncert_file = "{self.tls.cert}"\nkey_file = "{self.tls.key}"\n')
            + self.limits_toml()
            # Never route test mail through the machine's resolver: unless the test brings its own
            # [delivery], mail goes to a closed loopback port and stays deferred in the spool.
            + ("" if "[delivery]" in self.extra_toml else '[delivery]\nrelayhost = "[127.0.0.1]:1"\n')
            # Likewise the periodic DNS checks: a closed loopback port, so they fail without sending anything.
            + ("" if "[dns]" in self.extra_toml else '[dns]\nnameservers = ["127.0.0.1:1"]\n')
            # and identity lookups (the labeler resolves member DIDs): never the public PLC directory.
            + ("" if "[identity]" in self.extra_toml else '[identity]\nplc_url = "http://127.0.0.1:1"\n')
            # Every peer a test brings (sink MX, webhook receiver, local PDS) listens on loopback, which
            # relay.net.egress refuses by default: this one test-only setting lets them in.
            + ("" if "[testing]" in self.extra_toml else '[testing]\nallow_loopback_peers = true\n')
            + ("" if "[node]" in self.extra_toml else f'[node]\nname = "{self.node_name}"\n')
        )

    def limits_toml(self) -> str:
        """extra_toml, with warming and rate caps lifted unless the test sets them: most tests send more
        than a cold domain's 5 an hour (tests/reputation covers the limits themselves)."""
        lifted = {"warming_tiers": "[]", "hourly": "1000000", "daily": "1000000", "relay_per_minute": "1000000"}
        text = self.extra_toml
        if "[limits]" not in text:
            return text + "[limits]\n" + "".join(f"{k} = {v}\n" for k, v in lifted.items())
        head, _, rest = text.partition("[limits]\n")
        missing = "".join(f"{k} = {v}\n" for k, v in lifted.items() if f"{k} =" not in rest.split("\n[")[0])
        return head + "[limits]\n" + missing + rest

    def full_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ATMOS_ADMIN_TOKEN", "ATMOS_SECRET_KEY")}
        if not self.dev:  # a dev relay generates its own into state_dir/secrets
            env.update({"ATMOS_ADMIN_TOKEN": "admin-token-" + "x" * 20, "ATMOS_SECRET_KEY": "secret-key-" + "y" * 24})
        env.update({"PYTHONPATH": str(ROOT), "ATMOS_LOG_LEVEL": "WARNING"})
        env.update(self.env)
        return env

    def start(self, timeout: float = 30.0) -> RelayProcess:
        if not self.config_path.exists():
            self.write_config()
        self.output = []
        self.proc = subprocess.Popen(
            [*ATMOS, "serve", *(["--dev"] if self.dev else []), "--workers", str(self.workers),
             "--config", str(self.config_path)], cwd=self.base, env=self.full_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                rc = self.proc.wait()
                self.proc.stdout.close()
                raise RuntimeError(f"relay exited rc={rc}:\n" + "".join(self.output))
            self.output.append(line)
            if line.startswith("ATMOS_READY "):
                ready = json.loads(line.split(" ", 1)[1])
                host, _, port = ready["submission"][0].rpartition(":")
                self.submission = (host, int(port))
                self.http = ready["http"][0]
                shost, _, sport = ready["submissions"][0].rpartition(":")
                self.submissions = (shost, int(sport))
                if ready.get("inbound"):
                    ihost, _, iport = ready["inbound"][0].rpartition(":")
                    self.inbound = (ihost, int(iport))
                self._drainer = threading.Thread(target=self._drain, daemon=True)
                self._drainer.start()
                return self
        raise RuntimeError("relay did not become ready:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def admin(self, *args: str, check: bool = True) -> Any:
        res = subprocess.run([*ATMOS, "admin", "--config", str(self.config_path), *args, "--json"],
                             cwd=self.base, env=self.full_env(), capture_output=True, text=True, timeout=60)
        if check and res.returncode != 0:
            raise RuntimeError(f"atmos admin {args} failed rc={res.returncode}: {res.stderr}")
        return json.loads(res.stdout) if res.returncode == 0 else res

    def enroll(self, did: str, domain: str, handle: str | None = None) -> dict[str, Any]:
        if not self.config_path.exists():
            self.write_config()
        args = ["enroll", "--did", did, "--domain", domain, "--skip-dns"]
        if handle:
            args += ["--handle", handle]
        result: dict[str, Any] = self.admin(*args)
        return result

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self._close_output()
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_output()

    def _close_output(self) -> None:
        if self._drainer is not None:
            self._drainer.join(timeout=10)
            self._drainer = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def two_machines(base: Path, tls: TLSFiles, extra_toml: str, member: tuple[str, str, str],
                 ) -> Iterator[tuple[RelayProcess, RelayProcess, str]]:
    """Two relays ("machines" alpha and beta, one node each) on the store ``extra_toml`` names, the
    ``member`` (did, domain, handle) enrolled through alpha: (alpha, beta, its API key). Beta starts with alpha's key files, as the README
    tells an operator to copy them to a second machine. Whatever still runs at the end is stopped."""
    a = RelayProcess(base=base / "a", tls=tls, extra_toml=extra_toml, node_name="alpha")
    b = RelayProcess(base=base / "b", tls=tls, extra_toml=extra_toml, node_name="beta")
    for relay in (a, b):
        relay.base.mkdir()
        relay.write_config()
    key = a.enroll(*member)["api_key"]
    try:
        a.start(timeout=60)
        for shared in ("dkim", "labeler", "oauth"):
            shutil.copytree(a.state_dir / shared, b.state_dir / shared)
        b.start(timeout=60)
        yield a, b, key
    finally:
        for relay in (b, a):
            if relay.proc is not None and relay.proc.poll() is None:
                relay.stop(timeout=60)
