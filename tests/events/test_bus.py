"""The event bus: bounded per-subscriber channels; a slow subscriber is dropped, never waited for."""

from __future__ import annotations

import gc
import time

import pytest
import trio
import trio.lowlevel
import trio.testing

from relay.events import Event, Heartbeat, QueueChanged
from relay.operator.eventbus import EventBus


def ev(i: int) -> Event:
    return QueueChanged(queue_id=i, action="hold", changed=1)


@pytest.mark.trio
async def test_publish_reaches_every_subscriber_in_order() -> None:
    bus = EventBus(buffer=10)
    with bus.subscribe() as a, bus.subscribe() as b:
        assert bus.subscribers == 2
        for i in range(5):
            bus.publish(ev(i))
        for sub in (a, b):
            got = [await sub.__anext__() for _ in range(5)]
            assert [e.queue_id for e in got if isinstance(e, QueueChanged)] == [0, 1, 2, 3, 4]
    assert bus.subscribers == 0
    assert bus.published == 5 and bus.dropped == 0


def test_publish_without_subscribers_or_trio_is_a_noop() -> None:
    bus = EventBus()
    bus.publish(Heartbeat())  # synchronous: callable from anywhere on the Trio thread, even outside a task
    assert bus.published == 1 and bus.subscribers == 0


@pytest.mark.trio
async def test_slow_subscriber_dropped_and_counted_fast_one_keeps_receiving() -> None:
    bus = EventBus(buffer=8)
    fast_got: list[int] = []
    with bus.subscribe() as slow, bus.subscribe() as fast:
        async with trio.open_nursery() as nursery:

            async def read_fast() -> None:
                async for e in fast:
                    assert isinstance(e, QueueChanged)
                    fast_got.append(e.queue_id)

            nursery.start_soon(read_fast)
            for i in range(50):
                bus.publish(ev(i))  # the slow subscriber never reads
                await trio.lowlevel.checkpoint()  # the fast one drains as it goes
            await trio.testing.wait_all_tasks_blocked()
            assert slow.dropped and not fast.dropped
            assert bus.dropped == 1 and bus.subscribers == 1
            fast.close()
    assert fast_got == list(range(50))
    # The dropped stream ends at once (its buffer is discarded): the client must start afresh.
    assert [e async for e in slow] == []


@pytest.mark.trio
async def test_a_dropped_reader_gets_no_stale_events_when_it_comes_back() -> None:
    bus = EventBus(buffer=2)
    busy = trio.Event()
    seen: list[int] = []
    with bus.subscribe() as sub:

        async def reader() -> None:
            async for e in sub:
                assert isinstance(e, QueueChanged)
                seen.append(e.queue_id)
                await busy.wait()  # stuck on the first event (a slow socket)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            bus.publish(ev(1))
            await trio.testing.wait_all_tasks_blocked()
            for i in (2, 3, 4):  # 2 and 3 fill the buffer, 4 overflows it
                bus.publish(ev(i))
            assert sub.dropped and bus.dropped == 1 and bus.subscribers == 0
            busy.set()
    assert seen == [1]  # the buffered 2 and 3 were discarded with the subscription


@pytest.mark.trio
async def test_reader_waiting_for_events_sees_the_stream_end_when_dropped_or_closed() -> None:
    bus = EventBus(buffer=2)
    results: list[str] = []
    with bus.subscribe() as sub:

        async def reader() -> None:
            events = [e async for e in sub]
            results.append(f"ended after {len(events)}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            bus.close()
    assert results == ["ended after 0"]
    assert bus.subscribers == 0
    with bus.subscribe() as late:  # after close: a stream that ends at once
        assert [e async for e in late] == []
    bus.publish(ev(1))


@pytest.mark.trio
async def test_publish_never_blocks_even_with_a_full_subscriber() -> None:
    bus = EventBus(buffer=1000)
    with bus.subscribe() as stuck, bus.subscribe() as also_stuck:
        wall: list[float] = []
        cpu: list[float] = []
        gc.disable()  # a collection of the whole test session's heap is not the bus's cost
        try:
            for i in range(5000):
                t0, c0 = time.perf_counter(), time.thread_time()
                bus.publish(ev(i))
                wall.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
        finally:
            gc.enable()
        assert stuck.dropped and also_stuck.dropped and bus.dropped == 2
    # CPU time is what publish itself costs; wall time may include the OS preempting a busy CI box.
    assert max(cpu) < 0.005, f"a publish cost {max(cpu) * 1000:.2f} ms of CPU"
    assert sorted(wall)[int(len(wall) * 0.999)] < 0.005, f"p99.9 publish {sorted(wall)[-5] * 1000:.2f} ms"


def test_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="buffer"):
        EventBus(buffer=0)
