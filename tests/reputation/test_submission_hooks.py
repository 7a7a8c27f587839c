"""The SMTP submission hooks with a Reputation: 451 4.7.1 at RCPT, 521 at MAIL FROM, refund on failure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from relay.accept.acceptor import Accepted, Acceptor
from relay.accept.intake import Admission, Build, admit
from relay.accept.submission import SubmissionHandler
from relay.config import LimitsConfig, SuspensionConfig
from relay.errors import InsufficientStorage, KeyRegenerated, MemberSuspended, PayloadTooLarge, RateLimited
from relay.members.apikey import ApiKeyCache
from relay.members.auth import Authenticator, Principal
from relay.reputation import Reputation
from relay.smtp.handler import Session
from relay.store.aio import AsyncStore
from relay.store.mirror import StatusMirror
from relay.store.sqlite import SqliteStore
from relay.store.writer import StatusWriter
from spool import Spool
from tests.reputation.conftest import DID, DOMAIN, KEY_HASH, T0, trio_clock

PRINCIPAL = Principal(did=DID, handle=None, domains=frozenset({DOMAIN}), pending=frozenset(), key_hash=KEY_HASH)
MESSAGE = f"From: a@{DOMAIN}\r\nTo: x@dest.example\r\nSubject: hi\r\n\r\nhello\r\n".encode()


class BrokenAcceptor(Acceptor):
    def __init__(self) -> None:
        pass

    async def accept(self, *, did: str, mail_from: str, rcpts: Iterable[str], data: bytes,
                     attrs: Mapping[str, str]) -> Accepted:
        raise InsufficientStorage()


def session() -> Session:
    s = Session(peer=("127.0.0.1", 1), tls=True, did=DID)
    s.extra["principal"] = PRINCIPAL
    return s


async def rcpts(handler: SubmissionHandler, s: Session, n: int) -> None:
    for i in range(n):
        address = f"r{len(s.rcpts)}-{i}@dest.example"
        reply = await handler.on_rcpt(s, address, {})
        assert reply.code == 250
        s.rcpts.append(address)  # what the server does after a 2xx


@asynccontextmanager
async def key_handler(store: AsyncStore, tmp_path: Path, *, key_recheck: float) -> AsyncIterator[SubmissionHandler]:
    """A SubmissionHandler over a running spool and status writer (the key-regeneration tests)."""
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path / "spool")
        await nursery.start(spool.run)
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        yield SubmissionHandler(Authenticator(store, ApiKeyCache()), store, Acceptor(spool, writer),
                                key_recheck=key_recheck)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_rcpt_over_the_warming_cap_is_451_and_mail_from_of_a_suspended_member_521(
    store: AsyncStore, tmp_path: Path
) -> None:
    rep = Reputation(store, LimitsConfig(warming_tiers=((0, 3, 5),)), SuspensionConfig(), clock=trio_clock(T0 + 60))
    await rep.load()
    async with trio.open_nursery() as nursery:
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer))
        await nursery.start(spool.run)
        handler = SubmissionHandler(Authenticator(store, ApiKeyCache()), store, Acceptor(spool, writer),
                                    reputation=rep)
        s = session()
        assert (await handler.on_mail(s, f"a@{DOMAIN}", {})).code == 250
        s.mail_from = f"a@{DOMAIN}"
        await rcpts(handler, s, 3)
        with pytest.raises(RateLimited) as info:
            await handler.on_rcpt(s, "r4@dest.example", {})
        reply = info.value.smtp_reply
        assert (reply.code, reply.enhanced) == (451, "4.7.1")
        assert "3 recipients per hour" in reply.text and "in 3540 s" in reply.text

        # A failed accept gives the budget back; a good one counts it.
        broken = SubmissionHandler(Authenticator(store, ApiKeyCache()), store, BrokenAcceptor(), reputation=rep)
        with pytest.raises(InsufficientStorage):
            await broken.on_message(s, MESSAGE)
        assert (await handler.on_message(s, MESSAGE)).code == 250
        s.rcpts.clear()
        with pytest.raises(RateLimited):
            await handler.on_rcpt(s, "again@dest.example", {})

        rep.note_member_status(DID, "suspended", "automatic: test")
        with pytest.raises(MemberSuspended) as suspended:
            await handler.on_mail(s, f"a@{DOMAIN}", {})
        assert suspended.value.smtp_reply.code == 521
        assert "member suspended: automatic: test" in suspended.value.smtp_reply.text
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_session_cancelled_after_the_commit_gets_its_250_and_keeps_its_grant(
    store: AsyncStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: a session cancelled (timeout, shutdown) while its message was being committed got 451
    (or nothing) for a message that will be delivered, and its rate grant was refunded."""
    import os
    import time

    rep = Reputation(store, LimitsConfig(warming_tiers=((0, 3, 5),)), SuspensionConfig(), clock=trio_clock(T0 + 60))
    await rep.load()
    real = os.fdatasync

    def slow(fd: int) -> None:  # the disk takes its time; the session's deadline comes first
        time.sleep(0.3)
        real(fd)

    async with trio.open_nursery() as nursery:
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer))
        await nursery.start(spool.run)
        handler = SubmissionHandler(Authenticator(store, ApiKeyCache()), store, Acceptor(spool, writer),
                                    reputation=rep)
        s = session()
        assert (await handler.on_mail(s, f"a@{DOMAIN}", {})).code == 250
        s.mail_from = f"a@{DOMAIN}"
        await rcpts(handler, s, 3)
        monkeypatch.setattr(os, "fdatasync", slow)
        reply = None
        with trio.move_on_after(0.05):
            reply = await handler.on_message(s, MESSAGE)
        monkeypatch.undo()
        assert reply is not None and reply.code == 250  # committed: the session learns it
        assert spool.stats().live_messages == 1
        s.rcpts.clear()
        with pytest.raises(RateLimited):  # the 3 recipients were counted, not refunded
            await handler.on_rcpt(s, "again@dest.example", {})
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_regenerated_key_ends_sessions_that_used_the_old_one(store: AsyncStore, tmp_path: Path) -> None:
    async with key_handler(store, tmp_path, key_recheck=0.0) as handler:
        s = session()
        assert (await handler.on_mail(s, f"a@{DOMAIN}", {})).code == 250
        await store.set_api_key_hash(DID, "a-new-hash")  # regenerated (here, or by another process)
        with pytest.raises(KeyRegenerated) as ended:
            await handler.on_mail(s, f"a@{DOMAIN}", {})
        assert (ended.value.smtp_reply.code, ended.value.smtp_reply.enhanced) == (421, "4.7.0")
        with pytest.raises(KeyRegenerated):
            await handler.on_message(s, MESSAGE)


@pytest.mark.trio
async def test_mail_from_rereads_the_key_once_its_last_read_is_older_than_the_window(
    store: AsyncStore, tmp_path: Path
) -> None:
    """The stored hash is re-read at MAIL FROM only after ``key_recheck`` seconds; DATA always re-reads it,
    so a message is never accepted under a regenerated key, even inside the window."""
    async with key_handler(store, tmp_path, key_recheck=60.0) as handler:
        s = session()
        assert (await handler.on_mail(s, f"a@{DOMAIN}", {})).code == 250  # first read, at t
        await store.set_api_key_hash(DID, "a-new-hash")
        assert (await handler.on_mail(s, f"a@{DOMAIN}", {})).code == 250  # inside the window: not re-read
        s.mail_from, s.rcpts = f"a@{DOMAIN}", ["r@dest.example"]
        with pytest.raises(KeyRegenerated):
            await handler.on_message(s, MESSAGE)  # DATA re-reads it, window or not
        s.extra["key_checked"] -= 61.0  # the last read is now older than the window
        with pytest.raises(KeyRegenerated):
            await handler.on_mail(s, f"a@{DOMAIN}", {})  # the window is over: MAIL FROM re-reads it


@pytest.mark.trio
async def test_the_shared_pipeline_filters_suppressed_recipients_and_counts_only_what_it_spools(
    store: AsyncStore, sync_store: SqliteStore, tmp_path: Path
) -> None:
    """relay.accept.intake.admit, behind port 587 and /v1/send alike."""
    rep = Reputation(store, LimitsConfig(warming_tiers=((0, 5, 5),)), SuspensionConfig(), clock=trio_clock(T0 + 60))
    await rep.load()
    sync_store.add_suppression(DID, "gone@dest.example", "complaint (abuse)")
    async with trio.open_nursery() as nursery:
        spool = Spool(tmp_path / "spool")
        await nursery.start(spool.run)
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        acceptor = Acceptor(spool, writer)
        built: list[tuple[list[str], list[str]]] = []

        async def build(accepted: list[str], suppressed: list[str]) -> tuple[bytes, dict[str, str]]:
            built.append((accepted, suppressed))
            return MESSAGE, {"source": "test"}

        async def too_large(accepted: list[str], suppressed: list[str]) -> tuple[bytes, dict[str, str]]:
            raise PayloadTooLarge("too large")

        async def run(rcpts: list[str], *, transactional: bool = False, make: Build = build) -> Admission:
            return await admit(store, acceptor, rep, PRINCIPAL, mail_from=f"a@{DOMAIN}", sender_domain=DOMAIN,
                               rcpts=rcpts, transactional=transactional, build=make)

        news = await run(["gone@dest.example", "here@dest.example"])
        assert (news.accepted, news.suppressed, len(news.ids)) == (["here@dest.example"], ["gone@dest.example"], 1)
        assert news.headers["RateLimit-Remaining"] == "4"
        reset = await run(["gone@dest.example"], transactional=True)  # a password reset still goes out
        assert (reset.accepted, reset.suppressed, len(reset.ids)) == (["gone@dest.example"], [], 1)
        assert built == [(["here@dest.example"], ["gone@dest.example"]), (["gone@dest.example"], [])]
        nothing = await run(["gone@dest.example"])  # nothing spooled, nothing counted, nothing built
        assert (nothing.accepted, nothing.ids, len(built)) == ([], (), 2)
        assert nothing.headers["RateLimit-Remaining"] == "3"
        with pytest.raises(PayloadTooLarge):  # the message's own errors come before any counting
            await run(["here@dest.example"], make=too_large)
        assert (await rep.limiter.headers(DID, DOMAIN))["RateLimit-Remaining"] == "3"
        nursery.cancel_scope.cancel()
