"""Members: the suspension review queue (lift with u, suspend with s) and recent complaints."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from tui.fmt import STATE_STYLES, ago, clock, shorten, stamp
from tui.screens.base import ConsoleScreen
from tui.screens.dialogs import SuspendDialog
from tui.state import State

COLUMNS = (("DID", "did", 32), ("Handle", "handle", 14), ("Since", "since", 8), ("Reason", "reason", 12))


class MembersScreen(ConsoleScreen):
    TITLE_TEXT = "Members"
    BINDINGS = [
        Binding("u", "unsuspend", "Lift suspension"),
        Binding("s", "suspend", "Suspend…"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._rendered: object = None

    def compose_body(self) -> ComposeResult:
        table: DataTable[str | Text] = DataTable(id="members", cursor_type="row", zebra_stripes=True)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        detail = Static(id="member-detail", classes="panel")
        detail.border_title = "Under review"
        yield detail
        complaints = Static(id="complaints", classes="panel")
        complaints.border_title = "Recent complaints"
        yield complaints

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#members", DataTable).focus()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#members", DataTable)

    def show_state(self, state: State) -> None:
        now = self.capp.clock()
        if state.suspended is not self._rendered:
            self._rendered = state.suspended
            table = self.table
            selected = self.selected_did()
            table.clear()
            for m in sorted(state.suspended, key=lambda m: m.since):
                table.add_row(shorten(m.did, 32), shorten(m.handle or "—", 14), ago(m.since, now).removesuffix(" ago"),
                              shorten(m.reason, 60), key=m.did)
            if selected is not None and selected in table.rows:
                table.move_cursor(row=table.get_row_index(selected), animate=False)
        self._detail(state)
        recent = [e for e in state.log if e.kind == "complaint"][-3:]
        text = Text("\n").join(
            Text.assemble((clock(e.ts), "grey62"), " ", (shorten(e.subject, 30), STATE_STYLES["complaint"]), "  ",
                          shorten(e.detail, 36)) for e in recent) if recent else Text("(none yet)", style="grey50")
        self.query_one("#complaints", Static).update(text)

    def _detail(self, state: State) -> None:
        did = self.selected_did()
        member = next((m for m in state.suspended if m.did == did), None)
        if member is None:
            text = Text("No member is suspended.", style="grey50")
        else:
            text = Text.assemble((member.did, "bold"), f"  {member.handle or ''}\n",
                                 ("since ", "grey62"), stamp(member.since), "\n",
                                 ("reason ", "grey62"), member.reason)
        self.query_one("#member-detail", Static).update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail(self.capp.state)

    def selected_did(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        row = min(table.cursor_row, table.row_count - 1)
        return table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value

    def action_unsuspend(self) -> None:
        did = self.selected_did()
        if did is None:
            self.notify("No suspended member selected", severity="warning")
            return
        self.capp.send_command("unsuspend", did)

    def action_suspend(self) -> None:
        def chosen(answer: tuple[str, str] | None) -> None:
            if answer is not None:
                did, reason = answer
                self.capp.send_command("suspend", did, reason)

        self.app.push_screen(SuspendDialog(), chosen)
