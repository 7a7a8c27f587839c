"""Helpers for the server tests: a recording handler, a raw SMTP client, in-memory listeners."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import trio
import trio.testing

from relay.errors import AuthFailed, MemberSuspended
from relay.smtp.handler import Session
from relay.smtp.lines import parse_reply_lines, reply_complete
from relay.smtp.reply import Reply
from relay.smtp.server import SmtpServer, SmtpServerConfig

USER, PASSWORD = "did:plc:testuser", "atmos_secret"


@dataclass
class Stored:
    did: str | None
    mail_from: str | None
    rcpts: list[str]
    data: bytes


@dataclass
class RecordingHandler:
    """Accepts USER/PASSWORD; ``boom@`` recipients make on_message raise; records messages."""

    messages: list[Stored] = field(default_factory=list)
    greeting: Reply | None = None
    message_delay: float = 0.0

    async def on_connect(self, session: Session) -> Reply | None:
        return self.greeting

    async def on_auth(self, session: Session, username: str, password: str) -> Reply:
        if username == "did:plc:suspended":
            raise MemberSuspended()
        if (username, password) != (USER, PASSWORD):
            raise AuthFailed()
        session.did = username
        return Reply(235, "2.7.0", "authentication succeeded")

    async def on_mail(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        return Reply(250, "2.1.0", "sender ok")

    async def on_rcpt(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        return Reply(250, "2.1.5", "recipient ok")

    async def on_message(self, session: Session, data: bytes) -> Reply:
        if any(r.startswith("boom@") for r in session.rcpts):
            raise RuntimeError("database password is hunter2")
        if self.message_delay:
            await trio.sleep(self.message_delay)
        self.messages.append(Stored(session.did, session.mail_from, list(session.rcpts), data))
        return Reply(250, "2.0.0", f"queued as {len(self.messages)}")


class RawClient:
    """Speaks SMTP bytes directly (for pipelining, smuggling and injection tests)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawClient:
        return cls(await trio.open_tcp_stream(*address))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> Reply:
        lines: list[str] = []
        while not lines or not reply_complete(lines[-1]):
            lines.append(await self._line())
        return parse_reply_lines(lines)

    async def command(self, line: bytes) -> Reply:
        await self.send(line + b"\r\n")
        return await self.reply()

    async def at_eof(self) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        if self._buf:
            return False
        try:
            return await self.stream.receive_some(4096) == b""
        except trio.BrokenResourceError:
            return True

    async def _line(self) -> str:
        while (end := self._buf.find(b"\r\n")) < 0:
            data = await self.stream.receive_some(4096)
            if not data:
                raise EOFError(f"connection closed; unparsed {bytes(self._buf)!r}")
            self._buf += data
        line = bytes(self._buf[:end]).decode()
        del self._buf[: end + 2]
        return line

    async def aclose(self) -> None:
        await self.stream.aclose()


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs (works with autojump_clock)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](0)

    async def connect(self) -> RawClient:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return RawClient(client)

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        await self._receive.aclose()
        await trio.lowlevel.checkpoint()


async def start(
    nursery: trio.Nursery, config: SmtpServerConfig, handler: RecordingHandler
) -> tuple[SmtpServer, tuple[str, int]]:
    server = SmtpServer(config, handler)
    addresses = await nursery.start(server.serve)
    return server, addresses[0]


def tls_contexts(ca: object) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts from a trustme CA."""
    import trustme

    assert isinstance(ca, trustme.CA)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client
