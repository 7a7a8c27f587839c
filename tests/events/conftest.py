"""A real relay process (tests/e2e/relayproc.py) with two enrolled members, and a websocket client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay.events import Command, Event, decode, encode
from tests.e2e.relayproc import RelayProcess, make_tls

DID = "did:plc:eventsaaaaaaaaaaaaaaaaaa"
DOMAIN = "mail.events.example"
DID_B = "did:plc:eventsbbbbbbbbbbbbbbbbbb"
DOMAIN_B = "news.events.example"


@dataclass
class Member:
    did: str
    domain: str
    key: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "X-Atmos-DID": self.did}

    def send_body(self, to: str = "someone@dest.example", **extra: Any) -> dict[str, Any]:
        return {"from": f"hello@{self.domain}", "to": to, "subject": "Hi", "text": "Hello", **extra}


@dataclass
class Relay:
    proc: RelayProcess
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return self.proc.http

    @property
    def ws_url(self) -> str:
        return self.proc.http.replace("http://", "ws://", 1) + "/admin/ws"

    @property
    def admin_token(self) -> str:
        return self.proc.full_env()["ATMOS_ADMIN_TOKEN"]

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@pytest.fixture(scope="package")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=make_tls(tmp_path_factory.mktemp("tls")))
    proc.write_config()
    out = Relay(proc)
    for did, domain in ((DID, DOMAIN), (DID_B, DOMAIN_B)):
        out.members[did] = Member(did, domain, proc.enroll(did, domain)["api_key"])
    proc.start()
    yield out
    if proc.proc is not None and proc.proc.poll() is None:
        assert proc.stop() == 0
    log = "".join(proc.output)
    print(log)
    assert "Traceback" not in log, log


class Stream:
    """Frames from /admin/ws, decoded; ``expect`` skips frames until one matches."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.seen: list[Event] = []

    async def next(self, within: float = 10.0) -> Event:
        with trio.fail_after(within):
            while True:
                event, _ = decode(await self.ws.get_message())
                if event is not None:
                    self.seen.append(event)
                    return event

    async def expect(self, kind: type[Event], within: float = 10.0, **fields: Any) -> Any:
        with trio.fail_after(within):
            while True:
                event = await self.next(within)
                if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                    return event

    async def command(self, cmd_id: str, action: str, target: str, reason: str = "") -> None:
        await self.ws.send_message(encode(Command(id=cmd_id, action=action, target=target, reason=reason)))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_message(text)


def frame_type(text: str) -> str:
    return str(json.loads(text)["type"])


async def closed_by_server(ws: WebSocketConnection, within: float = 5.0) -> int:
    """Read until the server closes the websocket; its close code."""
    try:
        with trio.fail_after(within):
            while True:
                await ws.get_message()
    except ConnectionClosed as exc:
        assert exc.reason is not None
        return exc.reason.code
    finally:
        # trio-websocket 0.12 leaves the TCP stream open when the server closes first (its aclose()
        # returns early once a close reason is set), which filterwarnings=error turns into a failure.
        await ws._stream.aclose()
