from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.relayproc import RelayProcess, make_tls
from tests.localpds.fixture import PROBE_HOST, LocalPds, ProbeTls, local_pds, probe_tls
from tests.pages.tlsproxy import TlsProxy


@dataclass
class PublicRelay:
    relay: RelayProcess
    proxy: TlsProxy

    @property
    def public_url(self) -> str:
        return f"https://{PROBE_HOST}:{self.proxy.port}"

    @property
    def local_url(self) -> str:
        """The same origin, by a name this machine resolves (the test cert covers both)."""
        return f"https://localhost:{self.proxy.port}"


@contextmanager
def public_relay_process(base: Path, local_pds: LocalPds, probe_tls: ProbeTls, extra_toml: str = "") -> Iterator[PublicRelay]:
    """``atmos serve`` (production mode) behind a TLS proxy at https://client.probe.internal:<port>."""
    proxy = TlsProxy(probe_tls.cert, probe_tls.key)
    relay = RelayProcess(base=base, tls=make_tls(base / "tls"), extra_toml=(
        "[identity]\n"
        f'plc_url = "{local_pds.plc_url}"\nhandle_resolution = "well-known-at"\n'
        f'handle_resolver_url = "{local_pds.pds_url}"\n' + extra_toml))
    relay.write_config()
    relay.config_path.write_text(f'public_url = "https://{PROBE_HOST}:{proxy.port}"\n' + relay.config_path.read_text())
    try:
        relay.start()
        host, _, port = relay.http.removeprefix("http://").rpartition(":")
        proxy.start((host, int(port)))
        yield PublicRelay(relay, proxy)
    finally:
        proxy.close()
        if relay.proc is not None and relay.proc.poll() is None:
            relay.stop()


@pytest.fixture(scope="module")
def public_relay(tmp_path_factory: pytest.TempPathFactory, local_pds: LocalPds, probe_tls: ProbeTls) -> Iterator[PublicRelay]:
    with public_relay_process(tmp_path_factory.mktemp("relay"), local_pds, probe_tls) as relay:
        yield relay


__all__ = ["local_pds", "probe_tls"]
