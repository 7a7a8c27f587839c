"""The event stream under load: 1,000 events/s for 3 s, a deliberately slow subscriber and a normal one.

The slow one is dropped and counted, the normal one receives every event in order, and the publisher
(the acceptor and the scheduler on the mail path) is never held up by either. How long a publish takes
is a figure, not a pass/fail line: ``scripts/bench --only events`` measures it on this same schedule.
"""

from __future__ import annotations

import pytest
import trio

from relay.events import Delivery, Event, encode
from relay.operator.eventbus import EventBus

RATE = 1000  # events per second
SECONDS = 3.0
TICK = 0.01  # the publisher wakes every 10 ms and publishes what is due


def delivery(i: int) -> Event:
    return Delivery(queue_id=i, rcpt_id=i, did="did:plc:loadaaaaaaaaaaaaaaaaaaaa", recipient=f"r{i}@dest.example",
                    domain="dest.example", state="deferred", attempts=1, mx_host="mx.dest.example",
                    reply="451 4.3.0 try later", tls=True, next_attempt_at=1.0e9)


@pytest.mark.slow
@pytest.mark.trio
async def test_thousand_events_per_second_with_a_slow_subscriber() -> None:
    bus = EventBus(buffer=1000)
    total = int(RATE * SECONDS)
    normal_got: list[int] = []
    slow_got: list[int] = []
    encoded_bytes = 0
    published = 0

    async def normal(sub_ready: trio.Event) -> None:
        nonlocal encoded_bytes
        with bus.subscribe() as sub:
            sub_ready.set()
            async for event in sub:
                encoded_bytes += len(encode(event))  # what the websocket pump does per event
                assert isinstance(event, Delivery)
                normal_got.append(event.rcpt_id)
                if event.rcpt_id == total - 1:
                    return

    async def slow(sub_ready: trio.Event) -> None:
        with bus.subscribe() as sub:
            sub_ready.set()
            async for event in sub:
                assert isinstance(event, Delivery)
                slow_got.append(event.rcpt_id)
                await trio.sleep(0.005)  # 200 events/s: falls behind by 800/s
            assert sub.dropped

    async def publisher() -> None:
        nonlocal published
        start = trio.current_time()
        tick = 0
        while published < total:
            tick += 1
            await trio.sleep_until(start + tick * TICK)
            due = min(total, int((trio.current_time() - start) * RATE))
            while published < due:
                bus.publish(delivery(published))  # synchronous: it cannot wait for a subscriber
                published += 1

    # A deadline against a hang, not a speed limit: far beyond the 3 s schedule on any machine.
    with trio.fail_after(SECONDS + 60):
        async with trio.open_nursery() as nursery:
            ready = [trio.Event(), trio.Event()]
            nursery.start_soon(normal, ready[0])
            nursery.start_soon(slow, ready[1])
            for r in ready:
                await r.wait()
            nursery.start_soon(publisher)

    assert published == total and encoded_bytes > 0
    assert normal_got == list(range(total)), "the normal subscriber missed events"
    assert bus.dropped == 1 and len(slow_got) < total
    assert bus.subscribers == 0
