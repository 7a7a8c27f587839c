"""Pilot tests: the console app against a fake /admin/ws peer (a real websocket server on a free port).

Sync tests that run their asyncio scenario with ``asyncio.run`` (Textual is asyncio; the project's
pytest runs Trio tests through pytest-trio, so no asyncio plugin is needed here)."""

from __future__ import annotations

import dataclasses

from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from relay.events import Command, CommandResult, Delivery, Event, NodeInfo, Nodes, QueueChanged, Snapshot
from tests.tui.fixtures import ALICE, NOW, SNAPSHOT, SPAMMY, item
from tests.tui.helpers import FakeRelay, run, screen_text, wait_for
from tui.app import ConsoleApp
from tui.client import Backoff
from tui.screens.dialogs import ConfirmDialog, MessageDetail, SuspendDialog
from tui.screens.queue import QueueScreen
from tui.widgets import ConnectionBar

SIZE = (80, 24)


def make_app(relay: FakeRelay, **kw: object) -> ConsoleApp:
    return ConsoleApp(relay.url, relay.token, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def queue_table(app: ConsoleApp) -> DataTable[object]:
    assert isinstance(app.screen, QueueScreen), app.screen
    return app.screen.query_one("#queue", DataTable)


def row_keys(app: ConsoleApp) -> list[str]:
    return [str(k.value) for k in queue_table(app).rows]


def cell(app: ConsoleApp, rcpt_id: int, column: str) -> str:
    return str(queue_table(app).get_cell(str(rcpt_id), column))


async def shows(pilot: Pilot[object], *texts: str) -> None:
    """Wait until every one of ``texts`` is on the screen (repaints lag the state a little)."""
    await wait_for(pilot, lambda: all(t in screen_text(pilot.app) for t in texts), what=" and ".join(map(repr, texts)))


def hold_responder(cmd: Command) -> list[Event]:
    if cmd.action == "hold":
        return [QueueChanged(queue_id=int(cmd.target), action="hold", changed=1),
                CommandResult(id=cmd.id, ok=True, message=f"held message {cmd.target} (1 recipient)")]
    if cmd.action == "delete":
        return [CommandResult(id=cmd.id, ok=False, message="message is being delivered")]
    return [CommandResult(id=cmd.id, ok=True, message="done")]


def test_snapshot_then_deltas_drive_the_queue_screen() -> None:
    async def scenario() -> None:
        async with FakeRelay(SNAPSHOT, ts=NOW) as relay:
            app = make_app(relay)
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await wait_for(pilot, lambda: app.state.has_snapshot, what="the snapshot")
                assert relay.auth_headers == ["Bearer T"]
                await shows(pilot, "● connected", "Queue 6  In flight 2  Oldest deferred 2h00m ago",
                            "451 4.7.1 Greylisted")  # the figures and the top deferral reason

                await pilot.press("2")
                await wait_for(pilot, lambda: len(row_keys(app)) == 6, what="6 queue rows")
                assert cell(app, 1001, "rcpt") == "carol@example.com"

                # a delivery moves items: one sent (leaves the queue), one deferred (state changes)
                await relay.broadcast(Delivery(queue_id=101, rcpt_id=1001, did=ALICE, recipient="carol@example.com",
                                               domain="example.com", state="sent", attempts=1, mx_host="mx.example.com",
                                               reply="250 ok", tls=True))
                await relay.broadcast(Delivery(queue_id=101, rcpt_id=1002, did=ALICE, recipient="dave@example.net",
                                               domain="example.net", state="deferred", attempts=1,
                                               mx_host="mx.example.net", reply="451 4.3.0 try later", tls=True,
                                               next_attempt_at=NOW + 300))
                await wait_for(pilot, lambda: "1001" not in row_keys(app), what="the sent row to leave")
                await wait_for(pilot, lambda: cell(app, 1002, "state") == "deferred", what="the deferral")
                assert cell(app, 1002, "next") == "5m"
                await shows(pilot, "5 queued")

                # the deliveries log shows both lines
                await pilot.press("3")
                await shows(pilot, "sent", "carol@example.com", "deferred", "dave@example.net", "451 4.3.0 try")

    run(scenario())


def test_hold_sends_a_command_and_shows_the_result() -> None:
    async def scenario() -> None:
        async with FakeRelay(SNAPSHOT, ts=NOW, responder=hold_responder) as relay:
            app = make_app(relay)
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await pilot.press("2")
                await wait_for(pilot, lambda: len(row_keys(app)) == 6, what="queue rows")
                await pilot.press("down", "down")  # erin@gmail.com, message 102
                await pilot.press("h")
                await wait_for(pilot, lambda: relay.commands, what="the command")
                cmd = relay.commands[0]
                assert (cmd.action, cmd.target, cmd.reason) == ("hold", "102", "")
                await wait_for(pilot, lambda: app.results, what="the command result")
                assert app.results[0].text == "hold 102: held message 102 (1 recipient)"
                await wait_for(pilot, lambda: cell(app, 1003, "state") == "held", what="the held row")
                await shows(pilot, "Done · hold 102", "held message 102")  # the toast

                # delete asks first; "n" sends nothing, "y" sends, a refusal shows as an error
                await pilot.press("d")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
                await shows(pilot, "Delete message #102")
                await pilot.press("n")
                await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen), what="dialog closed")
                await pilot.press("d", "y")
                await wait_for(pilot, lambda: len(relay.commands) == 2, what="the delete")
                assert (relay.commands[1].action, relay.commands[1].target) == ("delete", "102")
                await wait_for(pilot, lambda: len(app.results) == 2, what="the refusal")
                assert not app.results[1].result.ok

                # r retry, R release, p pause the destination
                await pilot.press("r", "R", "p")
                await wait_for(pilot, lambda: len(relay.commands) == 5, what="three more commands")
                assert [(c.action, c.target) for c in relay.commands[2:]] == [
                    ("retry", "102"), ("release", "102"), ("pause", "gmail.com")]

    run(scenario())


def test_filter_and_detail_modal() -> None:
    async def scenario() -> None:
        async with FakeRelay(SNAPSHOT, ts=NOW) as relay:
            app = make_app(relay)
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await pilot.press("2")
                await wait_for(pilot, lambda: len(row_keys(app)) == 6, what="queue rows")
                await pilot.press("slash", *"outlook")
                await wait_for(pilot, lambda: row_keys(app) == ["1004", "1005"], what="the filter")
                await shows(pilot, "2 of 6")
                await pilot.press("enter")  # back to the table
                assert app.focused is queue_table(app)
                await pilot.press("enter")  # open the detail
                await wait_for(pilot, lambda: isinstance(app.screen, MessageDetail), what="the detail")
                await shows(pilot, "frank@outlook.com", "Greylisted", "#103")
                await pilot.press("escape")
                await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen), what="detail closed")
                await pilot.press("slash", "ctrl+a", "ctrl+k")  # clear the filter by hand
                await wait_for(pilot, lambda: len(row_keys(app)) == 6, what="all rows")
                assert app.screen.query_one("#filter", Input).value == ""

    run(scenario())


def test_members_lift_and_suspend() -> None:
    async def scenario() -> None:
        async with FakeRelay(SNAPSHOT, ts=NOW) as relay:
            app = make_app(relay)
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await wait_for(pilot, lambda: app.state.has_snapshot, what="the snapshot")
                await pilot.press("5")
                await shows(pilot, SPAMMY, "complaint rate 2.1% over 14 days")
                await pilot.press("u")
                await wait_for(pilot, lambda: relay.commands, what="unsuspend")
                assert (relay.commands[0].action, relay.commands[0].target) == ("unsuspend", SPAMMY)

                await pilot.press("s")
                await wait_for(pilot, lambda: isinstance(app.screen, SuspendDialog), what="the dialog")
                await pilot.press(*ALICE, "enter", *"bounces", "enter")
                await wait_for(pilot, lambda: len(relay.commands) == 2, what="suspend")
                cmd = relay.commands[1]
                assert (cmd.action, cmd.target, cmd.reason) == ("suspend", ALICE, "bounces")

    run(scenario())


def test_command_palette_switches_screens() -> None:
    async def scenario() -> None:
        app = ConsoleApp(None, clock=lambda: NOW)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            app.feed(SNAPSHOT, NOW)
            await pilot.press("ctrl+p")
            await pilot.press(*"show warming")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.current_mode == "warming", what="the warming screen")
            await shows(pilot, "alice.example", "18/20")
            # with no connection a command is refused locally and says so
            await pilot.press("2", "h")
            await shows(pilot, "not connected")

    run(scenario())


class CountingBackoff(Backoff):
    delays = 0

    def next(self) -> float:
        self.delays += 1
        return super().next()


def test_disconnect_shows_state_and_restart_reconnects() -> None:
    async def scenario() -> None:
        relay = await FakeRelay(SNAPSHOT, ts=NOW).start()
        port = relay.port
        backoff = CountingBackoff(0.2, 0.5)
        app = make_app(relay, backoff=backoff)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await wait_for(pilot, lambda: app.state.has_snapshot, what="the snapshot")
            await relay.stop()
            await shows(pilot, "disconnected — retrying in")
            await wait_for(pilot, lambda: app.screen.query_one(ConnectionBar).has_class("-disconnected"),
                           what="the red bar")
            # the first retry delay followed the drop; a second one follows a refused reconnect attempt
            await wait_for(pilot, lambda: backoff.delays >= 2, what="a refused reconnect attempt")
            second = Snapshot(queue=(item(500, 5000, "new@example.com"),), queue_by_state={"accepted": 1})
            relay2 = await FakeRelay(second, port=port, ts=NOW).start()
            try:
                await wait_for(pilot, lambda: "● connected" in screen_text(app), within=10, what="reconnected")
                await wait_for(pilot, lambda: list(app.state.queue) == [5000], what="the new snapshot")
                await shows(pilot, "Queue 1  In flight 0")
            finally:
                await relay2.stop()

    run(scenario())


def test_overview_shows_every_node() -> None:
    nodes = (NodeInfo("mx1-1", "running", True, 0.3, queue_messages=6), NodeInfo("mx1-2", "running", False, 0.5,
                                                                                  queue_messages=4))

    async def scenario() -> None:
        async with FakeRelay(dataclasses.replace(SNAPSHOT, node="mx1-1", nodes=nodes), ts=NOW) as relay:
            app = make_app(relay)
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await shows(pilot, "Nodes ▸mx1-1 q6 · mx1-2 q4  total q10")
                await relay.broadcast(Nodes(nodes=(nodes[0], NodeInfo("mx1-2", "silent", False, 40.0))))
                await shows(pilot, "Nodes ▸mx1-1 q6 · mx1-2 silent  total q6")

    run(scenario())
