"""``atmos console``: the operator's Textual dashboard over the ``/admin/ws`` event stream (DESIGN §3).

An asyncio process of its own: the relay's only module it imports is ``relay.events`` (the wire
schema). The websocket link (``tui.client``) runs in a Textual worker and posts each decoded event
to the app; the app folds it into a ``tui.state.State`` and repaints the visible screen at most
every ``REFRESH`` seconds, so a burst of events costs one repaint.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from relay.events import Command, CommandResult, Event
from tui.client import Backoff, LinkStatus, RelayClient
from tui.screens.deliveries import DeliveriesScreen
from tui.screens.members import MembersScreen
from tui.screens.overview import OverviewScreen
from tui.screens.queue import QueueScreen
from tui.screens.warming import WarmingScreen
from tui.state import State
from tui.widgets import ConnectionBar

SCREENS_GROUP = Binding.Group("screens", compact=True)
REFRESH = 0.1
MODE_TITLES = {"overview": "Overview", "queue": "Queue", "deliveries": "Deliveries", "warming": "Warming",
               "members": "Members"}


@dataclass(frozen=True, slots=True)
class ResultNote:
    command: Command | None
    result: CommandResult

    @property
    def what(self) -> str:
        return f"{self.command.action} {self.command.target}" if self.command else "command"

    @property
    def text(self) -> str:
        return f"{self.what}: {self.result.message}"


class ConsoleApp(App[None]):
    TITLE = "Atmosphere Relay"
    CSS_PATH = "console.tcss"
    MODES = {"overview": OverviewScreen, "queue": QueueScreen, "deliveries": DeliveriesScreen,
             "warming": WarmingScreen, "members": MembersScreen}
    DEFAULT_MODE = "overview"
    BINDINGS = [
        Binding(str(n), f"show('{mode}')", title, group=SCREENS_GROUP)
        for n, (mode, title) in enumerate(MODE_TITLES.items(), start=1)
    ]

    class RelayEvent(Message):
        def __init__(self, event: Event, ts: float) -> None:
            super().__init__()
            self.event = event
            self.ts = ts

    class LinkChanged(Message):
        def __init__(self, status: LinkStatus) -> None:
            super().__init__()
            self.status = status

    def __init__(self, url: str | None, token: str = "", *, clock: Callable[[], float] = time.time,
                 backoff: Backoff | None = None, open_timeout: float = 10.0) -> None:
        """``url`` None: no connection at all (tests feed events with ``feed``)."""
        super().__init__()
        self.clock = clock
        self.state = State()
        self.pending: dict[str, Command] = {}
        self.results: list[ResultNote] = []
        self.client: RelayClient | None = None
        if url is not None:
            self.client = RelayClient(url, token, on_event=self._from_link, on_status=self._status_from_link,
                                      backoff=backoff, open_timeout=open_timeout)
            self.link = LinkStatus("connecting", self.client.url)
        else:
            self.link = LinkStatus("offline", "", "no relay URL")
        self._refresh_pending = False

    # ------------------------------------------------------------------ link

    def on_mount(self) -> None:
        self.sub_title = self.link.describe()
        if self.client is not None:
            self.run_worker(self.client.run(), name="relay-link", group="link", exclusive=True)

    def _from_link(self, event: Event, ts: float) -> None:
        self.post_message(self.RelayEvent(event, ts))

    def _status_from_link(self, status: LinkStatus) -> None:
        self.post_message(self.LinkChanged(status))

    def on_console_app_relay_event(self, message: RelayEvent) -> None:
        self.feed(message.event, message.ts)

    def on_console_app_link_changed(self, message: LinkChanged) -> None:
        self.set_link(message.status)

    def set_link(self, status: LinkStatus) -> None:
        self.link = status
        self.sub_title = status.describe()
        for bar in self.screen.query(ConnectionBar):
            bar.update_status()
        self._schedule_refresh()

    def feed(self, event: Event, ts: float | None = None) -> None:
        """Fold one event into the state (the link's path; tests call it directly)."""
        self.state = self.state.apply(event, ts)
        if isinstance(event, CommandResult):
            self._command_result(event)
        self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        if not self._refresh_pending:
            self._refresh_pending = True
            self.set_timer(REFRESH, self._flush_state)

    def _flush_state(self) -> None:
        self._refresh_pending = False
        for screen in self.screen_stack:
            refresh = getattr(screen, "refresh_state", None)
            if refresh is not None:
                refresh()

    # ------------------------------------------------------------------ commands

    def send_command(self, action: str, target: str, reason: str = "") -> Command:
        cmd = Command(id=uuid.uuid4().hex[:12], action=action, target=target, reason=reason)
        self.pending[cmd.id] = cmd
        self.run_worker(self._send(cmd), group="commands")
        return cmd

    async def _send(self, cmd: Command) -> None:
        sent = self.client is not None and await self.client.send(cmd)
        if not sent:
            self.pending.pop(cmd.id, None)
            self.notify(f"{cmd.action} {cmd.target}: not sent — not connected to the relay", severity="error",
                        title="Command")

    def _command_result(self, result: CommandResult) -> None:
        note = ResultNote(self.pending.pop(result.id, None), result)
        self.results.append(note)
        self.notify(result.message, title=f"{'Done' if result.ok else 'Refused'} · {note.what}",
                    severity="information" if result.ok else "error", timeout=6)

    # ------------------------------------------------------------------ navigation

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, title in MODE_TITLES.items():
            yield SystemCommand(f"Show {title.lower()}", f"Switch to the {title} screen",
                                lambda mode=mode: self.action_show(mode))
        if isinstance(screen, QueueScreen):
            yield SystemCommand("Pause destination", "Stop delivering to the selected recipient's domain (p)",
                                lambda: screen.action_destination("pause"))
            yield SystemCommand("Resume destination", "Resume delivering to the selected recipient's domain (P)",
                                lambda: screen.action_destination("resume"))
        if isinstance(screen, DeliveriesScreen):
            yield SystemCommand("Toggle all events", "Show accepted, queue and member events too (a)",
                                screen.action_toggle_all)


def run_console(url: str, token: str) -> int:
    ConsoleApp(url, token).run()
    return 0
