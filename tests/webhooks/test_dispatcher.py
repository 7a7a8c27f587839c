"""WebhookDispatcher on the bus: never counted as a watcher, resubscribes after being dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.lowlevel

from relay.events import MessageAccepted
from relay.members.webhooks import EVENT_TYPES, WebhookDispatcher
from relay.net.egress import Egress
from relay.operator.eventbus import EventBus
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.rows import Webhook

# The receivers below listen on loopback: the one test-only setting of the address policy lets them in.
LOOPBACK_PEERS = Egress(allow_loopback=True)


class SlowStore:
    """get_webhook blocks until released: the dispatcher falls behind the bus."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.lookups = 0

    async def get_webhook(self, did: str) -> Webhook | None:
        self.lookups += 1
        await self.release.wait()
        return None

    async def call(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self)

    def outbox_members_due(self, now: float) -> list[str]:
        return []


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def accepted(n: int) -> MessageAccepted:
    return MessageAccepted(queue_id=n, rcpt_ids=(n,), did=f"did:plc:{n}", sender="a@b.example",
                           recipients=("c@d.example",), size=1, source="http")


@pytest.mark.trio
async def test_dropped_dispatcher_resubscribes(caplog: Any) -> None:
    bus, store = EventBus(buffer=2), SlowStore()
    hooks = WebhookDispatcher(cast(AsyncStore, store), bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(hooks.run)
        assert bus.subscribers == 0 and len(bus._subs) == 1  # internal: not a watcher
        for n in range(5):  # the first lookup blocks; the bus overflows and drops the dispatcher
            bus.publish(accepted(n))
            await trio.lowlevel.checkpoint()
        assert bus.dropped == 1
        store.release.set()
        await until(lambda: len(bus._subs) == 1, what="resubscribed")
        bus.publish(accepted(99))  # the fresh subscription gets new events
        await until(lambda: store.lookups >= 2, what="a new event looked up")
        assert "resubscribing" in caplog.text
        await bus.aclose(grace=1.0)
        nursery.cancel_scope.cancel()


class Receiver:
    """A minimal HTTP endpoint on a loopback port: 200 to every POST (or never an answer: ``hang``)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self.got = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += await stream.receive_some(65536)
        if self.hang:
            await trio.sleep_forever()
        self.bodies.append(json.loads(body))
        self.got.set()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await stream.aclose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


async def member_store(tmp_path: Path) -> AsyncStore:
    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    for did in ("did:plc:1", "did:plc:2"):
        await store.call(lambda s, did=did: s.create_member(did))
    return store


def hook_for(did: str, url: str) -> Webhook:
    return Webhook(did=did, url=url, secret="whsec_test", events=EVENT_TYPES, created_at=0.0)


@pytest.mark.trio
async def test_outbox_survives_a_restart_with_a_stable_event_id(tmp_path: Path) -> None:
    store = await member_store(tmp_path)
    down = Receiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(down.serve)
        nursery.cancel_scope.cancel()  # a port nothing listens on any more
    await store.set_webhook(hook_for("did:plc:1", down.url))
    bus = EventBus()
    first = WebhookDispatcher(store, bus, backoff=(0.2,) * 3, poll=0.05, egress=LOOPBACK_PEERS)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        bus.publish(accepted(1))
        await until(lambda: first.failed >= 1, what="a failed POST")
        await bus.aclose(grace=1.0)
        nursery.cancel_scope.cancel()
    [queued] = await store.call(lambda s: s.outbox_due("did:plc:1", 9e9))
    # The process "restarts": the event is still queued and goes out to the endpoint, same id.
    up = Receiver()
    bus = EventBus()
    second = WebhookDispatcher(store, bus, backoff=(0.2,) * 3, poll=0.05, egress=LOOPBACK_PEERS)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        await store.set_webhook(hook_for("did:plc:1", up.url))
        await nursery.start(second.run)
        with trio.fail_after(10):
            await up.got.wait()
        [body] = up.bodies
        assert body["id"] == queued.id == json.loads(queued.body)["id"]
        assert body["data"]["message_id"] == 1
        await until(lambda: second.sent == 1, what="the outbox entry done")
        assert await store.call(lambda s: s.outbox_due("did:plc:1", 9e9)) == []
        await bus.aclose(grace=1.0)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_hanging_endpoint_delays_only_its_member(tmp_path: Path) -> None:
    store = await member_store(tmp_path)
    slow, fast = Receiver(hang=True), Receiver()
    bus = EventBus()
    hooks = WebhookDispatcher(store, bus, timeout=30.0, poll=0.05, egress=LOOPBACK_PEERS)
    async with trio.open_nursery() as nursery:
        await nursery.start(slow.serve)
        await nursery.start(fast.serve)
        await store.set_webhook(hook_for("did:plc:1", slow.url))
        await store.set_webhook(hook_for("did:plc:2", fast.url))
        await nursery.start(hooks.run)
        for n in range(8):  # more of did:plc:1's events than the old shared worker pool had workers
            bus.publish(MessageAccepted(queue_id=n + 1, rcpt_ids=(n + 1,), did="did:plc:1", sender="a@b.example",
                                        recipients=("c@d.example",), size=1, source="http"))
        bus.publish(MessageAccepted(queue_id=70, rcpt_ids=(70,), did="did:plc:2", sender="a@b.example",
                                    recipients=("c@d.example",), size=1, source="http"))
        with trio.fail_after(5):  # far less than the hanging endpoint's 30 s
            await fast.got.wait()
        assert [b["data"]["message_id"] for b in fast.bodies] == [70]
        assert slow.bodies == []
        await bus.aclose(grace=1.0)
        nursery.cancel_scope.cancel()
