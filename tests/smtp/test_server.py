"""The Trio server over real loopback sockets, with stdlib smtplib and swaks as clients."""

from __future__ import annotations

import base64
import contextlib
import logging
import smtplib
import ssl
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import pytest
import trio
import trio.testing

from relay.smtp.limits import Limits
from relay.smtp.reply import Reply
from relay.smtp.server import BufferBudget, SmtpServer, SmtpServerConfig
from tests.peers.require import require
from tests.smtp.server_support import PASSWORD, USER, RawClient, RecordingHandler, start

T = TypeVar("T")
Contexts = tuple[ssl.SSLContext, ssl.SSLContext]
MESSAGE = b"Subject: hello\r\n\r\n.leading dot\r\n..two dots\r\nbye\r\n"


def submission(tls: Contexts, **kwargs: object) -> SmtpServerConfig:
    return SmtpServerConfig(hostname="relay.test", ssl_context=tls[0], require_auth=True, **kwargs)  # type: ignore[arg-type]


def plain_config(**kwargs: object) -> SmtpServerConfig:
    return SmtpServerConfig(hostname="relay.test", require_tls_for_auth=False, **kwargs)  # type: ignore[arg-type]


def b64plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    return await trio.to_thread.run_sync(partial(fn, *args))


# ---- smtplib: STARTTLS + AUTH -----------------------------------------------------------


def send_with_plain(port: int, ctx: ssl.SSLContext) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as smtp:
        smtp.starttls(context=ctx)
        smtp.login(USER, PASSWORD)  # smtplib picks PLAIN
        return smtp.sendmail("a@example.com", ["b@example.org", "c@example.org"], MESSAGE)


def send_with_login(port: int, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=ctx)
        smtp.ehlo()
        smtp.user, smtp.password = USER, PASSWORD
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235
        smtp.sendmail("a@example.com", ["b@example.org"], MESSAGE)
        return smtp.noop()


@pytest.mark.trio
async def test_starttls_auth_plain_and_send(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, (_, port) = await start(nursery, submission(tls), handler)
        refused = await in_thread(send_with_plain, port, tls[1])
        await server.shutdown(grace=1)
    assert refused == {}
    (stored,) = handler.messages
    assert stored.did == USER
    assert stored.mail_from == "a@example.com"
    assert stored.rcpts == ["b@example.org", "c@example.org"]
    assert stored.data == MESSAGE  # smtplib stuffed the dots, the server unstuffed them


@pytest.mark.trio
async def test_starttls_auth_login_two_steps(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, (_, port) = await start(nursery, submission(tls), handler)
        assert (await in_thread(send_with_login, port, tls[1]))[0] == 250
        await server.shutdown(grace=1)
    assert len(handler.messages) == 1 and handler.messages[0].did == USER


def auth_before_tls(port: int) -> tuple[tuple[int, bytes], tuple[int, bytes], bool]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        offered = smtp.has_extn("auth")
        auth = smtp.docmd("AUTH", "PLAIN " + b64plain(USER, PASSWORD).decode())
        mail = smtp.docmd("MAIL", "FROM:<a@example.com>")
        return auth, mail, offered


@pytest.mark.trio
async def test_530_before_starttls(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, (_, port) = await start(nursery, submission(tls), handler)
        auth, mail, offered = await in_thread(auth_before_tls, port)
        await server.shutdown(grace=1)
    assert not offered
    assert auth == (530, b"5.7.0 must issue STARTTLS first")
    assert mail == (530, b"5.7.0 authentication required")


def bad_login(port: int, ctx: ssl.SSLContext) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=ctx)
        try:
            smtp.login(USER, "wrong")
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
        return 0


@pytest.mark.trio
async def test_535_bad_password(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, (_, port) = await start(nursery, submission(tls), handler)
        assert await in_thread(bad_login, port, tls[1]) == 535
        await server.shutdown(grace=1)


def oversized(port: int) -> tuple[int, tuple[int, bytes]]:
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 30
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        try:
            smtp.sendmail("a@example.com", ["b@example.org"], big)  # declares SIZE=
        except smtplib.SMTPSenderRefused as exc:
            at_mail = exc.smtp_code
        smtp.rset()
        smtp.mail("a@example.com")  # no SIZE: only the final dot can tell
        smtp.rcpt("b@example.org")
        return at_mail, smtp.data(big)


@pytest.mark.trio
async def test_552_size_at_mail_and_after_final_dot(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, (_, port) = await start(nursery, plain_config(limits=Limits(max_message_size=1000)), handler)
        at_mail, after_dot = await in_thread(oversized, port)
        await server.shutdown(grace=1)
    assert at_mail == 552
    assert after_dot == (552, b"5.3.4 message exceeds fixed maximum message size")
    assert handler.messages == []


# ---- raw clients ------------------------------------------------------------------------


async def greeted(address: tuple[str, int]) -> RawClient:
    client = await RawClient.connect(address)
    assert (await client.reply()).code == 220
    assert (await client.command(b"EHLO client.example")).code == 250
    return client


@pytest.mark.trio
async def test_pipelining(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(), handler)
        client = await RawClient.connect(address)
        await client.send(
            b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
            b"RCPT TO:<c@example.org>\r\nDATA\r\n"
        )
        codes = [(await client.reply()).code for _ in range(6)]
        assert codes == [220, 250, 250, 250, 250, 354]
        await client.send(b"Subject: x\r\n\r\nhello\r\n.\r\nMAIL FROM:<d@example.com>\r\nRSET\r\nQUIT\r\n")
        assert [(await client.reply()).code for _ in range(4)] == [250, 250, 250, 221]
        assert await client.at_eof()
        await client.aclose()
        await server.shutdown(grace=1)
    assert [m.rcpts for m in handler.messages] == [["b@example.org", "c@example.org"]]


class _Writes(trio.abc.Stream):
    """The server's side of an in-memory connection, keeping what each ``send_all`` wrote."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.trio
async def test_replies_to_a_pipelined_group_leave_in_one_write(handler: RecordingHandler) -> None:
    """RFC 2920 §3.1: the server may send the replies to a group together; one write is one syscall
    (and one TLS record) instead of one per command. The 250 after the final dot goes out at once."""
    from relay.smtp.server import handle_connection

    client, server_side = trio.testing.memory_stream_pair()
    server = _Writes(server_side)
    await client.send_all(
        b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
        b"RCPT TO:<c@example.org>\r\nDATA\r\n"
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, server, ("192.0.2.1", 1), plain_config(), handler)
        raw = RawClient(client)
        assert [(await raw.reply()).code for _ in range(6)] == [220, 250, 250, 250, 250, 354]
        await client.send_all(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert [(await raw.reply()).code for _ in range(2)] == [250, 221]
    greeting, group, queued, bye = server.writes
    assert greeting.startswith(b"220 ")
    # the EHLO reply (its last line "250 ..."), MAIL, two RCPT, DATA
    assert group.startswith(b"250-relay.test") and group.count(b"\r\n250 ") == 4 and group.endswith(b".<CR><LF>\r\n")
    assert queued.startswith(b"250 ") and bye.startswith(b"221 ")


@pytest.mark.trio
async def test_bare_lf_smuggling_stays_message_text(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(), handler)
        client = await greeted(address)
        await client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        assert [(await client.reply()).code for _ in range(3)] == [250, 250, 354]
        await client.send(
            b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<admin@victim.example>\r\n"
            b"RCPT TO:<x@victim.example>\r\nDATA\r\nforged\r\n.\r\nQUIT\r\n"
        )
        accepted = await client.reply()
        assert accepted.code == 250  # one message, ended by the real CRLF.CRLF
        assert (await client.reply()).code == 221  # the very next reply: nothing was smuggled
        await client.aclose()
        await server.shutdown(grace=1)
    assert [m.rcpts for m in handler.messages] == [["b@example.org"]]
    assert b"hello\r\n\r\nMAIL FROM:<admin@victim.example>\r\nRCPT TO" in handler.messages[0].data


@pytest.mark.trio
async def test_bare_cr_smuggling_is_rejected(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(), handler)
        client = await greeted(address)
        await client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        assert [(await client.reply()).code for _ in range(3)] == [250, 250, 354]
        await client.send(b"Subject: x\r\n\r\nhello\r.\rMAIL FROM:<admin@victim.example>\r\n.\r\nQUIT\r\n")
        rejected = await client.reply()
        assert (rejected.code, rejected.enhanced) == (550, "5.6.11")
        assert (await client.reply()).code == 221
        await client.aclose()
        await server.shutdown(grace=1)
    assert handler.messages == []


@pytest.mark.trio
async def test_starttls_plaintext_injection_is_rejected(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, submission(tls), handler)
        client = await greeted(address)
        reply = await client.command(b"STARTTLS\r\nMAIL FROM:<attacker@example.com>")
        assert (reply.code, reply.enhanced) == (554, "5.5.0")
        assert await client.at_eof()
        await client.aclose()
        await server.shutdown(grace=1)


@pytest.mark.trio
async def test_failed_tls_handshake_closes_quietly(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, submission(tls), handler)
        client = await greeted(address)
        assert (await client.command(b"STARTTLS")).code == 220
        await client.send(b"this is not a TLS ClientHello\r\n" * 4)
        assert await client.at_eof()
        await client.aclose()
        client = await greeted(address)  # and the server goes on
        await client.aclose()
        await server.shutdown(grace=1)


@pytest.mark.trio
async def test_handler_exception_gives_451_and_server_survives(
    handler: RecordingHandler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="relay.smtp")
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(), handler)
        client = await greeted(address)
        for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<boom@example.org>", b"DATA"):
            await client.command(line)
        reply = await client.command(b"Subject: x\r\n\r\nhi\r\n.")
        assert reply == Reply(451, "4.3.0", "local error, try again later")
        assert (await client.command(b"QUIT")).code == 221
        await client.aclose()
        client = await greeted(address)
        for line in (b"MAIL FROM:<a@example.com>", b"RCPT TO:<ok@example.org>", b"DATA"):
            await client.command(line)
        assert (await client.command(b"Subject: x\r\n\r\nhi\r\n.")).code == 250
        await client.aclose()
        await server.shutdown(grace=1)
    assert len(handler.messages) == 1
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.name == "relay.smtp" and "on_message" in record.getMessage()
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])


@pytest.mark.trio
async def test_relay_error_521_closes(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(), handler)
        client = await greeted(address)
        reply = await client.command(b"AUTH PLAIN " + b64plain("did:plc:suspended", "x"))
        assert (reply.code, reply.enhanced) == (521, "5.7.1")
        assert await client.at_eof()
        await client.aclose()
        await server.shutdown(grace=1)


@pytest.mark.trio
async def test_on_connect_refusal(handler: RecordingHandler) -> None:
    handler.greeting = Reply(554, "5.7.1", "no service for you")
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(), handler)
        client = await RawClient.connect(address)
        assert (await client.reply()).code == 554
        assert await client.at_eof()
        await client.aclose()
        await server.shutdown(grace=1)


@pytest.mark.trio
async def test_max_connections(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(max_connections=1), handler)
        first = await greeted(address)
        second = await RawClient.connect(address)
        reply = await second.reply()
        assert (reply.code, reply.enhanced) == (421, "4.7.0")
        assert await second.at_eof()
        await second.aclose()
        assert (await first.command(b"QUIT")).code == 221
        await first.aclose()
        with trio.fail_after(5):
            while server.active_sessions:  # noqa: ASYNC110 (a test polling a counter)
                await trio.sleep(0.01)
        third = await greeted(address)
        await third.aclose()
        await server.shutdown(grace=1)


@pytest.mark.trio
async def test_idle_session_gets_421_on_shutdown(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(), handler)
        client = await greeted(address)
        with trio.fail_after(5):
            await server.shutdown(grace=30)  # idle sessions do not wait for the grace period
        reply = await client.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert await client.at_eof()
        await client.aclose()
    with pytest.raises(OSError):
        await trio.open_tcp_stream(*address)  # the listener is closed


# ---- swaks, a second real client ----------------------------------------------------------


@pytest.mark.peer
@pytest.mark.trio
async def test_swaks_starttls_auth_plain(tls: Contexts, handler: RecordingHandler) -> None:
    swaks = require("swaks")
    async with trio.open_nursery() as nursery:
        server, (host, port) = await start(nursery, submission(tls), handler)
        argv = [
            swaks, "--server", host, "--port", str(port), "--tls",
            "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
            "--helo", "swaks.example", "--from", "a@example.com", "--to", "b@example.org",
            "--header", "Subject: via swaks", "--body", "hello from swaks\n.dot line",
        ]  # fmt: skip
        with trio.fail_after(20):
            result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        await server.shutdown(grace=1)
    assert result.returncode == 0, result.stdout.decode(errors="replace")
    (stored,) = handler.messages
    assert stored.did == USER and stored.rcpts == ["b@example.org"]
    assert b"Subject: via swaks" in stored.data and b"\r\n.dot line\r\n" in stored.data


# ---- budgets: connections per client address, relay-wide DATA buffers ------------------------


@pytest.mark.trio
async def test_connections_per_ip(handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, plain_config(max_connections_per_ip=2), handler)
        first, second = await greeted(address), await greeted(address)
        third = await RawClient.connect(address)
        reply = await third.reply()
        assert (reply.code, reply.enhanced) == (421, "4.7.0") and "from your address" in reply.text
        assert await third.at_eof()
        await third.aclose()
        assert (await second.command(b"NOOP")).code == 250  # the others are still served
        assert (await first.command(b"QUIT")).code == 221
        await first.aclose()
        with trio.fail_after(5):
            while server.active_sessions > 1:  # noqa: ASYNC110 (a test polling a counter)
                await trio.sleep(0.01)
        fourth = await greeted(address)  # a slot came free
        for client in (second, fourth):
            await client.aclose()
        await server.shutdown(grace=1)


@pytest.mark.trio
async def test_data_buffers_are_capped_relay_wide(handler: RecordingHandler) -> None:
    budget = BufferBudget(100_000)
    async with trio.open_nursery() as nursery:
        server = SmtpServer(plain_config(), handler, buffers=budget)
        address = (await nursery.start(server.serve))[0]
        first, second = await greeted(address), await greeted(address)
        for client in (first, second):
            assert (await client.command(b"MAIL FROM:<a@example.com>")).code == 250
            assert (await client.command(b"RCPT TO:<b@example.org>")).code == 250
            assert (await client.command(b"DATA")).code == 354
        line = b"x" * 998 + b"\r\n"
        # 120 kB held: over the budget, in DATA. The server closes as soon as it holds too much, so
        # the end of this write may meet a closed socket (whether it does depends on scheduling and
        # socket buffers); the 421 was written before the close and is read below either way.
        with contextlib.suppress(trio.BrokenResourceError):
            await first.send(line * 120)
        reply = await first.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.1")
        assert await first.at_eof()
        with trio.fail_after(30):  # a deadline only for a hang: generous on a loaded machine
            while budget.used:  # noqa: ASYNC110 (the closed session gives its share back)
                await trio.sleep(0.01)
        await second.send(line * 50 + b".\r\n")  # within the budget: delivered
        assert (await second.reply()).code == 250
        assert budget.used == 0 and len(handler.messages) == 1
        third = await greeted(address)
        budget.used = budget.limit  # spent (by other sessions): DATA itself is refused
        assert (await third.command(b"MAIL FROM:<a@example.com>")).code == 250
        assert (await third.command(b"RCPT TO:<b@example.org>")).code == 250
        reply = await third.command(b"DATA")
        assert (reply.code, reply.enhanced) == (451, "4.3.1")
        budget.used = 0
        assert (await third.command(b"QUIT")).code == 221
        for client in (first, second, third):
            await client.aclose()
        await server.shutdown(grace=1)

# ---- implicit TLS (RFC 8314 §3.3) and refusal counting --------------------------------------


class Refusals:
    def __init__(self) -> None:
        self.counted: list[tuple[str, str]] = []

    def observe_refusal(self, listener: str, reason: str) -> None:
        self.counted.append((listener, reason))


def send_over_implicit_tls(port: int, ctx: ssl.SSLContext) -> tuple[bool, str]:
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=10) as smtp:
        smtp.ehlo("client.example")
        offered_starttls = smtp.has_extn("starttls")
        smtp.login(USER, PASSWORD)
        smtp.sendmail("a@example.com", ["b@example.org"], MESSAGE)
        return offered_starttls, smtp.esmtp_features.get("auth", "")


@pytest.mark.trio
async def test_implicit_tls_greets_only_after_the_handshake(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, (_, port) = await start(nursery, submission(tls, implicit_tls=True, name="submissions"), handler)
        offered_starttls, auth = await in_thread(send_over_implicit_tls, port, tls[1])
        await server.shutdown(grace=1)
    assert not offered_starttls and "PLAIN" in auth  # already TLS: no STARTTLS, AUTH at once
    (stored,) = handler.messages
    assert stored.did == USER and stored.data == MESSAGE


@pytest.mark.trio
async def test_implicit_tls_plaintext_client_gets_no_banner(tls: Contexts, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        server, address = await start(nursery, submission(tls, implicit_tls=True), handler)
        client = await RawClient.connect(address)
        await client.send(b"EHLO plain.example\r\n")
        assert await client.at_eof()  # the handshake failed on our bytes: closed, no SMTP reply ever
        await client.aclose()
        await server.shutdown(grace=1)
    assert handler.messages == []


@pytest.mark.trio
async def test_refusals_are_counted_by_listener_and_reason(handler: RecordingHandler,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    refusals = Refusals()
    caplog.set_level(logging.INFO, logger="relay.smtp")
    async with trio.open_nursery() as nursery:
        server = SmtpServer(plain_config(name="inbound"), handler, refusals=refusals)
        (address,) = await nursery.start(server.serve)
        client = await RawClient.connect(address)
        assert (await client.reply()).code == 220
        await client.send(b"MAIL FROM:<a@example.com>\r\n")  # before EHLO
        assert (await client.reply()).code == 503
        await client.send(b"EHLO c.example\r\nAUTH PLAIN " + b64plain(USER, "wrong") + b"\r\nQUIT\r\n")
        assert [(await client.reply()).code for _ in range(3)] == [250, 535, 221]
        await client.aclose()
        await server.shutdown(grace=1)
    assert refusals.counted == [("inbound", "bad_sequence"), ("inbound", "auth_failed")]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert lines[0].startswith("refused protocolerror on inbound from 127.0.0.1 did=-: 503 5.5.1")
    assert lines[1].startswith("refused credentials on inbound from 127.0.0.1 did=-: 535 5.7.8")
    assert len(lines) == 2  # once each
