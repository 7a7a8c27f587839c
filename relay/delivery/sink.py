"""The dev capture sink: an SMTP receiver that keeps every message as a file (DESIGN §3 ``--dev``).

``atmos serve --dev`` without a relayhost routes all outbound mail here, so the whole flow can be seen
with no internet. Built on the relay's own server (``relay.smtp.server``), with AUTH off; it accepts
any sender and recipient, except recipients whose local part starts with a configured prefix, which
get the configured reply (for tests and demos of deferrals and bounces)::

    sink = CaptureSink("state/captured", hostname="sink.localhost")   # default replies, see REPLIES
    host, port = await nursery.start(sink.serve)
    ...                                   # deliver to host:port
    sink.messages()                       # [CapturedMessage(path, mail_from, rcpts, data), ...]
    await sink.shutdown()

Each message is ``<directory>/<time>-<n>-<random>.eml``: the envelope as ``X-Captured-Mail-From`` and
one ``X-Captured-Rcpt-To`` header per recipient, prepended to the message as received (after a
temporary name and a rename, so a reader never sees half a file).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from relay.smtp.handler import Session
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply
from relay.smtp.server import SmtpServer, SmtpServerConfig

__all__ = ["REPLIES", "CaptureSink", "CapturedMessage", "read_captured"]

log = logging.getLogger("relay.delivery.sink")

#: The default answers by recipient local-part prefix (case-insensitive).
REPLIES: Mapping[str, Reply] = {
    "temp-fail": Reply(451, "4.3.0", "temporary failure (capture sink)"),
    "reject": Reply(550, "5.1.1", "user unknown (capture sink)"),
}

MAIL_FROM_HEADER = b"X-Captured-Mail-From"
RCPT_TO_HEADER = b"X-Captured-Rcpt-To"
_ENVELOPE = re.compile(rb"(X-Captured-Mail-From|X-Captured-Rcpt-To): <(.*)>\r\n")


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    path: Path
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes  # the message as received, without the envelope headers


class CaptureSink:
    """See the module docstring. ``replies=None`` means ``REPLIES``; ``{}`` accepts everyone."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        hostname: str = "sink.localhost",
        replies: Mapping[str, Reply] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.hostname = hostname
        self.replies = {k.lower(): v for k, v in (REPLIES if replies is None else replies).items()}
        self.config = SmtpServerConfig(
            host=host,
            port=port,
            hostname=hostname,
            ssl_context=ssl_context,
            auth_enabled=False,
            require_auth=False,
            require_tls_for_auth=False,
            limits=limits or Limits(),
        )
        self.connections = 0  # sessions so far (connection reuse shows as fewer sessions than messages)
        self.tls_messages = 0  # messages received under TLS
        self.received = 0  # messages stored
        self.address: tuple[str, int] | None = None
        self._server: SmtpServer | None = None
        self._seq = 0

    async def serve(
        self, listeners: Sequence[trio.SocketListener] | None = None, *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen (on ``listeners`` when the caller bound them); reports the bound (host, port); returns
        after ``shutdown``."""
        await trio.Path(self.directory).mkdir(parents=True, exist_ok=True)
        self._server = SmtpServer(self.config, _Handler(self))
        async with trio.open_nursery() as nursery:
            if listeners is None:
                addresses = await nursery.start(self._server.serve)
            else:
                addresses = await nursery.start(self._server.serve_listeners, listeners)
            self.address = addresses[0]
            log.info("capture sink on %s:%d, storing in %s", *addresses[0], self.directory)
            task_status.started(addresses[0])

    async def shutdown(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.shutdown(grace)

    def messages(self) -> list[CapturedMessage]:
        """The captured messages, oldest first (read back from the directory)."""
        if not self.directory.is_dir():
            return []
        return [read_captured(p) for p in sorted(self.directory.glob("*.eml"))]

    def reply_for(self, address: str) -> Reply | None:
        """The configured reply for a recipient, if its local part starts with a configured prefix."""
        local = address.rpartition("@")[0].lower() or address.lower()
        for prefix, reply in self.replies.items():
            if local.startswith(prefix):
                return reply
        return None

    async def _store(self, session: Session, data: bytes) -> Path:
        self._seq += 1
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{self._seq:06d}-{secrets.token_hex(4)}.eml"
        path = self.directory / name
        envelope = [MAIL_FROM_HEADER + b": <" + (session.mail_from or "").encode() + b">\r\n"]
        envelope += [RCPT_TO_HEADER + b": <" + rcpt.encode() + b">\r\n" for rcpt in session.rcpts]
        await trio.to_thread.run_sync(_write_atomically, path, b"".join(envelope) + data)
        return path


def read_captured(path: Path) -> CapturedMessage:
    raw = path.read_bytes()
    mail_from, rcpts, pos = "", [], 0
    while m := _ENVELOPE.match(raw, pos):
        value = m.group(2).decode("utf-8", "replace")
        if m.group(1) == b"X-Captured-Mail-From":
            mail_from = value
        else:
            rcpts.append(value)
        pos = m.end()
    return CapturedMessage(path, mail_from, tuple(rcpts), raw[pos:])


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class _Handler:
    """The SessionHandler of the sink."""

    def __init__(self, sink: CaptureSink) -> None:
        self.sink = sink

    async def on_connect(self, session: Session) -> Reply | None:
        self.sink.connections += 1
        return None

    async def on_auth(self, session: Session, username: str, password: str) -> Reply:
        return Reply(502, "5.5.1", "command not implemented")  # never called: AUTH is off

    async def on_mail(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        return Reply(250, "2.1.0", "sender ok")

    async def on_rcpt(self, session: Session, address: str, params: dict[str, str]) -> Reply:
        return self.sink.reply_for(address) or Reply(250, "2.1.5", "recipient ok")

    async def on_message(self, session: Session, data: bytes) -> Reply:
        path = await self.sink._store(session, data)
        self.sink.received += 1
        if session.tls:
            self.sink.tls_messages += 1
        log.info(
            "captured %s from=<%s> to=%s size=%d tls=%s",
            path.name,
            session.mail_from,
            ",".join(f"<{r}>" for r in session.rcpts),
            len(data),
            session.tls,
        )
        return Reply(250, "2.0.0", f"captured as {path.name}")
