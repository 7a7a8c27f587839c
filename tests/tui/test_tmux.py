"""As a person would: ``python -m relay console`` in a real terminal (tmux, 80x24) against a fake
/admin/ws peer; keys go in with ``send-keys``, the screen comes back with ``capture-pane``.

tmux is a Debian package (scripts/install-test-peers installs it): tests/peers/require.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.peers.require import require
from tests.tui.fixtures import SNAPSHOT
from tests.tui.helpers import FakeRelay

ROOT = Path(__file__).resolve().parents[2]
TMUX = shutil.which("tmux")


@contextmanager
def relay_in_thread(relay: FakeRelay) -> Iterator[FakeRelay]:
    """The fake relay on its own asyncio loop in a thread, so this sync test can drive tmux."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-relay", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
        yield relay
    finally:
        asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Tmux:
    def __init__(self, socket: str) -> None:
        assert TMUX is not None
        self.base = [TMUX, "-L", socket]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=10, check=False)
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "console")

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")
            time.sleep(0.2)


def test_console_in_tmux() -> None:
    require("tmux")
    now = time.time()
    snapshot = dataclasses.replace(SNAPSHOT, oldest_deferred=now - 7200)
    tmux = Tmux(f"atmos-console-test-{os.getpid()}")
    with relay_in_thread(FakeRelay(snapshot, ts=now)) as relay:
        command = shlex.join([sys.executable, "-m", "relay", "console", "--url", relay.url, "--token", "T"])
        started = subprocess.run([*tmux.base, "new-session", "-d", "-x", "80", "-y", "24", "-s", "console",
                                  "-c", str(ROOT), command], capture_output=True, text=True, timeout=10, check=False)
        assert started.returncode == 0, started.stderr
        try:
            text = tmux.wait(lambda t: "Queue 6" in t and "connected" in t, "the overview's figures")
            assert "In flight 2" in text and "Oldest deferred 2h00m ago" in text
            assert "Top deferral reasons" in text and "Greylisted" in text
            assert relay.auth_headers == ["Bearer T"]

            tmux("send-keys", "-t", "console", "2")
            text = tmux.wait(lambda t: "carol@example.com" in t, "a queue row")
            assert "erin@gmail.com" in text and "6 queued" in text

            tmux("send-keys", "-t", "console", "h")  # hold the selected message (101)
            deadline = time.monotonic() + 10
            while not relay.commands and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [(c.action, c.target) for c in relay.commands] == [("hold", "101")]
            tmux.wait(lambda t: "Done · hold 101" in t and "hold 101: 1 recipient changed" in t, "the result")

            tmux("send-keys", "-t", "console", "C-q")  # quits: the session ends with the program
            deadline = time.monotonic() + 10
            while tmux("list-sessions") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not tmux("list-sessions"), "the console did not quit on ctrl+q"
        finally:
            tmux("kill-server")
