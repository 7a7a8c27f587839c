"""Queue: the queued recipients in a filterable table, with the operator's actions on a message."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Input, Label

from relay.events import QueuedItem
from tui.fmt import STATE_STYLES, shorten, until
from tui.screens.base import ConsoleScreen
from tui.screens.dialogs import ConfirmDialog, MessageDetail
from tui.state import State

COLUMNS = (("Msg", "msg", 6), ("Recipient", "rcpt", 26), ("State", "state", 8), ("Att", "att", 3),
           ("Next", "next", 6), ("Last reply", "reply", 14))


class QueueScreen(ConsoleScreen):
    TITLE_TEXT = "Queue"
    BINDINGS = [
        Binding("enter", "detail", "Detail"),
        Binding("h", "command('hold')", "Hold"),
        Binding("r", "command('retry')", "Retry"),
        Binding("R", "command('release')", "Release"),
        Binding("d", "delete", "Delete"),
        Binding("slash", "filter", "Filter"),
        Binding("p", "destination('pause')", "Pause dest", show=False),
        Binding("P", "destination('resume')", "Resume dest", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._rendered: tuple[object, str] | None = None

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="filter-row"):
            yield Input(placeholder="/ filter: recipient, sender, DID, state, reply…", id="filter")
            yield Label("", id="count")
        table: DataTable[str | Text] = DataTable(id="queue", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#queue", DataTable).focus()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#queue", DataTable)

    def show_state(self, state: State) -> None:
        query = self.query_one("#filter", Input).value
        key = (state.queue, query)
        if self._rendered is not None and self._rendered[0] is key[0] and self._rendered[1] == query:
            return
        self._rendered = key
        items = state.queue_items(query)
        now = self.capp.clock()
        table = self.table
        selected = self.selected_rcpt()
        table.clear()
        for item in items:
            table.add_row(*self._cells(item, now), key=str(item.rcpt_id))
        if selected is not None and str(selected) in table.rows:
            table.move_cursor(row=table.get_row_index(str(selected)), animate=False)
        known = len(state.queue)
        self.query_one("#count", Label).update(f"{len(items)} of {known}" if query else f"{known} queued")

    @staticmethod
    def _cells(item: QueuedItem, now: float) -> list[str | Text]:
        nxt = "held" if item.state == "held" else until(item.next_attempt_at, now)
        state = Text(item.state, style=STATE_STYLES.get(item.state, ""))
        return [str(item.queue_id), shorten(item.recipient, 26), state, str(item.attempts), nxt,
                shorten(item.last_reply, 40) or "—"]

    def selected_rcpt(self) -> int | None:
        table = self.table
        if table.row_count == 0:
            return None
        row = min(table.cursor_row, table.row_count - 1)
        key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return int(key) if key is not None else None

    def selected_item(self) -> QueuedItem | None:
        rcpt = self.selected_rcpt()
        return None if rcpt is None else self.capp.state.queue.get(rcpt)

    # ------------------------------------------------------------------ events and actions

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.refresh_state(force=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_detail()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self.table.focus()

    def action_detail(self) -> None:
        rcpt = self.selected_rcpt()
        if rcpt is not None:
            self.app.push_screen(MessageDetail(rcpt))

    def action_command(self, action: str) -> None:
        item = self.selected_item()
        if item is None:
            self.notify("No message selected", severity="warning")
            return
        self.capp.send_command(action, str(item.queue_id))

    def action_delete(self) -> None:
        item = self.selected_item()
        if item is None:
            self.notify("No message selected", severity="warning")
            return
        n = len(self.capp.state.messages_by_id(item.queue_id))
        plural = "s" if n != 1 else ""
        question = f"Delete message #{item.queue_id} ({n} queued recipient{plural})? It will not be delivered."

        def answered(yes: bool | None) -> None:
            if yes:
                self.capp.send_command("delete", str(item.queue_id))

        self.app.push_screen(ConfirmDialog(question), answered)

    def action_destination(self, action: str) -> None:
        item = self.selected_item()
        if item is None:
            self.notify("No message selected", severity="warning")
            return
        self.capp.send_command(action, item.domain)
