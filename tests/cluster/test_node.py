"""Two nodes over one store file: one holds the jobs lease and runs the jobs; when it stops the other
takes over; a command left for a node is carried out by it and answered (relay.cluster.node, .commands)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from relay.cluster.commands import NodeUnavailable, forward
from relay.cluster.node import Node, register
from relay.config import NodeConfig
from relay.store import open_store
from relay.store.aio import AsyncStore

FAST = NodeConfig(heartbeat=0.05, lease_ttl=0.5)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[AsyncStore, AsyncStore]]:
    """Two connections to one store file: two nodes of one machine."""
    opened = [open_store(f"sqlite:///{tmp_path / 'relay.db'}") for _ in range(2)]
    yield AsyncStore(opened[0]), AsyncStore(opened[1])
    for s in opened:
        s.close()


async def _until(cond: Callable[[], bool], what: str, within: float = 10.0) -> None:
    for _ in range(int(within / 0.01)):  # the nodes' own heartbeats change it: polled, not awaited
        if cond():
            return
        await trio.sleep(0.01)
    pytest.fail(what)


@pytest.mark.trio
async def test_one_node_runs_the_jobs_and_the_other_takes_over(stores: tuple[AsyncStore, AsyncStore]) -> None:
    a_store, b_store = stores
    running: list[str] = []

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            running.append(name)
            try:
                await trio.sleep_forever()
            finally:
                running.remove(name)
        return run

    a = Node(a_store, await register(a_store, "a-1"), FAST, dict)
    b = Node(b_store, await register(b_store, "b-1"), FAST, dict)
    async with trio.open_nursery() as outer:
        a_scope = trio.CancelScope()

        async def run_a() -> None:
            with a_scope:
                async with trio.open_nursery() as n:
                    await n.start(a.run)
                    await n.start(a.while_leading, job("a"))

        outer.start_soon(run_a)
        await _until(lambda: running == ["a"], "a never ran its job")
        await outer.start(b.run)
        await outer.start(b.while_leading, job("b"))
        await trio.sleep(FAST.lease_ttl * 2)  # several renewals: b never got the lease meanwhile
        assert running == ["a"] and a.leading and not b.leading
        a_scope.cancel()  # a stops: it releases the lease, b takes it at its next heartbeat
        await _until(lambda: running == ["b"], "b did not take the jobs over")
        assert b.leading
        outer.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_command_reaches_the_node_that_owns_its_target(stores: tuple[AsyncStore, AsyncStore]) -> None:
    a_store, b_store = stores
    b = Node(b_store, await register(b_store, "b-1"), FAST, dict)
    seen: list[tuple[str, str]] = []

    async def handler(action: str, target: str) -> tuple[bool, str]:
        seen.append((action, target))
        if target == "boom":
            raise RuntimeError("disk on fire")
        return True, '{"changed": 1}'

    async with trio.open_nursery() as n:
        await n.start(b.run)
        await n.start(b.serve_commands, handler)
        assert await forward(a_store, b.identity.number, "hold", "42", live_within=5) == (True, '{"changed": 1}')
        ok, text = await forward(a_store, b.identity.number, "hold", "boom", live_within=5)
        assert not ok and "disk on fire" in text and "b-1" in text  # the owner's error, the owner named
        assert seen == [("hold", "42"), ("hold", "boom")]
        with pytest.raises(NodeUnavailable, match="no node numbered 9"):
            await forward(a_store, 9, "hold", "1", live_within=5)
        n.cancel_scope.cancel()
    # b stopped cleanly: asking it now is refused at once, naming it.
    with pytest.raises(NodeUnavailable, match="b-1.*not running"):
        await forward(a_store, b.identity.number, "hold", "42", live_within=5)
