"""The console's websocket link to ``/admin/ws`` (asyncio; run inside a Textual worker).

It knows nothing of Textual: the app hands it two callbacks, one for each decoded event and one for
each change of the link's status, and posts them on as Textual messages. It reconnects for ever with
exponential backoff (0.5 s doubling to a 10 s cap, reset once a connection delivered its first frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from relay.events import Command, Event, SchemaError, decode, encode

LinkState = Literal["offline", "connecting", "connected", "disconnected"]


@dataclass(frozen=True, slots=True)
class LinkStatus:
    state: LinkState
    url: str = ""
    detail: str = ""  # why the last connection ended or failed
    retry_at: float | None = None  # time.monotonic() of the next attempt, while disconnected

    def describe(self, now: float | None = None) -> str:
        if self.state == "connected":
            return "connected"
        if self.state == "connecting":
            return "connecting…"
        if self.state == "offline":
            return self.detail or "offline"
        text = "disconnected"
        if self.retry_at is not None:
            remaining = max(0.0, self.retry_at - (time.monotonic() if now is None else now))
            text += f" — retrying in {max(1, int(remaining + 0.999))} s"
        return f"{text} ({self.detail})" if self.detail else text


class Backoff:
    """0.5 s, 1 s, 2 s, … capped at 10 s; ``reset`` after a good connection."""

    def __init__(self, initial: float = 0.5, cap: float = 10.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.initial


def normalize_url(url: str) -> str:
    """Accept ``http(s)://`` too (the admin server's address) and map it to ``ws(s)://``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, *parts[1:]))


class RelayClient:
    def __init__(self, url: str, token: str, *, on_event: Callable[[Event, float], None],
                 on_status: Callable[[LinkStatus], None], backoff: Backoff | None = None,
                 open_timeout: float = 10.0) -> None:
        self.url = normalize_url(url)
        self.token = token
        self.on_event = on_event
        self.on_status = on_status
        self.backoff = backoff or Backoff()
        self.open_timeout = open_timeout
        self.status = LinkStatus("offline", self.url)
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def _set(self, status: LinkStatus) -> None:
        self.status = status
        self.on_status(status)

    async def run(self) -> None:
        """Connect, read, reconnect, until cancelled."""
        while True:
            self._set(LinkStatus("connecting", self.url))
            try:
                detail = await self._session()
            except InvalidURI as exc:
                self._set(LinkStatus("offline", self.url, f"bad URL: {exc}"))
                return
            delay = self.backoff.next()
            self._set(LinkStatus("disconnected", self.url, detail, time.monotonic() + delay))
            await asyncio.sleep(delay)

    async def _session(self) -> str:
        """One connection, start to end; returns why it ended."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with connect(self.url, additional_headers=headers, open_timeout=self.open_timeout,
                               max_size=32 * 1024 * 1024, user_agent_header="atmos-console") as ws:
                self._ws = ws
                self._set(LinkStatus("connected", self.url))
                first = True
                try:
                    async for frame in ws:
                        event, ts = decode(frame)
                        if first:
                            self.backoff.reset()
                            first = False
                        if event is not None:
                            self.on_event(event, ts)
                finally:
                    self._ws = None
                return _closed_reason(ws)
        except InvalidStatus as exc:
            code = exc.response.status_code
            hint = " — check --token" if code in (401, 403) else ""
            return f"HTTP {code}{hint}"
        except SchemaError as exc:
            return f"bad frame: {exc}"
        except ConnectionClosed as exc:
            return _close_text(exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "")
        except InvalidURI:
            raise
        except ConnectionRefusedError:
            return "connection refused"
        except TimeoutError:
            return "timed out"
        except (OSError, WebSocketException) as exc:
            return str(exc) or type(exc).__name__
        except Exception as exc:  # a bug must not end the link: show it and retry
            return f"error: {type(exc).__name__}: {exc}"

    async def send(self, command: Command) -> bool:
        """Send a command frame; False when not connected (the caller tells the operator)."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(encode(command))
        except ConnectionClosed:
            return False
        return True

    async def close(self) -> None:
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()


def _closed_reason(ws: ClientConnection) -> str:
    return _close_text(ws.close_code, ws.close_reason or "")


def _close_text(code: int | None, reason: str) -> str:
    if code is None or code == 1006:  # 1006: closed without a close frame
        return "connection lost"
    text = {1000: "closed", 1001: "relay going away", 1008: "refused", 1011: "server error",
            1013: "dropped"}.get(code, "closed")
    return f"{text}: {reason}" if reason else f"{text} ({code})"
