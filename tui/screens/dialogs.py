"""Modal dialogs: message detail with its attempt timeline, a yes/no confirmation, suspend with a reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from relay.events import QueuedItem
from tui.fmt import STATE_STYLES, clock, stamp, until
from tui.state import State

if TYPE_CHECKING:
    from tui.app import ConsoleApp


class MessageDetail(ModalScreen[None]):
    """Everything the console knows about one queued recipient and the attempts it has seen."""

    BINDINGS = [Binding("escape,enter,q", "dismiss", "Close")]

    def __init__(self, rcpt_id: int) -> None:
        super().__init__()
        self.rcpt_id = rcpt_id
        self._item: QueuedItem | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="detail", classes="dialog") as box:
            box.border_title = f"Recipient {self.rcpt_id}"
            with VerticalScroll():
                yield Static(id="detail-body")
            yield Label("esc close", classes="dialog-hint")

    def on_mount(self) -> None:
        self.refresh_state()

    def refresh_state(self, *, force: bool = False) -> None:
        app = cast("ConsoleApp", self.app)
        self.query_one("#detail-body", Static).update(self.render_detail(app.state, app.clock()))

    def render_detail(self, state: State, now: float) -> Text:
        item = state.queue.get(self.rcpt_id) or self._item
        if item is None:
            return Text("This recipient has left the queue.", style="italic")
        self._item = item
        gone = self.rcpt_id not in state.queue
        rows = [
            ("Message", f"#{item.queue_id}  (recipient {item.rcpt_id})"),
            ("Member", item.did),
            ("From", item.sender or "—"),
            ("To", item.recipient),
            ("Destination", item.domain),
            ("State", "left the queue" if gone else item.state),
            ("Attempts", str(item.attempts)),
            ("Next attempt", "—" if item.state == "held" else
             f"{stamp(item.next_attempt_at)} (in {until(item.next_attempt_at, now)})"),
            ("Arrived", stamp(item.arrival)),
            ("Last reply", item.last_reply or "—"),
        ]
        text = Text()
        for name, value in rows:
            style = STATE_STYLES.get(value, "") if name == "State" else ""
            text.append(f"{name:>13}  ", style="bold")
            text.append(f"{value}\n", style=style)
        text.append("\nAttempts seen by this console\n", style="bold underline")
        timeline = state.attempts.get(self.rcpt_id, ())
        if not timeline:
            text.append("  (none since the console connected)\n", style="grey50")
        for a in timeline:
            via = f"{a.mx_host}{' TLS' if a.tls else ''}" if a.mx_host else "no MX reached"
            text.append(f"  {clock(a.ts)} ")
            text.append(f"{a.state:<8}", style=STATE_STYLES.get(a.state, ""))
            text.append(f" {via}: {a.reply}\n")
        return text


class ConfirmDialog(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm", classes="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # a destructive action is never the default

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class SuspendDialog(ModalScreen["tuple[str, str] | None"]):
    """Ask for the member's DID and the reason; returns (did, reason) or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, did: str = "") -> None:
        super().__init__()
        self.did = did

    def compose(self) -> ComposeResult:
        with Vertical(id="suspend", classes="dialog") as box:
            box.border_title = "Suspend a member"
            yield Input(self.did, placeholder="did:plc:… or did:web:…", id="suspend-did")
            yield Input(placeholder="reason (shown to the member)", id="suspend-reason")
            with Horizontal(classes="buttons"):
                yield Button("Suspend", variant="error", id="do-suspend")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#suspend-reason" if self.did else "#suspend-did", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "suspend-did":
            self.query_one("#suspend-reason", Input).focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "do-suspend":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _submit(self) -> None:
        did = self.query_one("#suspend-did", Input).value.strip()
        reason = self.query_one("#suspend-reason", Input).value.strip()
        if not did.startswith("did:"):
            self.notify("Enter the member's DID (did:plc:… or did:web:…)", severity="warning")
            self.query_one("#suspend-did", Input).focus()
            return
        if not reason:
            self.notify("A suspension needs a reason", severity="warning")
            self.query_one("#suspend-reason", Input).focus()
            return
        self.dismiss((did, reason))
