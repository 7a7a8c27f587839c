"""The frame every console screen shares: a connection bar on top, the footer with its keys below."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from tui.state import State
from tui.widgets import ConnectionBar

if TYPE_CHECKING:
    from tui.app import ConsoleApp


class ConsoleScreen(Screen[None]):
    TITLE_TEXT = ""

    def __init__(self) -> None:
        super().__init__()
        self._shown: State | None = None

    @property
    def capp(self) -> ConsoleApp:
        return cast("ConsoleApp", self.app)

    def compose(self) -> ComposeResult:
        yield ConnectionBar(self.TITLE_TEXT)
        yield from self.compose_body()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError

    def on_mount(self) -> None:
        self.refresh_state()

    def on_screen_resume(self) -> None:
        self.refresh_state()

    def refresh_state(self, *, force: bool = False) -> None:
        """Show the app's current state (a no-op when it is the state already shown)."""
        state = self.capp.state
        if state is self._shown and not force:
            return
        self._shown = state
        self.show_state(state)
        for bar in self.query(ConnectionBar):
            bar.update_status()

    def show_state(self, state: State) -> None:
        raise NotImplementedError
