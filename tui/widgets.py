"""Widgets shared by the screens."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.widget import Widget

from tui.fmt import number, rate

if TYPE_CHECKING:
    from tui.app import ConsoleApp


class ConnectionBar(Widget):
    """The one-line header: title and screen on the left, the link's state on the right.

    It turns red while disconnected and counts down to the next reconnection attempt."""

    DEFAULT_CSS = """
    ConnectionBar { height: 1; dock: top; }
    """

    def __init__(self, screen_title: str) -> None:
        super().__init__()
        self.screen_title = screen_title

    def on_mount(self) -> None:
        self.set_interval(0.5, self.update_status)
        self.update_status()

    def update_status(self) -> None:
        app = cast("ConsoleApp", self.app)
        state = app.link.state
        for name in ("connected", "connecting", "disconnected", "offline"):
            self.set_class(state == name, f"-{name}")
        self.refresh()

    def render(self) -> Text:
        app = cast("ConsoleApp", self.app)
        width = max(1, self.size.width)
        left = Text.assemble((" Atmosphere Relay", "bold"), f" · {self.screen_title}")
        status = app.link.describe()
        if app.link.state == "connected":
            st = app.state
            right = Text(f"q {number(st.queue_total)} · ⇣{rate(st.accepted_per_s)} ⇡{rate(st.delivered_per_s)} "
                         f"· ● {status} ")
        else:
            right = Text(f"✖ {status} " if app.link.state == "disconnected" else f"○ {status} ")
        room = width - left.cell_len
        if right.cell_len > room - 1:
            right.truncate(max(0, room - 1), overflow="ellipsis")
            right.append(" ")
        return Text.assemble(left, " " * max(1, room - right.cell_len), right)
