"""The real scheduler with a real spool and store, a scripted MX, on Trio's autojump clock."""

from __future__ import annotations

import email
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import policy
from pathlib import Path

import pytest
import trio

from relay.delivery import verp
from relay.delivery.retry import Outcome, OutcomeKind
from relay.delivery.scheduler import AttemptResult, Scheduler, SchedulerConfig
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.mirror import StatusMirror
from relay.store.rows import MessageRow
from relay.store.writer import StatusWriter
from spool import Envelope, Spool, State

SECRET = b"s" * 32
MSG = b"From: a@mail.example.com\r\nTo: x@example.org\r\nSubject: hi\r\nMessage-ID: <m1@test>\r\n\r\nbody\r\n"


@dataclass
class Call:
    at: float
    domain: str
    mail_from: str
    rcpt: str
    data: bytes


class ScriptedMX:
    """Answers per recipient from a script; the last answer repeats."""

    def __init__(self, script: dict[str, list[Outcome]]) -> None:
        self.script = script
        self.calls: list[Call] = []
        self.count: dict[str, int] = defaultdict(int)

    async def attempt(self, domain: str, mail_from: str, rcpt: str, data: bytes) -> AttemptResult:
        self.calls.append(Call(trio.current_time(), domain, mail_from, rcpt, data))
        await trio.sleep(0.01)
        answers = self.script.get(rcpt, [ok()])
        n = self.count[rcpt]
        self.count[rcpt] += 1
        return AttemptResult(answers[min(n, len(answers) - 1)], mx_host=f"mx.{domain}", tls=True)


def ok() -> Outcome:
    return Outcome(OutcomeKind.DELIVERED, "250 2.0.0 ok", "2.0.0", 250)


def temp() -> Outcome:
    return Outcome(OutcomeKind.TEMPORARY, "451 4.3.0 try later", "4.3.0", 451)


def perm() -> Outcome:
    return Outcome(OutcomeKind.PERMANENT, "550 5.1.1 <gone@example.org>: user unknown", "5.1.1", 550)


@dataclass
class Rig:
    spool: Spool
    scheduler: Scheduler
    store: AsyncStore
    writer: StatusWriter
    mx: ScriptedMX

    async def submit(self, rcpts: list[str], mail_from: str = "a@mail.example.com") -> list[int]:
        env = Envelope(mail_from=mail_from, rcpts=tuple(rcpts), did="did:plc:abcdefghijklmnopqrstuvwx",
                       attrs={}, arrival=trio.current_time())
        acc = await self.spool.accept(env, MSG)
        await self.writer.submit([
            MessageRow(id=rid, queue_id=acc.queue_id, did=env.did, from_domain="mail.example.com",
                       mail_from=mail_from, recipient=r, source="smtp", created_at=0.0, updated_at=0.0)
            for rid, r in zip(acc.rcpt_ids, rcpts, strict=True)])
        self.scheduler.notify(acc.queue_id)
        return list(acc.rcpt_ids)

    def state(self, queue_id: int, rid: int) -> State | None:
        msg = self.spool.get(queue_id)
        return None if msg is None else msg.rcpt_state(rid)


@pytest.fixture
def clock(thread_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    # The spool fsyncs and reads in worker threads: virtual time moves on only once they are done
    # (tests/clock.py), never because a loaded machine made a thread slower than a threshold.
    return thread_clock


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[object]:
    async with trio.open_nursery() as nursery:
        async def make(script: dict[str, list[Outcome]]) -> Rig:
            store = AsyncStore(open_store("sqlite:///:memory:"))
            writer = StatusWriter(store)
            await nursery.start(writer.run)
            spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer))
            await nursery.start(spool.run)
            mx = ScriptedMX(script)
            cfg = SchedulerConfig(operator_domain="relay.test", secret=SECRET, reporting_mta="relay.test")
            scheduler = Scheduler(spool, writer, mx, cfg, clock=trio.current_time)
            await nursery.start(scheduler.run)
            return Rig(spool, scheduler, store, writer, mx)

        yield make
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_success_is_sent_with_verp_sender(rig_factory: object, clock: trio.testing.MockClock) -> None:
    rig: Rig = await rig_factory({})  # type: ignore[operator]
    [rid] = await rig.submit(["x@example.org"])
    await trio.sleep(1)
    assert rig.state(rid, rid) is None  # terminal: left the spool index
    [call] = rig.mx.calls
    assert verp.decode(call.mail_from, secret=SECRET, domain="relay.test") == rid
    await rig.writer.flush()
    row = await rig.store.get_message(rid)
    assert row is not None and row.status == "sent" and row.attempts == 1
    [attempt] = await rig.store.attempts_for(rid)
    assert attempt.mx_host == "mx.example.org" and attempt.tls and attempt.reply == "250 2.0.0 ok"


@pytest.mark.trio
async def test_retry_schedule_then_bounce_with_dsn(rig_factory: object, clock: trio.testing.MockClock) -> None:
    rig: Rig = await rig_factory({"slow@example.org": [temp()]})
    start = trio.current_time()
    [rid] = await rig.submit(["slow@example.org"])
    await trio.sleep(60)
    assert rig.state(rid, rid) is State.DEFERRED
    await rig.writer.flush()
    row = await rig.store.get_message(rid)
    assert row is not None and row.status == "deferred" and row.last_reply == "451 4.3.0 try later"
    await trio.sleep(3 * 3600)
    times = [round(c.at - start) for c in rig.mx.calls if c.rcpt == "slow@example.org"]
    # first try, then 1, 5, 15, 30 and 60 minutes after each failure; the sixth failure bounces
    assert times == [0, 60, 360, 1260, 3060, 6660]
    assert rig.state(rid, rid) is None
    await rig.writer.flush()
    row = await rig.store.get_message(rid)
    assert row is not None and row.status == "bounced" and row.attempts == 6
    dsn_calls = [c for c in rig.mx.calls if c.rcpt == "a@mail.example.com"]
    assert len(dsn_calls) == 1 and dsn_calls[0].mail_from == ""  # null sender: never bounce a bounce
    report = email.message_from_bytes(dsn_calls[0].data, policy=policy.default)
    assert report.get_content_type() == "multipart/report"
    assert "451 4.3.0 try later" in dsn_calls[0].data.decode()


@pytest.mark.trio
async def test_per_recipient_outcomes(rig_factory: object, clock: trio.testing.MockClock) -> None:
    rig: Rig = await rig_factory({"gone@example.org": [perm()], "later@other.example": [temp(), ok()]})
    ids = await rig.submit(["fine@example.org", "gone@example.org", "later@other.example"])
    qid = ids[0]
    await trio.sleep(1)
    assert rig.state(qid, ids[2]) is State.DEFERRED
    msg = rig.spool.get(qid)
    assert msg is not None
    assert msg.rcpt_state(ids[0]) is State.SENT and msg.rcpt_state(ids[1]) is State.BOUNCED
    await trio.sleep(120)
    assert rig.spool.get(qid) is None
    dsn = [c for c in rig.mx.calls if c.rcpt == "a@mail.example.com"]
    assert len(dsn) == 1 and b"gone@example.org" in dsn[0].data and b"user unknown" in dsn[0].data


@pytest.mark.trio
async def test_bounce_of_a_bounce_is_dropped(rig_factory: object, clock: trio.testing.MockClock) -> None:
    rig: Rig = await rig_factory({"gone@example.org": [perm()]})
    [rid] = await rig.submit(["gone@example.org"], mail_from="")
    await trio.sleep(1)
    assert rig.spool.get(rid) is None
    assert [c.rcpt for c in rig.mx.calls] == ["gone@example.org"]


@pytest.mark.trio
async def test_hold_release_delete_retry(rig_factory: object, clock: trio.testing.MockClock) -> None:
    rig: Rig = await rig_factory({"slow@example.org": [temp(), temp(), ok()], "x@example.org": [temp()]})
    [a] = await rig.submit(["slow@example.org"])
    await trio.sleep(1)
    assert await rig.scheduler.hold(a) == 1
    await trio.sleep(3600)
    assert rig.state(a, a) is State.HELD and len(rig.mx.calls) == 1  # held: no attempt
    await rig.scheduler.release(a)
    await trio.sleep(1)
    assert len(rig.mx.calls) == 2 and rig.state(a, a) is State.DEFERRED
    await rig.scheduler.retry_now(a)
    await trio.sleep(1)
    assert len(rig.mx.calls) == 3 and rig.state(a, a) is None
    [b] = await rig.submit(["x@example.org"])
    await trio.sleep(1)
    assert await rig.scheduler.delete(b) == 1
    await trio.sleep(7200)
    assert rig.spool.get(b) is None and len([c for c in rig.mx.calls if c.rcpt == "x@example.org"]) == 1
    assert not [c for c in rig.mx.calls if c.mail_from == ""]  # delete sends no DSN


@pytest.mark.trio
async def test_restart_resumes_with_retry_times(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    store = AsyncStore(open_store("sqlite:///:memory:"))
    cfg = SchedulerConfig(operator_domain="relay.test", secret=SECRET, reporting_mta="relay.test")
    mx = ScriptedMX({"slow@example.org": [temp(), ok()]})
    async with trio.open_nursery() as nursery:
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer))
        await nursery.start(spool.run)
        scheduler = Scheduler(spool, writer, mx, cfg, clock=trio.current_time)
        await nursery.start(scheduler.run)
        env = Envelope("a@mail.example.com", ("slow@example.org",), "did:plc:abcdefghijklmnopqrstuvwx", {},
                       trio.current_time())
        acc = await spool.accept(env, MSG)
        scheduler.notify(acc.queue_id)
        await trio.sleep(5)
        await scheduler.shutdown(1)
        nursery.cancel_scope.cancel()
    first_try = mx.calls[0].at
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path / "spool")
        await nursery.start(spool.run)
        msg = spool.get(acc.queue_id)
        assert msg is not None and msg.recipient(acc.queue_id).next_attempt_at == pytest.approx(first_try + 60, abs=1)
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        await nursery.start(Scheduler(spool, writer, mx, cfg, clock=trio.current_time).run)
        await trio.sleep(120)
        assert spool.get(acc.queue_id) is None
        nursery.cancel_scope.cancel()
    assert [round(c.at - first_try) for c in mx.calls] == [0, 60]
