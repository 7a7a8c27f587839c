"""Firehose-driven ``relay-member``: the local PDS's own ``com.atproto.sync.subscribeRepos`` stream makes the
real relay process label within seconds, with the periodic re-check set to an hour (so only the firehose
can be why); and the stream client against a scripted hostile Jetstream server (junk, oversized frames,
cursor resumed after reconnects)."""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from atproto import Client

from relay.delivery.routing import Resolver
from relay.labeler.conditions import ATTESTATION_COLLECTION
from relay.labeler.firehose import Firehose, FrameError, decode_jetstream, decode_repos_frame
from relay.net.egress import Egress
from relay.store import open_store
from relay.store.aio import AsyncStore
from tests.e2e.relayproc import RelayProcess, make_tls
from tests.labeler.conftest import DOMAIN, LABELER, query, wait_for, zone_lines
from tests.localpds.fixture import LocalPds, local_pds, probe_tls
from tests.peers.knot import KnotServer
from tests.peers.knot import knot_fixture as knot_fixture  # registers the ``knot`` fixture

__all__ = ["local_pds", "probe_tls"]  # session fixtures (start the local PDS once)


@pytest.fixture
def relay(tmp_path_factory: pytest.TempPathFactory, local_pds: LocalPds) -> Iterator[tuple[RelayProcess, list[str]]]:
    base = tmp_path_factory.mktemp("firehose")
    stream = local_pds.pds_url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos"
    with KnotServer(base / "knot", {DOMAIN: ["@ 300 A 127.0.0.1"]}) as dns:
        proc = RelayProcess(base=base / "relay", tls=make_tls(base / "tls"), extra_toml=(
            f'[dns]\nnameservers = ["{dns.nameservers[0]}"]\nrelay_ips = ["192.0.2.25"]\n'
            "recheck_interval = 3600.0\npending_recheck_interval = 1.0\n"
            f'[testing]\nallow_loopback_peers = true\n[identity]\nplc_url = "{local_pds.plc_url}"\ntimeout = 5.0\n'
            f'handle_resolution = "well-known-at"\nhandle_resolver_url = "{local_pds.pds_url}"\n'
            f'[labeler]\ndid = "{LABELER}"\nrecheck_interval = 3600.0\npending = 1.0\n'
            f'firehose_url = "{stream}"\n'))
        proc.base.mkdir(parents=True, exist_ok=True)
        proc.write_config()
        info = proc.admin("enroll", "--did", local_pds.did, "--domain", DOMAIN)
        records: list[dict[str, Any]] = info["records"]
        dns.update(DOMAIN, zone_lines(records, selector_x=False))
        selectors = sorted(r["name"].split("._domainkey.")[0] for r in records if "._domainkey." in r["name"])
        proc.start()
        try:
            yield proc, selectors
        finally:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()
        log = "".join(proc.output)
        assert "Traceback" not in log, log


def test_attestation_commits_on_the_pds_firehose_label_within_seconds(
    local_pds: LocalPds, relay: tuple[RelayProcess, list[str]]
) -> None:
    proc, selectors = relay
    http, did = proc.http, local_pds.did
    wait_for(http, did, {"verified-mail-operator": True})
    member = Client(base_url=local_pds.pds_url)
    try:
        member.login(local_pds.handle, local_pds.password)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        started = time.monotonic()
        member.com.atproto.repo.put_record({
            "repo": did, "collection": ATTESTATION_COLLECTION, "rkey": DOMAIN,
            "record": {"$type": ATTESTATION_COLLECTION, "domain": DOMAIN, "dkimSelectors": selectors,
                       "relayMember": True, "createdAt": now}})
        # The re-check is an hour away: only the firehose can bring this label in time.
        wait_for(http, did, {"verified-mail-operator": True, "relay-member": True})
        print(f"relay-member applied {time.monotonic() - started:.2f} s after the attestation commit")
        member.com.atproto.repo.delete_record({"repo": did, "collection": ATTESTATION_COLLECTION, "rkey": DOMAIN})
        wait_for(http, did, {"relay-member": False, "verified-mail-operator": True})
        negations = [lab for lab in query(http, did)["labels"] if lab["val"] == "relay-member" and lab.get("neg")]
        assert len(negations) == 1
    finally:
        member.request.close()
    cursor = open_store(f"sqlite:///{proc.state_dir / 'relay.db'}")
    try:
        # The firehose cursor is saved every few seconds and at shutdown.
        proc.stop()
        url = local_pds.pds_url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos"
        saved = cursor.get_firehose_cursor(url)
        assert saved is not None and saved > 0
    finally:
        cursor.close()


# ---- the client against a scripted Jetstream server -------------------------------------------------


def _jet(did: str, time_us: int, collection: str = ATTESTATION_COLLECTION) -> str:
    return json.dumps({"did": did, "time_us": time_us, "kind": "commit",
                       "commit": {"operation": "create", "collection": collection, "rkey": "x"}})


class _BusyStore:
    """The real store, with a member list that takes a moment to read: the client is busy with the first
    frame while the next ones, and the oversized one behind them, arrive (the order the race needs)."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    async def get_firehose_cursor(self, url: str) -> int | None:
        return await self.store.get_firehose_cursor(url)

    async def set_firehose_cursor(self, url: str, cursor: int, now: float) -> None:
        await self.store.set_firehose_cursor(url, cursor, now)

    async def list_members(self) -> list[Any]:
        await trio.sleep(0.3)
        return await self.store.list_members()


@pytest.mark.trio
async def test_jetstream_client_survives_hostile_frames_and_resumes_from_its_cursor(tmp_path: Path) -> None:
    member, stranger = "did:plc:memberaaaaaaaaaaaaaaaaaa", "did:plc:strangeraaaaaaaaaaaaaaaa"
    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    await store.create_member(member)
    paths: list[str] = []
    scripts = [
        # The stranger's commit is the first that needs the member list (slow, _BusyStore): the member's
        # commit queues up behind it, the oversized frame right behind that.
        [_jet(member, 10, "app.bsky.feed.post"), _jet(stranger, 11), _jet(member, 12), "x" * 5000],
        ["{not json"],  # junk: the connection is dropped
        [_jet(member, 13)],
    ]

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        paths.append(request.path)
        ws = await request.accept()
        script = scripts.pop(0) if scripts else []
        for message in script:
            await ws.send_message(message)
        if not scripts:
            await trio.sleep_forever()
        await trio.sleep(0.5)  # the client closes first on a bad frame
        await ws.aclose()

    checked: list[str] = []
    two = trio.Event()

    def on_member(did: str) -> None:
        checked.append(did)
        if len(checked) == 2:
            two.set()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/subscribe"
        # Every complete frame that arrived before the oversized one is handled (trio-websocket discards
        # its queued messages when it closes for size, so the client must not let any queue up).
        firehose = Firehose(url, _BusyStore(store), on_member, max_frame=4096, egress=Egress(allow_loopback=True))
        await nursery.start(firehose.run)
        with trio.fail_after(30):
            await two.wait()
        nursery.cancel_scope.cancel()
    assert checked == [member, member]  # the stranger's commit and the other collection are ignored
    assert paths[0] == "/subscribe?wantedCollections=email.atmos.attestation"
    assert "cursor=12" in paths[1] and "cursor=12" in paths[2]  # resumed after the oversized frame and the junk
    assert await store.get_firehose_cursor(url) == 13
    await store.aclose()


@pytest.mark.trio
async def test_a_stream_host_on_a_private_address_is_refused_unconnected(
        knot: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The firehose connects through relay.egress: a stream host resolving to 10.x, or to loopback without
    ``[testing] allow_loopback_peers``, is refused before any connection, the reason logged, and the
    client keeps backing off (no cursor, no frames)."""
    import socket

    listener = socket.socket()  # where a connection would land: nothing may knock
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    dns: KnotServer = knot({"private.test": ["fh A 10.0.0.1"], "loop.test": ["fh A 127.0.0.1"]})
    egress = Egress(resolver=Resolver(dns.nameservers, lifetime=3))
    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    hoses = [Firehose(f"wss://fh.private.test:{port}/subscribe", store, print, egress=egress),
             Firehose(f"wss://fh.loop.test:{port}/subscribe", store, print, egress=egress),
             Firehose(f"ws://fh.loop.test:{port}/subscribe", store, print, egress=egress)]  # ws: not outside --dev
    wanted = {"fh.private.test: refusing to connect (10.0.0.1 is private)",
              "fh.loop.test: refusing to connect (127.0.0.1 is loopback)",
              f"'ws://fh.loop.test:{port}/subscribe' must be wss://"}
    all_logged = trio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            wanted.difference_update({w for w in wanted if w in record.getMessage()})
            if not wanted:
                all_logged.set()

    watch = Watch()
    logging.getLogger("relay.labeler.firehose").addHandler(watch)
    try:
        with caplog.at_level("WARNING", logger="relay.labeler.firehose"):
            async with trio.open_nursery() as nursery:
                for hose in hoses:
                    await nursery.start(hose.run)
                with trio.fail_after(10):
                    await all_logged.wait()
                nursery.cancel_scope.cancel()
        assert [(h.connects, h.frames, h.cursor) for h in hoses] == [(0, 0, None)] * 3
        assert any("outbound connection refused: fh.private.test" in r.getMessage() for r in caplog.records)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was made
    finally:
        logging.getLogger("relay.labeler.firehose").removeHandler(watch)
        listener.close()
        await store.aclose()


def test_decoders_refuse_junk() -> None:
    with pytest.raises(FrameError):
        decode_repos_frame(b"\xff\x00garbage")
    with pytest.raises(FrameError):
        decode_jetstream("[1, 2]")
    assert decode_jetstream(json.dumps({"kind": "identity", "did": "did:plc:x", "time_us": 5})).dids == ()
