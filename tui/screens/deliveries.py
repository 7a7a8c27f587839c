"""Deliveries: a live log of sent, deferred and bounced recipients that follows the newest line."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Label, RichLog

from tui.fmt import STATE_STYLES, clock
from tui.screens.base import ConsoleScreen
from tui.state import DELIVERY_KINDS, LOG_LIMIT, LogEntry, State


def log_line(entry: LogEntry) -> Table:
    """One entry as a grid row, so a long reply wraps under its own column."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=8, style="grey62")
    grid.add_column(width=9)
    grid.add_column(width=5, justify="right", style="grey62")
    grid.add_column(ratio=1)
    ref = f"#{entry.queue_id}" if entry.queue_id is not None else ""
    grid.add_row(clock(entry.ts), Text(entry.kind, style=STATE_STYLES.get(entry.kind, "")), ref,
                 Text.assemble((entry.subject, "bold"), "  ", entry.detail))
    return grid


class DeliveriesScreen(ConsoleScreen):
    TITLE_TEXT = "Deliveries"
    BINDINGS = [
        Binding("f", "toggle_follow", "Follow"),
        Binding("a", "toggle_all", "All events"),
        Binding("c", "clear", "Clear"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.follow = True
        self.all_events = False
        self._seq = 0
        self._line_count = 0

    def compose_body(self) -> ComposeResult:
        yield RichLog(id="log", max_lines=LOG_LIMIT * 2, auto_scroll=True, wrap=True, markup=False)
        yield Label(id="log-status")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#log", RichLog).focus()

    @property
    def kinds(self) -> tuple[str, ...] | None:
        return None if self.all_events else DELIVERY_KINDS

    def show_state(self, state: State) -> None:
        log = self.query_one("#log", RichLog)
        for entry in state.log_since(self._seq, self.kinds):
            log.write(log_line(entry), scroll_end=self.follow)
            self._line_count += 1
        if state.log:
            self._seq = max(self._seq, state.log[-1].seq)
        self._status()

    def _status(self) -> None:
        what = "all events" if self.all_events else "sent / deferred / bounced"
        follow = "following" if self.follow else "paused (f to follow)"
        self.query_one("#log-status", Label).update(f" {follow} · {what} · {self._line_count} lines")

    def _rewrite(self) -> None:
        self.query_one("#log", RichLog).clear()
        self._seq = self._line_count = 0
        self.refresh_state(force=True)

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        log = self.query_one("#log", RichLog)
        log.auto_scroll = self.follow
        if self.follow:
            log.scroll_end(animate=False)
        self._status()

    def action_toggle_all(self) -> None:
        self.all_events = not self.all_events
        self._rewrite()

    def action_clear(self) -> None:
        self.query_one("#log", RichLog).clear()
        self._line_count = 0
        self._status()
