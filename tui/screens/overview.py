"""Overview: headline figures, throughput sparklines, queue gauges, top destinations and deferral reasons."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from tui.fmt import STATE_STYLES, ago, bar, number, plural, rate, shorten
from tui.screens.base import ConsoleScreen
from tui.state import HISTORY, State

QUEUE_STATES = ("accepted", "deferred", "held")


def _padded(history: tuple[float, ...]) -> list[float]:
    """Left-pad with zeros so the baseline is 0 and new samples enter on the right."""
    return [0.0] * (HISTORY - len(history)) + list(history)


class OverviewScreen(ConsoleScreen):
    TITLE_TEXT = "Overview"

    def compose_body(self) -> ComposeResult:
        yield Static(id="figures")
        with Vertical(id="rates", classes="panel") as rates:
            rates.border_title = "Throughput"
            with Horizontal(classes="spark-row"):
                yield Label(id="delivered-label", classes="spark-label")
                yield Sparkline([], id="delivered-spark")
            with Horizontal(classes="spark-row"):
                yield Label(id="accepted-label", classes="spark-label")
                yield Sparkline([], id="accepted-spark")
        with Horizontal(id="panels"):
            gauges = Static(id="gauges", classes="panel")
            gauges.border_title = "Queue by state"
            yield gauges
            dests = Static(id="destinations", classes="panel")
            dests.border_title = "Top destinations"
            yield dests
        reasons = Static(id="reasons", classes="panel")
        reasons.border_title = "Top deferral reasons"
        yield reasons

    def show_state(self, state: State) -> None:
        now = self.capp.clock()
        self.query_one("#figures", Static).update(self._figures(state, now))
        self.query_one("#delivered-label", Label).update(f"delivered {rate(state.delivered_per_s):>8}")
        self.query_one("#accepted-label", Label).update(f"accepted  {rate(state.accepted_per_s):>8}")
        self.query_one("#delivered-spark", Sparkline).data = _padded(state.delivered_history)
        self.query_one("#accepted-spark", Sparkline).data = _padded(state.accepted_history)
        self.query_one("#gauges", Static).update(self._gauges(state))
        self.query_one("#destinations", Static).update(self._destinations(state))
        self.query_one("#reasons", Static).update(self._reasons(state))

    @staticmethod
    def _figures(state: State, now: float) -> Text:
        if not state.has_snapshot:
            return Text("Waiting for the relay's snapshot…", style="italic")
        c = state.counters
        line1 = Text.assemble(
            ("Queue ", "bold"), number(state.queue_total),
            ("  In flight ", "bold"), number(state.in_flight),
            ("  Oldest deferred ", "bold"), ago(state.oldest_deferred, now),
        )
        if state.paused_destinations:
            line1.append("  Paused ", style="bold")
            line1.append(shorten(", ".join(state.paused_destinations), 24), style="magenta")
        line2 = Text.assemble(
            ("Since start ", "bold"),
            (f"{number(c.get('sent', 0))} sent", STATE_STYLES["sent"]), " · ",
            (f"{number(c.get('deferred', 0))} deferred", STATE_STYLES["deferred"]), " · ",
            (f"{number(c.get('bounced', 0))} bounced", STATE_STYLES["bounced"]), " · ",
            f"{number(c.get('accepted', 0))} accepted · ",
            (plural(c.get("complaints", 0), "complaint"), STATE_STYLES["complaint"]),
        )
        if state.dropped_subscribers:
            line2.append(f" · {state.dropped_subscribers} dropped", style="red")
        lines = [line1, line2]
        if len(state.nodes) > 1:  # several nodes: the figures above are this stream's node's own
            lines.append(_nodes(state))
        return Text("\n").join(lines)

    @staticmethod
    def _gauges(state: State) -> Text:
        total = max(1, state.queue_total)
        names = list(QUEUE_STATES) + sorted(set(state.queue_by_state) - set(QUEUE_STATES))
        lines = []
        for name in names:
            n = state.queue_by_state.get(name, 0)
            lines.append(Text.assemble((f"{name:<9}", STATE_STYLES.get(name, "")), bar(n, total, 14),
                                       f" {number(n):>6}"))
        return Text("\n").join(lines)

    @staticmethod
    def _destinations(state: State) -> Text:
        top = state.top_destinations(3)
        if not top:
            return Text("(queue empty)", style="grey50")
        paused = set(state.paused_destinations)
        return Text("\n").join(
            Text.assemble(f"{number(n):>6} ", shorten(d, 22), (" ⏸" if d in paused else "", "magenta"))
            for d, n in top)

    @staticmethod
    def _reasons(state: State) -> Text:
        top = state.top_deferral_reasons(4)
        if not top:
            return Text("(no deferred recipients)", style="grey50")
        return Text("\n").join(Text.assemble((f"{n:>5} ", "yellow"), shorten(reason, 68)) for reason, n in top)


def _nodes(state: State) -> Text:
    line = Text.assemble(("Nodes ", "bold"))
    running = [n for n in state.nodes if n.state == "running"]
    for i, n in enumerate(state.nodes):
        if i:
            line.append(" · ")
        style = "green" if n.state == "running" else ("grey50" if n.state == "stopped" else "red")
        line.append(("▸" if n.node == state.node else "") + n.node, style=f"bold {style}" if n.jobs else style)
        line.append(f" q{number(n.queue_messages)}" if n.state == "running" else f" {n.state}")
    line.append(f"  total q{number(sum(n.queue_messages for n in running))}", style="bold")
    return line
