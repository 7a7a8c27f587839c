"""``scripts/bench --only events``: does a slow console slow mail down? (issue: operator console)

In one process, the real spool (fdatasync'ed, in a temp dir), the real scheduler and status writer,
and the real event bus deliver N messages through an in-memory transport that answers 250 at once,
twice in the same run:

  quiet  no event subscribers at all
  loaded an extra publisher at 1,000 events/s, one subscriber that keeps up and one deliberately slow
         one (10 ms per event), as a console on a bad link would be

It prints the delivery rate of both runs, their ratio, and how many subscribers the bus dropped.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio
import trio.lowlevel

from relay.delivery.retry import Outcome, OutcomeKind
from relay.delivery.scheduler import AttemptResult, Scheduler, SchedulerConfig
from relay.eventbus import EventBus
from relay.events import Heartbeat
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
    return 0
