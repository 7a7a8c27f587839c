"""The relay's OAuth routes served over TLS at https://client.probe.internal:<port>, in the test's Trio run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from relay.config import Config, IdentityConfig, TestingConfig
from relay.oauth import OAuthClient, client_from_config
from relay.store.aio import AsyncStore
from tests.localpds.fixture import PROBE_HOST, LocalPds, ProbeTls
from tests.peers.ports import free_port
from web import auth


def relay_config(state_dir: Path, pds: LocalPds, public_url: str) -> Config:
    return Config(public_url=public_url, state_dir=str(state_dir), identity=IdentityConfig(
        plc_url=pds.plc_url, handle_resolution="well-known-at", handle_resolver_url=pds.pds_url,
        timeout=10.0), testing=TestingConfig(allow_loopback_peers=True))


@asynccontextmanager
async def served_client(
    state_dir: Path, pds: LocalPds, tls: ProbeTls, store: AsyncStore | None = None
) -> AsyncIterator[OAuthClient]:
    port = free_port()
    cfg = relay_config(state_dir, pds, f"https://{PROBE_HOST}:{port}")
    client = client_from_config(cfg, store=store)
    app = QuartTrio("web")
    app.extensions["atmos"] = SimpleNamespace(cfg=cfg, oauth=client)
    app.register_blueprint(auth.blueprint)
    hc = HypercornConfig()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.certfile, hc.keyfile = str(tls.cert), str(tls.key)
    hc.accesslog = None
    hc.graceful_timeout = 1
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(hypercorn_serve, app, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        try:
            yield client
        finally:
            stop.set()
