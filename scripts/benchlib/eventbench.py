"""``scripts/bench --only events``: does a slow console slow mail down? (issue: operator console)

In one process, the real spool (fdatasync'ed, in a temp dir), the real scheduler and status writer,
and the real event bus deliver N messages through an in-memory transport that answers 250 at once,
twice in the same run:

  quiet  no event subscribers at all
  loaded an extra publisher at 1,000 events/s, one subscriber that keeps up and one deliberately slow
         one (10 ms per event), as a console on a bad link would be

It prints the delivery rate of both runs, their ratio, and how many subscribers the bus dropped.

Then the cost of one publish (what the acceptor and the scheduler pay on the mail path): a publisher on
a 10 ms tick at 1,000 events/s for 5 s (2 s --quick) with one normal and one slow subscriber (5 ms per
event, dropped when it falls a buffer behind), the schedule of tests/events/test_load.py. It prints
wall and CPU time per publish (p50, p99.9, max), how late the publisher woke, and whether it kept its
schedule. (These were once asserted in that test; a shared CI machine makes such lines flaky.)
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio
import trio.lowlevel

from relay.delivery.retry import Outcome, OutcomeKind
from relay.delivery.scheduler import AttemptResult, Scheduler, SchedulerConfig
from relay.events import Delivery, Heartbeat
from relay.operator.eventbus import EventBus
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.writer import StatusWriter
from spool import Envelope, Spool

MSG = b"From: a@bench.example\r\nTo: x@d.example\r\nSubject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26


class InstantMX:
    async def attempt(self, domain: str, mail_from: str, rcpt: str, data: bytes) -> AttemptResult:
        await trio.lowlevel.checkpoint()
        return AttemptResult(Outcome(OutcomeKind.DELIVERED, "250 2.0.0 ok", "2.0.0", 250), mx_host="mx." + domain)


async def _run(n: int, loaded: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        bus = EventBus(buffer=1000)
        store = AsyncStore(open_store("sqlite:///:memory:"))
        async with trio.open_nursery() as nursery:
            spool = Spool(Path(tmp) / "spool")
            await nursery.start(spool.run)
            writer = StatusWriter(store)
            await nursery.start(writer.run)
            cfg = SchedulerConfig(operator_domain="relay.bench", secret=b"s" * 32, reporting_mta="relay.bench")
            scheduler = Scheduler(spool, writer, InstantMX(), cfg, bus=bus)
            await nursery.start(scheduler.run)
            if loaded:
                nursery.start_soon(_publisher, bus)
                nursery.start_soon(_subscriber, bus, 0.0)
                nursery.start_soon(_subscriber, bus, 0.01)
                await trio.sleep(0.2)
            start = time.perf_counter()
            async with trio.open_nursery() as submitters:
                for i in range(n):
                    submitters.start_soon(_submit, spool, scheduler, i)
            while scheduler.delivered < n:  # noqa: ASYNC110 - a poll of a counter, not an event
                await trio.sleep(0.01)
            elapsed = time.perf_counter() - start
            dropped = bus.dropped
            nursery.cancel_scope.cancel()
    return n / elapsed, dropped


async def _submit(spool: Spool, scheduler: Scheduler, i: int) -> None:
    env = Envelope("a@bench.example", (f"r{i}@d{i % 50}.example",), "did:plc:benchbenchbenchbenchbenc", {},
                   time.time())
    acc = await spool.accept(env, MSG)
    scheduler.notify(acc.queue_id)


async def _publisher(bus: EventBus) -> None:
    while True:  # 1,000 events/s on top of what the scheduler publishes
        bus.publish(Heartbeat(dropped_subscribers=bus.dropped))
        await trio.sleep(0.001)


async def _subscriber(bus: EventBus, delay: float) -> None:
    with bus.subscribe() as events:
        async for _ in events:
            if delay:
                await trio.sleep(delay)


async def _publish_cost(seconds: float, rate: int = 1000, tick: float = 0.01) -> dict[str, float]:
    bus = EventBus(buffer=1000)
    total = int(rate * seconds)
    wall: list[float] = []
    cpu: list[float] = []
    lateness: list[float] = []

    async def subscriber(ready: trio.Event, delay: float) -> None:
        with bus.subscribe() as events:
            ready.set()
            async for event in events:
                if delay:
                    await trio.sleep(delay)
                elif isinstance(event, Delivery) and event.rcpt_id == total - 1:
                    return

    async def publisher() -> None:
        start = trio.current_time()
        sent = n = 0
        while sent < total:
            n += 1
            target = start + n * tick
            await trio.sleep_until(target)
            lateness.append(trio.current_time() - target)
            due = min(total, int((trio.current_time() - start) * rate))
            while sent < due:
                event = Delivery(queue_id=sent, rcpt_id=sent, did="did:plc:benchbenchbenchbenchbenc",
                                 recipient=f"r{sent}@dest.example", domain="dest.example", state="deferred",
                                 attempts=1, mx_host="mx.dest.example", reply="451 4.3.0 try later", tls=True,
                                 next_attempt_at=1.0e9)
                t0, c0 = time.perf_counter(), time.thread_time()
                bus.publish(event)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                sent += 1

    started = time.monotonic()
    gc.disable()  # a collection of the whole heap is not the bus's cost
    try:
        async with trio.open_nursery() as nursery:
            ready = [trio.Event(), trio.Event()]
            nursery.start_soon(subscriber, ready[0], 0.0)
            nursery.start_soon(subscriber, ready[1], 0.005)
            for r in ready:
                await r.wait()
            await publisher()
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()
    elapsed = time.monotonic() - started
    wall.sort()
    cpu.sort()
    lateness.sort()
    return {
        "events": len(wall), "seconds": seconds, "elapsed": elapsed, "dropped": bus.dropped,
        "wall_p50": wall[len(wall) // 2], "wall_p999": wall[int(len(wall) * 0.999)], "wall_max": wall[-1],
        "cpu_p999": cpu[int(len(cpu) * 0.999)], "cpu_max": cpu[-1],
        "late_p50": lateness[len(lateness) // 2], "late_p99": lateness[int(len(lateness) * 0.99)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eventbench")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else 10000
    quiet, _ = trio.run(_run, n, False)
    loaded, dropped = trio.run(_run, n, True)
    print(f"\nevent stream under load ({n} deliveries through the real spool, scheduler and bus; in-memory MX)")
    print(f"  quiet : {quiet:8.0f} deliveries/s (no subscribers)")
    print(f"  loaded: {loaded:8.0f} deliveries/s (+1,000 events/s, one fast and one slow subscriber); "
          f"ratio {loaded / quiet:.2f}x; subscribers dropped: {dropped}")
    c = trio.run(_publish_cost, 2.0 if args.quick else 5.0)
    print(f"\nevent bus publish cost ({c['events']:.0f} events at 1,000/s for {c['seconds']:.0f} s; one normal and "
          f"one slow subscriber, dropped: {c['dropped']:.0f})")
    print(f"  publish wall: p50 {c['wall_p50'] * 1e6:.1f} us, p99.9 {c['wall_p999'] * 1e6:.1f} us, "
          f"max {c['wall_max'] * 1e3:.2f} ms; CPU p99.9 {c['cpu_p999'] * 1e6:.1f} us, max {c['cpu_max'] * 1e3:.3f} ms")
    print(f"  publisher tick lateness p50 {c['late_p50'] * 1e3:.2f} ms, p99 {c['late_p99'] * 1e3:.2f} ms; "
          f"schedule {c['seconds']:.0f} s, took {c['elapsed']:.2f} s")
    return 0
