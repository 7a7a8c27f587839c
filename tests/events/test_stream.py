"""The stream's server side in-process: snapshot from a real spool and store, commands, the periodic
publisher, and /admin/ws served by hypercorn on a free port (drop and shutdown close codes)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import open_websocket_url

from relay.accept.acceptor import Acceptor
from relay.app.services import Services
from relay.config import Config, LimitsConfig, NodeConfig, SuspensionConfig
from relay.delivery.retry import Outcome, OutcomeKind
from relay.delivery.scheduler import AttemptResult, Scheduler, SchedulerConfig
from relay.events import (
    Command,
    ComplaintReceived,
    Delivery,
    DomainWarming,
    Heartbeat,
    MemberSuspended,
    MessageAccepted,
    QueueChanged,
    QueueDepth,
    Snapshot,
    Throughput,
    decode,
)
from relay.members.apikey import ApiKeyCache
from relay.members.auth import Authenticator
from relay.operator.eventbus import EventBus
from relay.operator.eventstream import (
    build_snapshot,
    execute,
    handle_frame,
    queue_view,
    reputation_hooks,
    run_publisher,
    warming_state,
)
from relay.operator.metrics import RelayMetrics
from relay.reputation import Reputation
from relay.store.aio import AsyncStore
from relay.store.mirror import StatusMirror
from relay.store.rows import NodeRow
from relay.store.sqlite import SqliteStore
from relay.store.writer import StatusWriter
from spool import Spool, State
from tests.events.conftest import closed_by_server
from web.app import create_app
from web.metrics import render

TOKEN = "admin-token-" + "z" * 20
DID = "did:plc:streamaaaaaaaaaaaaaaaaaa"
DID_S = "did:plc:streamsssssssssssssssssss"[:32]
DATA = b"From: a@mail.stream.example\r\nTo: x@dest.example\r\nSubject: hi\r\n\r\nhello\r\n"


class Deferring:
    """A transport whose every attempt meets a temporary failure."""

    async def attempt(self, domain: str, mail_from: str, rcpt: str, data: bytes) -> AttemptResult:
        return AttemptResult(Outcome(OutcomeKind.TEMPORARY, "451 4.3.0 try later", "4.3.0", 451),
                             mx_host=f"mx.{domain}", tls=True)


@dataclass
class Rig:
    services: Services
    bus: EventBus
    url: str  # ws://.../admin/ws
    sync_store: SqliteStore

    async def accept(self, *rcpts: str, did: str = DID, source: str = "smtp") -> int:
        acc = await self.services.acceptor.accept(did=did, mail_from="a@mail.stream.example", rcpts=rcpts,
                                                  data=DATA, attrs={"source": source})
        return acc.queue_id


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    sync_store = SqliteStore.open(str(tmp_path / "relay.db"))
    sync_store.create_member(DID, "alice.stream.example")
    sync_store.create_member(DID_S)
    sync_store.set_member_status(DID_S, "suspended", "bounces over 5 %")
    store = AsyncStore(sync_store)
    bus, metrics = EventBus(buffer=50), RelayMetrics()
    async with trio.open_nursery() as nursery:
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer))
        await nursery.start(spool.run)
        scheduler = Scheduler(spool, writer, Deferring(), SchedulerConfig(
            operator_domain="relay.test", secret=b"s" * 32, reporting_mta="relay.test"), bus=bus)
        await nursery.start(scheduler.run)
        acceptor = Acceptor(spool, writer, bus=bus, metrics=metrics, on_accept=scheduler.notify)
        keys = ApiKeyCache()
        cfg = Config(admin_token=TOKEN)
        svc = Services(cfg=cfg, store=store, spool=spool, writer=writer, keys=keys, auth=Authenticator(store, keys),
                       acceptor=acceptor, scheduler=scheduler, bus=bus, metrics=metrics)
        hc = HypercornConfig()
        hc.bind = ["127.0.0.1:0"]
        hc.accesslog = None
        hc.graceful_timeout = 1
        stop = trio.Event()
        app: Any = create_app(svc)
        bound = await nursery.start(lambda task_status: hypercorn_serve(
            app, hc, shutdown_trigger=stop.wait, task_status=task_status))
        url = bound[0].replace("http://", "ws://") + "/admin/ws"
        yield Rig(svc, bus, url, sync_store)
        bus.close()
        stop.set()
        nursery.cancel_scope.cancel()
    sync_store.close()


async def until(predicate: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await trio.sleep(0.01)
    pytest.fail("condition not reached in time")


@pytest.mark.trio
async def test_snapshot_from_spool_scheduler_and_store(rig: Rig) -> None:
    with rig.bus.subscribe() as sub:
        q1 = await rig.accept("one@dest.example", "two@other.example")
        q2 = await rig.accept("three@dest.example", source="http")
        deliveries: list[Delivery] = []
        accepted: list[MessageAccepted] = []
        with trio.fail_after(5):
            async for event in sub:
                if isinstance(event, MessageAccepted):
                    accepted.append(event)
                elif isinstance(event, Delivery):
                    deliveries.append(event)
                if len(deliveries) == 3:
                    break
    assert [(a.queue_id, a.recipients, a.source) for a in accepted] == [
        (q1, ("one@dest.example", "two@other.example"), "smtp"), (q2, ("three@dest.example",), "http")]
    assert {d.state for d in deliveries} == {"deferred"} and {d.mx_host for d in deliveries} >= {"mx.dest.example"}

    assert (await rig.services.scheduler.hold(q2)) == 1  # type: ignore[union-attr]
    rig.services.scheduler.pause("Dest.Example")  # type: ignore[union-attr]
    snap = await build_snapshot(rig.services)
    assert snap.queue_by_state == {"accepted": 0, "deferred": 2, "held": 1}
    assert snap.queue_by_destination == {"dest.example": 2, "other.example": 1}
    assert snap.oldest_deferred is not None and snap.in_flight == 0
    assert [(i.queue_id, i.recipient, i.state, i.attempts) for i in snap.queue] == [
        (q1, "one@dest.example", "deferred", 1), (q1, "two@other.example", "deferred", 1),
        (q2, "three@dest.example", "held", 1)]
    assert snap.queue[0].last_reply == "451 4.3.0 try later" and snap.queue[0].did == DID
    assert [(s.did, s.reason) for s in snap.suspended] == [(DID_S, "bounces over 5 %")]
    assert snap.paused_destinations == ("dest.example",)
    assert snap.warming == ()  # no reputation service in this rig
    # It survives the codec the console uses.
    from relay.events import encode
    again, _ = decode(encode(snap))
    assert again == snap
    assert len(queue_view(rig.services.spool, rig.services.scheduler, limit=1).items) == 1


@pytest.mark.trio
async def test_commands_publish_their_events(rig: Rig) -> None:
    queue_id = await rig.accept("x@dest.example")
    await until(lambda: rig.services.spool.get(queue_id).recipient(queue_id).state is State.DEFERRED)  # type: ignore[union-attr]
    with rig.bus.subscribe() as sub:
        result = await execute(rig.services, Command(id="1", action="hold", target=str(queue_id)))
        assert result.ok and result.message == f"hold {queue_id}: 1 recipient changed"
        result = await execute(rig.services, Command(id="2", action="hold", target=str(queue_id)))
        assert result.ok and result.message.endswith("0 recipients changed")
        result = await execute(rig.services, Command(id="3", action="suspend", target=DID, reason="r"))
        assert result.ok
        result = await execute(rig.services, Command(id="4", action="unsuspend", target=DID))
        assert result.ok
        result = await handle_frame(rig.services, b'{"v":1,"type":"command","data":{"id":"5","action":"pause",'
                                                  b'"target":"a.example"}}')
        assert result.ok
        types = []
        while len(types) < 5:
            event = await sub.__anext__()
            if not isinstance(event, QueueDepth | Throughput | Heartbeat):
                types.append((event.type, getattr(event, "changed", None)))
    assert types == [("queue_changed", 1), ("queue_changed", 0), ("member_suspended", None),
                     ("member_unsuspended", None), ("queue_changed", 1)]
    member = await rig.services.store.get_member(DID)
    assert member is not None and member.status == "active"


@pytest.mark.trio
async def test_ws_client_that_falls_behind_is_closed_1013(rig: Rig) -> None:
    async with open_websocket_url(rig.url, extra_headers=[(b"Authorization", f"Bearer {TOKEN}".encode())]) as ws:
        first, _ = decode(await ws.get_message())
        assert isinstance(first, Snapshot)
        await until(lambda: rig.bus.subscribers == 1)
        for i in range(200):  # no checkpoint: the handler cannot drain its buffer of 50
            rig.bus.publish(QueueChanged(queue_id=i, action="hold", changed=0))
        assert rig.bus.dropped == 1 and rig.bus.subscribers == 0
        assert await closed_by_server(ws) == 1013


@pytest.mark.trio
async def test_ws_closed_1001_when_the_bus_closes_at_shutdown(rig: Rig) -> None:
    async with open_websocket_url(f"{rig.url}?token={TOKEN}") as ws:
        assert isinstance(decode(await ws.get_message())[0], Snapshot)
        await until(lambda: rig.bus.subscribers == 1)
        rig.bus.close()
        assert await closed_by_server(ws) == 1001


@pytest.mark.trio
async def test_publisher_cadence(autojump_clock: trio.testing.MockClock) -> None:
    bus = EventBus()
    counters = SimpleNamespace(accepted_messages=0)
    scheduler = SimpleNamespace(delivered=0, in_flight=2)
    spool = SimpleNamespace(live=lambda: iter(()))
    class OneNode:  # the store's node registry: this node alone, holding the jobs lease
        async def call(self, fn: Any) -> Any:
            return [NodeRow(1, "local", "h", 1, 0.0, trio.current_time(), None, '{"queue_messages": 2}')], "local"

    services: Any = SimpleNamespace(bus=bus, metrics=RelayMetrics(), acceptor=counters, scheduler=scheduler,
                                    spool=spool, reputation=None, store=OneNode(),
                                    cfg=SimpleNamespace(node=NodeConfig(lease_ttl=1e12)))
    got: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(run_publisher, services)
        start = trio.current_time()
        with bus.subscribe() as sub:
            async for event in sub:
                counters.accepted_messages += 3  # 3 messages/s, 2 deliveries/s
                scheduler.delivered += 1
                got.append((round(trio.current_time() - start, 3), event.type))
                if trio.current_time() - start >= 12 and event.type == "throughput":
                    break
        nursery.cancel_scope.cancel()
    ticks = [t for t, kind in got if kind == "queue_depth"]
    assert ticks[:3] == [1.0, 2.0, 3.0]
    assert [t for t, kind in got if kind == "heartbeat"] == [5.0, 10.0]
    assert [t for t, kind in got if kind == "nodes"] == [2.0, 4.0, 6.0, 8.0, 10.0]  # every 2 s, to t=12
    rates = [e for e in got if e[1] == "throughput"]
    assert len(rates) == len(ticks)
    a, d = services.metrics.throughput.rates()
    assert a > 0 and d > 0


LINE = re.compile(r'^(# (HELP|TYPE) \w+ .+|\w+(\{(\w+="[^"]*",?)*\})? -?[0-9.e+Inf]+)$')


@pytest.mark.trio
async def test_metrics_render(rig: Rig) -> None:
    await rig.accept("m@dest.example", source="http")
    text = render(rig.services)
    assert text.endswith("\n")
    for line in text.splitlines():
        assert LINE.match(line), line
    assert 'atmos_accepted_messages_total{source="http"} 1' in text
    assert "atmos_accept_latency_seconds_count 1" in text
    assert 'atmos_accept_latency_seconds_bucket{le="+Inf"} 1' in text


@pytest.mark.trio
async def test_unknown_queue_id_and_no_scheduler(rig: Rig) -> None:
    result = await execute(rig.services, Command(id="q", action="retry", target="424242"))
    assert not result.ok and "no queued message 424242" in result.message
    result = await execute(dataclasses.replace(rig.services, scheduler=None),
                           Command(id="q", action="pause", target="x.example"))
    assert not result.ok and "not running" in result.message


@pytest.mark.trio
async def test_http_queue_routes_and_commands_answer_alike(rig: Rig) -> None:
    """POST /admin/api/queue/... and /destinations/... run the console's commands: the same checks (a
    destination must be a domain), the same texts."""
    base = rig.url.replace("ws://", "http://").removesuffix("/admin/ws")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    queue_id = await rig.accept("x@dest.example")
    await until(lambda: rig.services.spool.get(queue_id).recipient(queue_id).state is State.DEFERRED)  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as http:
        for domain in ("not a domain", "a..b", "-x.example"):
            r = await http.post(f"/admin/api/destinations/{domain}/pause")
            command = await execute(rig.services, Command(id="d", action="pause", target=domain))
            assert r.status_code == 400 and r.json()["code"] == "INVALID_REQUEST", (domain, r.text)
            assert not command.ok and r.json()["error"] == command.message == \
                f"target: expected a destination domain, got {domain!r}"
        assert rig.services.scheduler is not None and rig.services.scheduler.paused_destinations == ()
        r = await http.post("/admin/api/destinations/Dest.Example./pause")
        assert r.status_code == 200 and r.json() == {"domain": "dest.example", "paused": True}
        assert rig.services.scheduler.paused_destinations == ("dest.example",)
        r = await http.post("/admin/api/destinations/dest.example/explode")
        assert r.status_code == 400 and "expected one of pause, resume" in r.json()["error"]
        r = await http.post("/admin/api/queue/424242/retry")
        command = await execute(rig.services, Command(id="q", action="retry", target="424242"))
        assert r.status_code == 404 and r.json()["error"] == command.message == "no queued message 424242"
        r = await http.post(f"/admin/api/queue/{queue_id}/pause")
        assert r.status_code == 400 and r.json()["error"] == \
            "action: expected one of retry, hold, release, delete, got 'pause'"
        r = await http.post(f"/admin/api/queue/{queue_id}/hold")
        assert r.status_code == 200 and r.json() == {"queue_id": queue_id, "action": "hold", "changed": 1,
                                                      "node": "local"}


@pytest.mark.trio
async def test_warming_and_hooks_from_the_reputation_service(rig: Rig) -> None:
    # Through the AsyncStore, as the relay writes: its one worker thread owns the connection, so no
    # write from the Trio thread can meet a transaction the writer task holds open on it.
    for domain, state in (("mail.stream.example", "verified"), ("pending.stream.example", "pending")):
        await rig.services.store.add_domain(DID, domain, selector="atmosabc", rsa_private=b"r",
                                            ed25519_private=b"e", verify_token="tok", state=state)
    rep = Reputation(rig.services.store, LimitsConfig(warming_tiers=((0, 3, 5), (7, 10, 50))), SuspensionConfig(),
                     **reputation_hooks(rig.bus))
    rep.consume(DID, "mail.stream.example", 2)
    services = dataclasses.replace(rig.services, reputation=rep)
    [warming] = await warming_state(services)  # pending domains cannot send: not listed
    assert warming == DomainWarming(domain="mail.stream.example", did=DID, day=0, tier="day 0-6", hourly_used=2,
                                    hourly_limit=3, daily_used=2, daily_limit=5)
    assert (await build_snapshot(services)).warming == (warming,)

    with rig.bus.subscribe() as sub:
        assert rep.on_suspended is not None and rep.on_complaint is not None
        rep.on_suspended(DID, "bounces 9 % over 24 h")
        rep.on_complaint(DID, "abuse")
        with trio.fail_after(30):
            got = [await sub.__anext__(), await sub.__anext__()]
    assert got == [MemberSuspended(did=DID, reason="bounces 9 % over 24 h", automatic=True),
                   ComplaintReceived(did=DID, recipient=None, feedback_type="abuse")]
