"""Timeouts and graceful shutdown, on in-memory streams under Trio's autojump clock."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import trio
import trio.testing

from relay.smtp.server import SmtpServer, SmtpServerConfig, handle_connection, serve_smtp
from tests.smtp.server_support import MemoryListener, RawClient, RecordingHandler

CONFIG = SmtpServerConfig(hostname="relay.test", require_tls_for_auth=False)
PEER = ("192.0.2.1", 4242)


async def greet(client: RawClient) -> None:
    assert (await client.reply()).code == 220
    assert (await client.command(b"EHLO client.example")).code == 250


async def open_transaction(client: RawClient) -> None:
    await greet(client)
    assert (await client.command(b"MAIL FROM:<a@example.com>")).code == 250
    assert (await client.command(b"RCPT TO:<b@example.org>")).code == 250


def direct(handler: RecordingHandler, nursery: trio.Nursery, config: SmtpServerConfig = CONFIG) -> RawClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(handle_connection, server_stream, PEER, config, handler)
    return RawClient(client_stream)


@pytest.mark.trio
async def test_command_timeout_421(autojump_clock: trio.abc.Clock, handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery)
        await open_transaction(client)  # past the gate: the RFC timeout, not gate_timeout
        start = trio.current_time()
        reply = await client.reply()
        assert (reply.code, reply.enhanced) == (421, "4.4.2")
        assert trio.current_time() - start == pytest.approx(300, abs=1)  # RFC 5321 §4.5.3.2.7
        assert await client.at_eof()


@pytest.mark.trio
async def test_data_block_timeout(autojump_clock: trio.abc.Clock, handler: RecordingHandler) -> None:
    config = SmtpServerConfig(hostname="relay.test", data_block_timeout=180, command_timeout=300)
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery, config)
        await open_transaction(client)
        assert (await client.command(b"DATA")).code == 354
        await client.send(b"Subject: slow\r\n")
        start = trio.current_time()
        assert (await client.reply()).code == 421
        assert trio.current_time() - start == pytest.approx(180, abs=1)  # §4.5.3.2.5
    assert handler.messages == []


@pytest.mark.trio
async def test_slow_handler_times_out_with_451(
    autojump_clock: trio.abc.Clock, handler: RecordingHandler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="relay.smtp")
    handler.message_delay = 10_000
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery)
        await open_transaction(client)
        assert (await client.command(b"DATA")).code == 354
        start = trio.current_time()
        reply = await client.command(b"hi\r\n.")
        assert (reply.code, reply.enhanced) == (451, "4.3.0")
        assert trio.current_time() - start == pytest.approx(600, abs=1)  # §4.5.3.2.6
        assert (await client.command(b"QUIT")).code == 221


@pytest.mark.trio
async def test_shutdown_lets_transactions_finish_then_421(
    autojump_clock: trio.abc.Clock, handler: RecordingHandler
) -> None:
    listener = MemoryListener()
    server = SmtpServer(CONFIG, handler)
    handler.message_delay = 3  # spooling takes a while
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        busy, idle = await listener.connect(), await listener.connect()
        await open_transaction(busy)
        await greet(idle)
        start = trio.current_time()
        nursery.start_soon(server.shutdown, 10)
        reply = await idle.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert trio.current_time() == start  # idle: at once
        assert await idle.at_eof()
        assert (await busy.command(b"DATA")).code == 354
        assert (await busy.command(b"Subject: last one\r\n\r\nhi\r\n.")).code == 250
        reply = await busy.reply()  # idle again: now it is told
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert await busy.at_eof()
        assert trio.current_time() - start < 10
    assert len(handler.messages) == 1


@pytest.mark.trio
async def test_shutdown_cancels_stragglers_after_grace(
    autojump_clock: trio.abc.Clock, handler: RecordingHandler
) -> None:
    listener = MemoryListener()
    server = SmtpServer(CONFIG, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        stalled = await listener.connect()
        await open_transaction(stalled)
        assert (await stalled.command(b"DATA")).code == 354
        await stalled.send(b"Subject: never finished\r\n")
        start = trio.current_time()
        await server.shutdown(grace=10)
        assert trio.current_time() - start == pytest.approx(10, abs=0.5)
        reply = await stalled.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert await stalled.at_eof()
        assert server.active_sessions == 0
    assert handler.messages == []


@pytest.mark.trio
async def test_serve_smtp_with_shutdown_event(handler: RecordingHandler) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(partial(serve_smtp, CONFIG, handler, shutdown=stop))
        assert addresses and addresses[0][1] > 0
        client = await RawClient.connect(addresses[0])
        await greet(client)
        stop.set()
        assert (await client.reply()).code == 421
        await client.aclose()
    # leaving the nursery proves serve_smtp returned


# ---- budgets: gate (pre-AUTH / pre-MAIL) idle and time limits, session time ----------------


@pytest.mark.trio
async def test_idle_before_the_first_mail_is_gate_timeout(autojump_clock: trio.abc.Clock,
                                                          handler: RecordingHandler) -> None:
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery)
        await greet(client)
        start = trio.current_time()
        reply = await client.reply()
        assert (reply.code, reply.enhanced) == (421, "4.4.2")
        assert trio.current_time() - start == pytest.approx(CONFIG.gate_timeout, abs=1)
        assert await client.at_eof()


@pytest.mark.trio
async def test_noop_loop_before_auth_ends_at_gate_time(autojump_clock: trio.abc.Clock,
                                                       handler: RecordingHandler) -> None:
    config = SmtpServerConfig(hostname="relay.test", require_tls_for_auth=False, require_auth=True)
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery, config)
        await greet(client)
        start = trio.current_time()
        while True:  # a NOOP every 30 s never hits the idle limit; the gate time still ends it
            await trio.sleep(30)
            reply = await client.command(b"NOOP")
            if reply.code != 250:
                break
        assert (reply.code, reply.enhanced) == (421, "4.7.0") and "authentication required" in reply.text
        assert trio.current_time() - start == pytest.approx(config.gate_time, abs=31)
        assert await client.at_eof()


@pytest.mark.trio
async def test_authenticated_session_has_the_rfc_timeout(autojump_clock: trio.abc.Clock,
                                                         handler: RecordingHandler) -> None:
    config = SmtpServerConfig(hostname="relay.test", require_tls_for_auth=False, require_auth=True)
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery, config)
        await greet(client)
        assert (await client.command(b"AUTH PLAIN " + plain_b64())).code == 235
        start = trio.current_time()
        assert (await client.reply()).code == 421
        assert trio.current_time() - start == pytest.approx(config.command_timeout, abs=1)


@pytest.mark.trio
async def test_session_time_limit(autojump_clock: trio.abc.Clock, handler: RecordingHandler) -> None:
    config = SmtpServerConfig(hostname="relay.test", require_tls_for_auth=False, session_time=1000)
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery, config)
        await open_transaction(client)
        assert (await client.command(b"RSET")).code == 250
        start = trio.current_time()
        while True:
            await trio.sleep(100)
            reply = await client.command(b"MAIL FROM:<a@example.com>")
            if reply.code != 250:
                break
            assert (await client.command(b"RSET")).code == 250
        assert (reply.code, reply.enhanced) == (421, "4.4.2") and "session time" in reply.text
        assert trio.current_time() - start == pytest.approx(1000, abs=101)


def plain_b64() -> bytes:
    import base64

    from tests.smtp.server_support import PASSWORD, USER
    return base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())


@pytest.mark.trio
async def test_session_time_limit_inside_a_transaction(autojump_clock: trio.abc.Clock,
                                                       handler: RecordingHandler) -> None:
    config = SmtpServerConfig(hostname="relay.test", require_tls_for_auth=False, session_time=1000)
    async with trio.open_nursery() as nursery:
        client = direct(handler, nursery, config)
        await open_transaction(client)
        start = trio.current_time()
        while True:  # RCPTs forever in one open transaction (452 past the limit is not an error)
            await trio.sleep(100)
            reply = await client.command(b"RCPT TO:<b@example.org>")
            if reply.code == 421:
                break
        assert reply.enhanced == "4.4.2" and trio.current_time() - start == pytest.approx(1000, abs=101)
        assert await client.at_eof()
