"""relay.operator.health: /healthz's reasons mirror the accept path's refusals (issue 13)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from relay.accept.acceptor import Acceptor
from relay.app.services import Services
from relay.config import Config, SpoolConfig
from relay.members.apikey import ApiKeyCache
from relay.members.auth import Authenticator
from relay.operator.health import RECENT, refusals
from relay.store.aio import AsyncStore
from relay.store.sqlite import SqliteStore
from relay.store.writer import StatusWriter
from spool import Envelope, Spool


def services(tmp_path: Path, spool: Spool, store: AsyncStore, writer: StatusWriter, max_bytes: int = 0) -> Services:
    keys = ApiKeyCache()
    return Services(cfg=Config(state_dir=str(tmp_path), spool=SpoolConfig(max_bytes=max_bytes)), store=store,
                    spool=spool, writer=writer, keys=keys, auth=Authenticator(store, keys),
                    acceptor=Acceptor(spool, writer))


@pytest.mark.trio
async def test_each_refusal_is_a_reason_and_ok_is_empty(tmp_path: Path) -> None:
    sync = SqliteStore.open(str(tmp_path / "relay.db"))
    store = AsyncStore(sync)
    spool = Spool(tmp_path / "spool", max_bytes=None)
    writer = StatusWriter(store, backlog_limit=1)  # not running: what is submitted stays queued
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        svc = services(tmp_path, spool, store, writer)
        assert await refusals(svc) == []
        writer.store_error = "store unavailable: database is locked"  # as while a batch is being retried
        assert await refusals(svc) == ["store unavailable: store unavailable: database is locked"]
        writer.store_error = None
        from tests.store.conftest import new_message

        writer.submit_nowait(new_message(1))
        assert await refusals(svc) == ["status writer overloaded: 1 writes waiting for the store"]
        svc = services(tmp_path, spool, store, StatusWriter(store))
        svc.acceptor.last_refusal = ("spool full: no space left on device", time.monotonic() - 1)
        assert [r.split(" (")[0] for r in await refusals(svc)] == ["spool full: no space left on device"]
        svc.acceptor.last_refusal = ("spool full: no space left on device", time.monotonic() - RECENT - 1)
        assert await refusals(svc) == []  # a refusal long ago: the relay takes mail again
        sync.close()  # the store gone: reported, never an exception out of /healthz
        assert [r.split(":")[0] for r in await refusals(svc)] == ["store unavailable"]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_spool_over_max_bytes_is_full(tmp_path: Path) -> None:
    store = AsyncStore(SqliteStore.open(str(tmp_path / "relay.db")))
    spool = Spool(tmp_path / "spool", max_bytes=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(spool.run)
        svc = services(tmp_path, spool, store, StatusWriter(store), max_bytes=100)
        assert await refusals(svc) == []
        await spool.accept(Envelope(mail_from="a@b.example", rcpts=("c@d.example",), did="did:plc:x", attrs={},
                                    arrival=time.time()), b"Subject: x\r\n\r\n" + b"x" * 200)
        reasons = await refusals(svc)
        assert len(reasons) == 1 and reasons[0].startswith("spool full: ") and "spool.max_bytes" in reasons[0]
        nursery.cancel_scope.cancel()
