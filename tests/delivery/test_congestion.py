"""Fair delivery slots: slow start, back-off on timeouts, a shared pool for timing-out destinations,
per-address limits and shortened timeouts for hosts that keep hanging (relay.delivery.congestion)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from relay.delivery.congestion import HostHealth, hanging_timeouts, next_window, shortened
from relay.delivery.retry import Outcome, OutcomeKind
from relay.delivery.scheduler import AttemptResult, Scheduler, SchedulerConfig
from relay.smtp.client import ClientTimeouts
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.writer import StatusWriter
from spool import Envelope, Spool, State

SECRET = b"s" * 32
MSG = b"From: a@mail.example.com\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("window", "timed_out", "per_destination", "expected"),
    [
        (5, False, 20, 6),  # an answer: one more
        (20, False, 20, 20),  # capped
        (5, True, 20, 2),  # a timeout halves
        (1, True, 20, 1),  # never below one
        (3, True, 20, 1),
    ],
)
def test_next_window(window: int, timed_out: bool, per_destination: int, expected: int) -> None:
    assert next_window(window, timed_out=timed_out, per_destination=per_destination) == expected


@pytest.mark.parametrize(
    ("base", "strikes", "floor", "expected"),
    [
        (600.0, 0, 60.0, 600.0),
        (600.0, 1, 60.0, 300.0),
        (600.0, 2, 60.0, 150.0),
        (600.0, 3, 60.0, 75.0),
        (600.0, 4, 60.0, 60.0),  # the floor
        (600.0, 99, 60.0, 60.0),
        (20.0, 3, 60.0, 20.0),  # never longer than the base
    ],
)
def test_shortened(base: float, strikes: int, floor: float, expected: float) -> None:
    assert shortened(base, strikes, floor) == expected


def test_hanging_timeouts_shorten_every_phase() -> None:
    base = ClientTimeouts()
    assert hanging_timeouts(base, 0, 60.0) is base
    short = hanging_timeouts(base, 2, 60.0)
    assert short.data_final == 150.0 and short.greeting == 75.0 and short.connect == 30.0 and short.rset == 20.0


@pytest.mark.trio
async def test_host_health_strikes_slots_and_memory() -> None:
    hosts = HostHealth(per_host=2, min_timeout=60.0, max_tracked=2)
    hosts.record("192.0.2.1", 25, timed_out=True)
    hosts.record("192.0.2.1", 25, timed_out=True)
    assert hosts.strikes("192.0.2.1", 25) == 2
    assert hosts.timeouts("192.0.2.1", 25, ClientTimeouts()).data_final == 150.0
    hosts.record("192.0.2.1", 25, timed_out=False)  # one answer restores the full timeouts
    assert hosts.timeouts("192.0.2.1", 25, ClientTimeouts()).data_final == 600.0
    for i in range(5):
        hosts.record(f"198.51.100.{i}", 25, timed_out=True)
    assert hosts.strikes("198.51.100.4", 25) == 1 and hosts.strikes("198.51.100.0", 25) == 0  # bounded
    slot = hosts.slot("192.0.2.1", 25)
    assert slot.total_tokens == 2 and hosts.slot("192.0.2.1", 25) is slot
    hosts.release("192.0.2.1", 25)
    assert hosts.slot("192.0.2.1", 25) is not slot  # forgotten once nobody used it


class TarpitMX:
    """``tarpit*`` domains hang for the RFC 5321 §4.5.3.2.6 600 s, then time out; others answer at once."""

    def __init__(self, hang: float = 600.0) -> None:
        self.hang = hang
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.peak_tarpits = 0
        self.delivered: list[tuple[float, str]] = []

    async def attempt(self, domain: str, mail_from: str, rcpt: str, data: bytes) -> AttemptResult:
        self.running[domain] += 1
        self.peak[domain] = max(self.peak[domain], self.running[domain])
        tarpits = sum(n for d, n in self.running.items() if d.startswith("tarpit"))
        self.peak_tarpits = max(self.peak_tarpits, tarpits)
        try:
            if domain.startswith("tarpit"):
                await trio.sleep(self.hang)
                return AttemptResult(Outcome(OutcomeKind.TIMEOUT, "timed out while waiting for the final reply"))
            await trio.sleep(0.05)
            self.delivered.append((trio.current_time(), rcpt))
            return AttemptResult(Outcome(OutcomeKind.DELIVERED, "250 2.0.0 ok", "2.0.0", 250), mx_host=domain)
        finally:
            self.running[domain] -= 1


@pytest.fixture
def clock(thread_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    # The spool fsyncs and reads in worker threads: virtual time moves on only once they are done
    # (tests/clock.py), never because a loaded machine made a thread slower than a threshold.
    return thread_clock




@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable[[SchedulerConfig, TarpitMX], object]]:
    async with trio.open_nursery() as nursery:
        async def make(cfg: SchedulerConfig, mx: TarpitMX) -> tuple[Spool, Scheduler]:
            spool = Spool(tmp_path / "spool")
            await nursery.start(spool.run)
            writer = StatusWriter(AsyncStore(open_store("sqlite:///:memory:")))
            await nursery.start(writer.run)
            scheduler = Scheduler(spool, writer, mx, cfg, clock=trio.current_time)
            await nursery.start(scheduler.run)
            return spool, scheduler

        yield make  # type: ignore[misc]
        nursery.cancel_scope.cancel()


async def submit(spool: Spool, scheduler: Scheduler, rcpts: list[str]) -> int:
    env = Envelope(mail_from="a@mail.example.com", rcpts=tuple(rcpts), did="did:plc:abcdefghijklmnopqrstuvwx",
                   attrs={}, arrival=trio.current_time())
    accepted = await spool.accept(env, MSG)
    scheduler.notify(accepted.queue_id)
    return accepted.queue_id


@pytest.mark.trio
async def test_five_tarpits_do_not_stall_a_healthy_domain(rig: object, clock: trio.testing.MockClock) -> None:
    # The numbers: max_concurrency 100, per_destination 20, five hanging destinations.
    cfg = SchedulerConfig(operator_domain="relay.test", secret=SECRET, reporting_mta="relay.test",
                          max_concurrency=100, per_destination=20, initial_concurrency=5, slow_concurrency=10)
    mx = TarpitMX()
    spool, scheduler = await rig(cfg, mx)  # type: ignore[operator]
    for t in range(5):
        await submit(spool, scheduler, [f"r{i}@tarpit{t}.example" for i in range(40)])
    await trio.sleep(1)
    start = trio.current_time()
    healthy = await submit(spool, scheduler, [f"h{i}@healthy.example" for i in range(10)])

    def healthy_sent() -> bool:
        # The MX counts a delivery before the scheduler has committed its outcome to the spool: wait
        # for both, or the check would race the commit.
        msg = spool.get(healthy)
        return len(mx.delivered) >= 10 and (msg is None or all(st.state is State.SENT
                                                               for _, _, st in msg.recipients()))

    with trio.fail_after(60):
        while not healthy_sent():  # noqa: ASYNC110 (polling the fake MX and the spool under the mock clock)
            await trio.sleep(0.1)
    assert all(at - start < 60 for at, _ in mx.delivered)
    assert mx.peak_tarpits <= 25  # slow start: 5 slots each before anything is known about them
    # After the first timeouts the tarpits share the slow pool and shrink their windows.
    await trio.sleep(700)
    before = mx.peak_tarpits
    mx.peak_tarpits = 0
    await trio.sleep(1300)
    assert before <= 25 and 0 < mx.peak_tarpits <= cfg.slow_concurrency


@pytest.mark.trio
async def test_answers_grow_the_window_to_per_destination(rig: object, clock: trio.testing.MockClock) -> None:
    cfg = SchedulerConfig(operator_domain="relay.test", secret=SECRET, reporting_mta="relay.test",
                          max_concurrency=100, per_destination=8, initial_concurrency=2)
    mx = TarpitMX()
    spool, scheduler = await rig(cfg, mx)  # type: ignore[operator]
    await submit(spool, scheduler, [f"h{i}@healthy.example" for i in range(200)])
    with trio.fail_after(600):
        while len(mx.delivered) < 200:  # noqa: ASYNC110
            await trio.sleep(0.1)
    assert mx.peak["healthy.example"] == 8


@pytest.mark.trio
async def test_a_real_tarpit_gets_shorter_timeouts_and_an_answer_restores_them() -> None:
    from relay.delivery.client import deliver
    from tests.peers.tarpit import Tarpit

    hosts = HostHealth(per_host=4, min_timeout=0.2)
    base = ClientTimeouts(data_final=1.6)
    with Tarpit("127.0.0.1") as pit:
        for attempt in range(1, 4):
            assert hosts.timeouts("127.0.0.1", pit.port, base).data_final == max(0.2, 1.6 / 2 ** (attempt - 1))
            with trio.fail_after(30):
                result = await deliver(["127.0.0.1"], pit.port, "tarpit.test", mail_from="a@relay.test",
                                       rcpts=["x@tarpit.test"], data=MSG, helo_name="relay.test",
                                       timeouts=base, hosts=hosts)
            assert result.started and "timed out" in (result.connection_error or "")
            assert hosts.strikes("127.0.0.1", pit.port) == attempt
        assert pit.messages == 3
    hosts.record("127.0.0.1", pit.port, timed_out=False)
    assert hosts.timeouts("127.0.0.1", pit.port, base) is base
