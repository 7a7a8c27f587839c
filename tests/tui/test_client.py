"""The websocket link's pure parts, and the link itself against a fake /admin/ws peer (no Textual)."""

from __future__ import annotations

import asyncio

import pytest

from relay.events import Command, Event, Throughput
from tests.tui.fixtures import NOW, SNAPSHOT
from tests.tui.helpers import FakeRelay, run, until
from tui import fmt
from tui.client import Backoff, LinkStatus, RelayClient, normalize_url


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    b = Backoff()
    assert [b.next() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    b.reset()
    assert b.next() == 0.5


@pytest.mark.parametrize(("status", "now", "text"), [
    (LinkStatus("connected"), 0, "connected"),
    (LinkStatus("connecting"), 0, "connecting…"),
    (LinkStatus("disconnected", detail="HTTP 401 — check --token", retry_at=14.0), 10.0,
     "disconnected — retrying in 4 s (HTTP 401 — check --token)"),
    (LinkStatus("disconnected", retry_at=10.5), 10.0, "disconnected — retrying in 1 s"),
    (LinkStatus("disconnected", retry_at=5.0), 10.0, "disconnected — retrying in 1 s"),
    (LinkStatus("offline", detail="bad URL"), 0, "bad URL"),
])
def test_link_status_text(status: LinkStatus, now: float, text: str) -> None:
    assert status.describe(now) == text


@pytest.mark.parametrize(("url", "expected"), [
    ("ws://127.0.0.1:8080/admin/ws", "ws://127.0.0.1:8080/admin/ws"),
    ("http://relay.example:8080/admin/ws", "ws://relay.example:8080/admin/ws"),
    ("https://relay.example/admin/ws", "wss://relay.example/admin/ws"),
])
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(("fn", "args", "out"), [
    (fmt.span, (45,), "45s"), (fmt.span, (600,), "10m"), (fmt.span, (3 * 3600 + 300,), "3h05m"),
    (fmt.span, (2 * 86400 + 4 * 3600,), "2d04h"), (fmt.ago, (None, 0), "—"), (fmt.ago, (NOW, NOW), "just now"),
    (fmt.until, (NOW - 5, NOW), "now"), (fmt.until, (NOW + 90, NOW), "1m"), (fmt.compact, (9999,), "9999"),
    (fmt.compact, (12_345,), "12k"), (fmt.compact, (2_500_000,), "2.5M"), (fmt.plural, (1, "complaint"), "1 complaint"),
    (fmt.plural, (1200, "complaint"), "1,200 complaints"), (fmt.shorten, ("abcdef", 4), "abc…"),
    (fmt.clock, (NOW,), "14:13:20"),
])
def test_formatting(fn: object, args: tuple[object, ...], out: str) -> None:
    assert fn(*args) == out  # type: ignore[operator]


@pytest.mark.parametrize(("used", "total", "bar"), [(0, 10, "░░░░"), (1, 100, "█░░░"), (5, 10, "██░░"), (12, 10, "████")])
def test_bar(used: int, total: int, bar: str) -> None:
    assert fmt.bar(used, total, 4).plain == bar


def test_client_reads_frames_sends_commands_and_backs_off() -> None:
    async def scenario() -> None:
        events: list[Event] = []
        statuses: list[LinkStatus] = []
        async with FakeRelay(SNAPSHOT, ts=NOW) as relay:
            client = RelayClient(relay.url, "T", on_event=lambda e, ts: events.append(e),
                                 on_status=statuses.append, backoff=Backoff(0.05, 0.2))
            task = asyncio.create_task(client.run())
            await until(lambda: events)
            assert events == [SNAPSHOT] and client.connected
            assert relay.auth_headers == ["Bearer T"]
            await relay.broadcast(Throughput(accepted_per_s=1, delivered_per_s=2, window=5))
            assert await client.send(Command(id="c1", action="retry", target="7"))
            await until(lambda: len(events) >= 3)  # the throughput and the fake's CommandResult
            assert relay.commands == [Command(id="c1", action="retry", target="7")]
        await until(lambda: client.status.state == "disconnected")  # the peer went away
        assert not client.connected
        assert not await client.send(Command(id="c2", action="retry", target="7"))
        await until(lambda: sum(s.state == "disconnected" for s in statuses) >= 3)  # refused, refused, … with backoff
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert [s.state for s in statuses][:3] == ["connecting", "connected", "disconnected"]

    run(scenario())


def test_wrong_token_is_reported_and_retried() -> None:
    async def scenario() -> None:
        statuses: list[LinkStatus] = []
        async with FakeRelay(SNAPSHOT, token="right") as relay:
            client = RelayClient(relay.url, "wrong", on_event=lambda e, ts: None, on_status=statuses.append,
                                 backoff=Backoff(0.05, 0.1))
            task = asyncio.create_task(client.run())
            await until(lambda: sum(s.state == "disconnected" for s in statuses) >= 2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        refused = [s for s in statuses if s.state == "disconnected"]
        assert refused[0].detail == "HTTP 401 — check --token"
        assert relay.auth_headers[:2] == ["Bearer wrong", "Bearer wrong"]

    run(scenario())


def test_bad_url_stops_the_link() -> None:
    async def scenario() -> None:
        statuses: list[LinkStatus] = []
        client = RelayClient("not a url", "T", on_event=lambda e, ts: None, on_status=statuses.append)
        await asyncio.wait_for(client.run(), 5)
        assert statuses[-1].state == "offline" and statuses[-1].detail.startswith("bad URL")

    run(scenario())
