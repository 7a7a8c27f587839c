"""A real inbound listener on 127.0.0.1:<free port> over a real spool, status writer and SQLite store."""

from __future__ import annotations

import dataclasses
import smtplib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from relay.accept.acceptor import Acceptor
from relay.config import Config, InboundConfig, SmtpConfig
from relay.delivery import verp
from relay.inbound import BounceClass
from relay.inbound.handler import InboundHandler
from relay.inbound.service import make_inbound_server
from relay.smtp.server import SmtpServer
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.mirror import StatusMirror
from relay.store.rows import MessageRow
from relay.store.writer import StatusWriter
from spool import QueuedMessage, Spool

SECRET = b"inbound-test-secret-0123456789abcdef"
OPERATOR = "relay.test"
DID = "did:plc:memberaaaaaaaaaaaaaaaaaa"
OTHER_DID = "did:plc:otherbbbbbbbbbbbbbbbbbbb"
MEMBER_DOMAIN = "member.example"
FORWARD_TO = "owner@mailbox.example"
NOFORWARD_DOMAIN = "noforward.example"
PENDING_DOMAIN = "pending.example"
OPERATOR_INBOX = "ops@operator-mail.example"


@dataclass
class RecordingEvents:
    bounces: list[tuple[str, int, str, BounceClass, str]] = field(default_factory=list)
    complaints: list[tuple[str, str, str, str]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def bounce(self, did: str, rcpt_id: int, recipient: str, klass: BounceClass, diagnostic: str) -> None:
        self.bounces.append((did, rcpt_id, recipient, klass, diagnostic))
        self.changed.set()

    async def complaint(self, did: str, recipient: str, feedback_type: str, message_id: str) -> None:
        self.complaints.append((did, recipient, feedback_type, message_id))
        self.changed.set()


@dataclass
class Rig:
    cfg: Config
    store: AsyncStore
    spool: Spool
    writer: StatusWriter
    acceptor: Acceptor
    events: RecordingEvents
    handler: InboundHandler
    server: SmtpServer
    host: str
    port: int

    def verp(self, rcpt_id: int) -> str:
        return verp.encode(rcpt_id, secret=SECRET, domain=OPERATOR)

    def spooled(self) -> list[QueuedMessage]:
        return sorted(self.spool.live(), key=lambda m: m.queue_id)

    def data(self, msg: QueuedMessage) -> bytes:
        return self.spool.read_data(msg.queue_id)

    async def add_sent(self, rcpt_id: int, recipient: str, *, did: str = DID, status: str = "sent",
                       mail_from: str = f"alice@{MEMBER_DOMAIN}") -> None:
        now = time.time()
        await self.store.insert_messages([MessageRow(
            id=rcpt_id, queue_id=rcpt_id, did=did, from_domain=mail_from.rpartition("@")[2], mail_from=mail_from,
            recipient=recipient, source="smtp", created_at=now, updated_at=now, status=status)])  # type: ignore[arg-type]

    async def smtp(self, fn: Callable[[smtplib.SMTP], Any]) -> Any:
        """Run ``fn`` with a connected smtplib client (EHLO done) in a thread."""
        def run() -> Any:
            with smtplib.SMTP(self.host, self.port, local_hostname="client.test", timeout=10) as client:
                client.ehlo()
                return fn(client)
        return await trio.to_thread.run_sync(run)

    async def rcpt(self, rcpt: str, mail_from: str = "someone@sender.test") -> tuple[int, str]:
        """One connection: MAIL FROM, then the raw RCPT TO:<rcpt> argument; the RCPT reply."""
        def fn(client: smtplib.SMTP) -> tuple[int, str]:
            code, _ = client.docmd("MAIL", f"FROM:<{mail_from}>")
            assert code == 250
            code, msg = client.docmd("RCPT", f"TO:<{rcpt}>")
            return code, msg.decode()
        result: tuple[int, str] = await self.smtp(fn)
        return result

    async def send(self, mail_from: str, rcpts: list[str], data: bytes) -> tuple[int, str]:
        """A whole transaction; the final reply (after the dot), or the first failing one."""
        def fn(client: smtplib.SMTP) -> tuple[int, str]:
            code, msg = client.docmd("MAIL", f"FROM:<{mail_from}>")
            if code != 250:
                return code, msg.decode()
            for r in rcpts:
                code, msg = client.docmd("RCPT", f"TO:<{r}>")
                if code != 250:
                    return code, msg.decode()
            code, msg = client.data(data)
            return code, msg.decode()
        result: tuple[int, str] = await self.smtp(fn)
        return result


async def enroll(store: AsyncStore) -> None:
    for did in (DID, OTHER_DID):
        await store.create_member(did)
    keys: dict[str, Any] = {"selector": "s1", "rsa_private": b"r", "ed25519_private": b"e", "verify_token": "t"}
    await store.add_domain(DID, MEMBER_DOMAIN, state="verified", **keys)
    await store.set_forward_to(MEMBER_DOMAIN, FORWARD_TO)
    # As if the owner had followed the confirmation link (tests/inbound/test_forward_confirm.py does it for real).
    await store.call(lambda s: s.confirm_forward_to(MEMBER_DOMAIN, FORWARD_TO, time.time()))
    await store.add_domain(DID, NOFORWARD_DOMAIN, state="verified", **keys)
    await store.add_domain(OTHER_DID, PENDING_DOMAIN, state="pending", **keys)
    await store.set_forward_to(PENDING_DOMAIN, "someone@mailbox.example")


def make_config(**inbound: Any) -> Config:
    # The test client connects from 127.0.0.1: a trusted feedback-loop network unless a test says otherwise.
    defaults: dict[str, Any] = {"operator_inbox": OPERATOR_INBOX, "per_ip_per_minute": 6000, "per_ip_burst": 1000,
                                "fbl_sources": ("127.0.0.1/32",), "forward_per_ip_per_hour": 6000}
    return Config(
        operator_domain=OPERATOR,
        smtp=SmtpConfig(hostname="mx.relay.test", command_timeout=30, data_timeout=30, shutdown_grace=1),
        inbound=dataclasses.replace(InboundConfig(), **{**defaults, **inbound}),
        secret_key=SECRET,
    )


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[RigFactory]:
    async with trio.open_nursery() as nursery:
        count = 0

        async def make(**inbound: Any) -> Rig:
            nonlocal count
            count += 1
            cfg = make_config(**inbound)
            store = AsyncStore(open_store("sqlite:///:memory:"))
            await enroll(store)
            writer = StatusWriter(store)
            await nursery.start(writer.run)
            spool = Spool(tmp_path / f"spool{count}", mirror=StatusMirror(writer))
            await nursery.start(spool.run)
            acceptor = Acceptor(spool, writer)
            events = RecordingEvents()
            handler = InboundHandler(cfg, store, acceptor, events)
            server = make_inbound_server(cfg, handler, host="127.0.0.1", port=0)
            [(host, port), *_] = await nursery.start(server.serve)
            return Rig(cfg, store, spool, writer, acceptor, events, handler, server, host, port)

        yield make
        nursery.cancel_scope.cancel()


@pytest.fixture
async def rig(rig_factory: RigFactory) -> Rig:
    return await rig_factory()
