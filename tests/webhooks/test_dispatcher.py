"""WebhookDispatcher on the bus: never counted as a watcher, resubscribes after being dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
import trio
import trio.lowlevel

from relay.eventbus import EventBus
from relay.events import MessageAccepted
from relay.store.aio import AsyncStore
from relay.store.rows import Webhook
from relay.webhooks import WebhookDispatcher


class SlowStore:
    """get_webhook blocks until released: the dispatcher falls behind the bus."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.lookups = 0

    async def get_webhook(self, did: str) -> Webhook | None:
        self.lookups += 1
        await self.release.wait()
        return None


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
