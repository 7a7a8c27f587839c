from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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


@pytest.fixture(scope="module")
def public_relay(tmp_path_factory: pytest.TempPathFactory, local_pds: LocalPds, probe_tls: ProbeTls) -> Iterator[PublicRelay]:
    """``atmos serve`` (production mode) behind a TLS proxy at https://client.probe.internal:<port>."""
    base = tmp_path_factory.mktemp("relay")
    proxy = TlsProxy(probe_tls.cert, probe_tls.key)
    relay = RelayProcess(base=base, tls=make_tls(base / "tls"), extra_toml=(
        "[identity]\n"
        f'plc_url = "{local_pds.plc_url}"\nhandle_resolution = "well-known-at"\n'
        f'handle_resolver_url = "{local_pds.pds_url}"\nallow_http_on_loopback = true\n'))
    relay.write_config()
    relay.config_path.write_text(f'public_url = "https://{PROBE_HOST}:{proxy.port}"\n' + relay.config_path.read_text())
    relay.start()
    host, _, port = relay.http.removeprefix("http://").rpartition(":")
    proxy.start((host, int(port)))
    try:
        yield PublicRelay(relay, proxy)
    finally:
        proxy.close()
        if relay.proc is not None and relay.proc.poll() is None:
            relay.stop()


__all__ = ["local_pds", "probe_tls"]
