"""Warming: each member domain's warming tier, its age in days, and its hourly and daily budget."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Label

from tui.fmt import budget, shorten
from tui.screens.base import ConsoleScreen
from tui.state import State

COLUMNS = (("Domain", "domain", 24), ("Tier", "tier", 9), ("Day", "day", 3), ("Hourly", "hourly", 15),
           ("Daily", "daily", 15))


class WarmingScreen(ConsoleScreen):
    TITLE_TEXT = "Warming"

    def __init__(self) -> None:
        super().__init__()
        self._rendered: object = None

    def compose_body(self) -> ComposeResult:
        table: DataTable[str | Text] = DataTable(id="warming", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield Label(" New domains start small; budgets grow with each clean day.", id="warming-note")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#warming", DataTable).focus()

    def show_state(self, state: State) -> None:
        if state.warming is self._rendered:
            return
        self._rendered = state.warming
        table = self.query_one("#warming", DataTable)
        cursor = table.cursor_row
        table.clear()
        for w in sorted(state.warming, key=lambda w: w.domain):
            tier = Text(w.tier, style="green" if w.tier == "warm" else "yellow")
            table.add_row(shorten(w.domain, 24), tier, str(w.day), budget(w.hourly_used, w.hourly_limit),
                          budget(w.daily_used, w.daily_limit), key=w.domain)
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1), animate=False)
