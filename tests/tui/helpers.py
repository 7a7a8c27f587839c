"""Test helpers for the console: a fake /admin/ws peer, the screen as text, polling."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from textual.app import App
from textual.pilot import Pilot
from websockets.asyncio.server import Request, Response, Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relay.events import Command, CommandResult, Event, Snapshot, decode, encode

Responder = Callable[[Command], Iterable[Event]]


def accept_all(cmd: Command) -> list[Event]:
    return [CommandResult(id=cmd.id, ok=True, message=f"{cmd.action} {cmd.target}: 1 recipient changed")]


class FakeRelay:
    """A real websocket peer speaking the /admin/ws protocol of relay/events.py (the relay's own
    server is built elsewhere): bearer-token check at the handshake, a snapshot first, then whatever
    the test broadcasts; commands are recorded and answered by ``responder``."""

    def __init__(self, snapshot: Snapshot, *, token: str = "T", port: int = 0, ts: float | None = None,
                 responder: Responder = accept_all) -> None:
        self.snapshot = snapshot
        self.token = token
        self.port = port
        self.ts = ts
        self.responder = responder
        self.commands: list[Command] = []
        self.auth_headers: list[str | None] = []
        self.clients: set[ServerConnection] = set()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/admin/ws"

    async def start(self) -> FakeRelay:
        self._server = await serve(self._handler, "127.0.0.1", self.port, process_request=self._auth)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection (like the relay process going away)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _auth(self, connection: ServerConnection, request: Request) -> Response | None:
        header = request.headers.get("Authorization")
        self.auth_headers.append(header)
        query = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        if header != f"Bearer {self.token}" and query != self.token:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "admin token required\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.clients.add(ws)
        try:
            await ws.send(encode(self.snapshot, ts=self.ts))
            async for frame in ws:
                event, _ = decode(frame)
                if isinstance(event, Command):
                    self.commands.append(event)
                    for reply in self.responder(event):
                        await self.broadcast(reply)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(ws)

    async def broadcast(self, event: Event, ts: float | None = None) -> None:
        for ws in list(self.clients):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode(event, ts=self.ts if ts is None else ts))


async def wait_for(pilot: Pilot[object], predicate: Callable[[], object], within: float = 5.0,
                   what: str = "condition") -> None:
    """Let the app run until ``predicate()`` holds; on time-out, fail showing the screen."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n--- screen ---\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def until(predicate: Callable[[], object], within: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` on a bare asyncio loop (no app)."""
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


_TEXT = re.compile(r'<text [^>]*?x="([\d.]+)"[^>]*?textLength="([\d.]+)"[^>]*?line-(\d+)\)"[^>]*>(.*?)</text>',
                   re.S)


def screen_text(app: App[object]) -> str:
    """The screen as plain text, one row per line, read back from ``export_screenshot()``'s SVG."""
    width, height = app.size
    rows = [[" "] * width for _ in range(height)]
    for x, length, line, content in _TEXT.findall(app.export_screenshot()):
        text = html.unescape(content).replace("\xa0", " ").rstrip("\n")
        if not text or int(line) >= height:
            continue
        cell = float(length) / len(text)
        col = round(float(x) / cell)
        row = rows[int(line)]
        for i, ch in enumerate(text):
            if 0 <= col + i < width:
                row[col + i] = ch
    return "\n".join("".join(r).rstrip() for r in rows)


def run(coro: object, timeout: float = 30.0) -> None:
    """Run an asyncio scenario from a plain (sync) pytest test, bounded in time."""
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    asyncio.run(bounded())
