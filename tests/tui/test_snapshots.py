"""Snapshot tests (pytest-textual-snapshot): each screen at 80x24 with fixed data, no network, fixed clock.

Update after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update`` and look
at the SVGs under ``__snapshots__/`` (or the HTML report a failing run writes) before committing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.tui.fixtures import NOW, script
from tui.app import ConsoleApp
from tui.client import LinkStatus

URL = "ws://127.0.0.1:8080/admin/ws"


def fixed_app() -> ConsoleApp:
    return ConsoleApp(None, clock=lambda: NOW)


def prepared(*keys: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, ConsoleApp)
        app.set_link(LinkStatus("connected", URL))
        for event, ts in script():
            app.feed(event, ts)
        await pilot.pause(0.2)
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.2)

    return run_before


SCREENS = {
    "overview": (),
    "queue": ("2",),
    "queue_detail": ("2", "down", "down", "down", "enter"),
    "deliveries": ("3",),
    "warming": ("4",),
    "members": ("5",),
}


@pytest.mark.parametrize("name", SCREENS)
def test_screen(snap_compare: Callable[..., bool], name: str) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=prepared(*SCREENS[name]))
