"""Outbound delivery over real loopback sockets: Postfix smtp-sink as the recipient MTA, our CaptureSink
(with a trustme certificate) where STARTTLS is needed, and scripted Trio servers for broken peers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from relay.delivery.client import ConnectionPool, DeliveryResult, PoolKey, deliver
from relay.delivery.sink import CaptureSink
from relay.smtp.client import (
    ClientTimeouts,
    SmtpClient,
    SmtpConnectError,
    SmtpProtocolError,
    SmtpReplyError,
    SmtpTimeout,
    SmtpTlsError,
    TlsPolicy,
    open_smtp,
)
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply
from tests.peers.smtpsink import SmtpSink, smtp_sink_fixture  # noqa: F401

SinkFactory = Callable[..., SmtpSink]
HELO = "relay.test"
FROM = "bounces+abc@relay.test"
MESSAGE = b"From: a@relay.test\r\nSubject: hello\r\n\r\n.leading dot\r\nbody\r\n"
FAST = ClientTimeouts(
    connect=2, greeting=2, helo=2, starttls=2, mail=2, rcpt=2, data_init=2, data_block=2, data_final=2, rset=2, quit=2
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@asynccontextmanager
async def capture_sink(tmp_path: Path, **kwargs: object) -> AsyncIterator[tuple[CaptureSink, int]]:
    sink = CaptureSink(tmp_path / "captured", hostname="sink.test", **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(sink.serve)
        yield sink, port
        await sink.shutdown(grace=1)


async def send(
    port: int,
    rcpts: Sequence[str] = ("a@dest.test",),
    *,
    addresses: Sequence[str] = ("127.0.0.1",),
    mx: str = "sink.test",
    data: bytes = MESSAGE,
    **kwargs: Any,
) -> DeliveryResult:
    """``deliver`` with this module's defaults."""
    kwargs.setdefault("timeouts", FAST)
    return await deliver(list(addresses), port, mx, mail_from=FROM, rcpts=rcpts, data=data, helo_name=HELO, **kwargs)


async def connect(port: int, **kwargs: Any) -> SmtpClient:
    """``open_smtp`` to 127.0.0.1 with this module's defaults."""
    kwargs.setdefault("timeouts", FAST)
    return await open_smtp("127.0.0.1", port, helo_name=HELO, **kwargs)


def closed_port() -> int:
    """A port with nothing listening (bound and closed at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---- a scripted server for peers that misbehave -----------------------------------------------


class Peer:
    """One side of a scripted SMTP session on a real socket: reads lines, writes replies."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.reads: list[bytes] = []  # what each receive returned (one write of the client arrives as one)

    async def line(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.reads.append(data)
            self.buf += data
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line

    async def say(self, text: bytes) -> None:
        await self.stream.send_all(text)

    async def until_dot(self) -> None:
        while await self.line() != b".\r\n":
            pass


Script = Callable[[Peer, int], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[tuple[int, list[int]]]:
    """Runs ``script(peer, n)`` for the n-th connection (from 0); yields (port, connection numbers)."""
    seen: list[int] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        n = len(seen)
        seen.append(n)
        try:
            await script(Peer(stream), n)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield port, seen
        nursery.cancel_scope.cancel()


async def simple_session(peer: Peer, *, starttls: bool = False, pipelining: bool = False,
                         messages: int | None = None) -> None:
    """A minimal receiver that accepts everything; after ``messages`` messages it closes the connection
    when the next command arrives, without a word (as a server whose idle timer just fired)."""
    await peer.say(b"220 fake.test ESMTP\r\n")
    while True:
        cmd = (await peer.line()).upper()
        if messages is not None and messages <= 0:
            return
        if cmd.startswith(b"EHLO"):
            await peer.say(b"250-fake.test\r\n" + (b"250-STARTTLS\r\n" if starttls else b"")
                           + (b"250-PIPELINING\r\n" if pipelining else b"") + b"250 8BITMIME\r\n")
        elif cmd.startswith(b"DATA"):
            await peer.say(b"354 go ahead\r\n")
            await peer.until_dot()
            await peer.say(b"250 2.0.0 queued\r\n")
            messages = None if messages is None else messages - 1
        elif cmd.startswith(b"QUIT"):
            await peer.say(b"221 2.0.0 bye\r\n")
            return
        else:
            await peer.say(b"250 2.0.0 ok\r\n")


# ---- against Postfix smtp-sink ----------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.trio
async def test_deliver_to_smtp_sink(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink()
    data = MESSAGE + "caf\u00e9\r\n".encode()  # 8-bit: BODY=8BITMIME, smtp-sink offers it
    result = await send(sink.port, ["a@dest.test", "b@dest.test"], addresses=[sink.host], data=data)
    assert result.connection_error is None
    assert set(result.per_rcpt) == {"a@dest.test", "b@dest.test"}
    assert all(r.code == 250 for r in result.per_rcpt.values()), result.per_rcpt
    assert result.tls is False and result.address == sink.host and result.mx_host == "sink.test"
    sink.wait_counters(mesg=1, quit=1, sess=1)
    [got] = sink.messages()
    assert (got.mail_from, got.rcpts, got.helo) == (FROM, ("a@dest.test", "b@dest.test"), HELO)
    assert "BODY=8BITMIME" in got.mail_args
    assert got.data == data.replace(b"\r\n", b"\n")  # the leading dot came through unstuffed


@pytest.mark.peer
@pytest.mark.trio
@pytest.mark.parametrize("flags", [(), ("-p",)], ids=["pipelined", "lockstep"])
async def test_connection_reuse(smtp_sink: SinkFactory, flags: tuple[str, ...]) -> None:
    sink = smtp_sink(*flags)
    pool = ConnectionPool()
    results = []
    for n in range(3):
        results.append(await send(sink.port, [f"r{n}@dest.test"], addresses=[sink.host], pool=pool))
    assert [r.per_rcpt[f"r{n}@dest.test"].code for n, r in enumerate(results)] == [250, 250, 250]
    assert [r.reused for r in results] == [False, True, True]
    assert pool.idle(PoolKey(sink.host, sink.port, TlsPolicy.OPPORTUNISTIC)) == 1
    await pool.aclose()
    assert pool.idle() == 0
    # One session, one QUIT (from aclose), three messages.
    assert sink.wait_counters(sess=1, quit=1, mesg=3) == {"sess": 1, "quit": 1, "mesg": 3}
    assert sorted(m.rcpts for m in sink.messages()) == [("r0@dest.test",), ("r1@dest.test",), ("r2@dest.test",)]


@pytest.mark.peer
@pytest.mark.trio
@pytest.mark.parametrize(
    ("flags", "code", "enhanced"),
    [(("-r", "rcpt"), 450, "4.3.0"), (("-f", "rcpt"), 500, "5.3.0")],
    ids=["4xx", "5xx"],
)
async def test_smtp_sink_refuses_every_rcpt(
    smtp_sink: SinkFactory, flags: tuple[str, ...], code: int, enhanced: str
) -> None:
    sink = smtp_sink(*flags)
    pool = ConnectionPool()
    result = await send(sink.port, ["a@dest.test", "b@dest.test"], addresses=[sink.host], pool=pool)
    assert result.connection_error is None
    assert {r: (rep.code, rep.enhanced) for r, rep in result.per_rcpt.items()} == {
        "a@dest.test": (code, enhanced),
        "b@dest.test": (code, enhanced),
    }
    assert result.per_rcpt["a@dest.test"].text == "Error: command failed"  # verbatim
    # The transaction was reset, so the connection went back to the pool.
    assert pool.idle() == 1
    await pool.aclose()
    assert sink.wait_counters(sess=1, mesg=0)["mesg"] == 0


@pytest.mark.peer
@pytest.mark.trio
async def test_helo_fallback_against_smtp_sink(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("-e")  # no ESMTP: EHLO gets 500 5.5.1
    client = await connect(sink.port, tls_server_name="sink.test")
    async with client:
        assert client.extensions.keywords == {}
        result = await client.send_message(FROM, ["a@dest.test"], MESSAGE + b"caf\xc3\xa9\r\n")
        assert result.data is not None and result.data.code == 250
    sink.wait_counters(mesg=1)
    [got] = sink.messages()
    assert got.mail_args == f"<{FROM}>"  # no SIZE, no BODY=8BITMIME to a plain SMTP server


@pytest.mark.peer
@pytest.mark.trio
async def test_smtputf8_needed_but_not_offered(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink()
    result = await send(sink.port, ["jörg@dest.test"], addresses=[sink.host])
    reply = result.per_rcpt["j\u00f6rg@dest.test"]
    assert (reply.code, reply.enhanced) == (553, "5.6.7")  # RFC 6531 §3.4: permanent
    assert sink.wait_counters(sess=1)["mesg"] == 0


@pytest.mark.peer
@pytest.mark.trio
async def test_421_on_rcpt_closes(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("-Q", "rcpt")
    pool = ConnectionPool()
    result = await send(sink.port, ["a@dest.test", "b@dest.test"], addresses=[sink.host], pool=pool)
    assert {r: rep.code for r, rep in result.per_rcpt.items()} == {"a@dest.test": 421, "b@dest.test": 421}
    assert pool.idle() == 0  # a closed connection is not pooled


@pytest.mark.peer
@pytest.mark.trio
async def test_disconnect_after_data(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("-q", "data")
    result = await send(sink.port, addresses=[sink.host])
    assert result.per_rcpt == {}
    assert result.connection_error is not None
    assert "lost connection with sink.test[127.0.0.1]" in result.connection_error
    assert "DATA" in result.connection_error


@pytest.mark.peer
@pytest.mark.trio
async def test_verify_policy_without_starttls_offered(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink()
    with pytest.raises(SmtpTlsError) as info:
        await connect(sink.port, tls=TlsPolicy.VERIFY, tls_server_name="sink.test")
    assert info.value.temporary and info.value.reply.enhanced == "4.7.4"
    assert "not offered" in info.value.text


# ---- per-recipient replies and TLS, against our CaptureSink -----------------------------------


@pytest.mark.trio
async def test_mixed_recipient_replies(tmp_path: Path) -> None:
    async with capture_sink(tmp_path) as (sink, port):
        rcpts = ["temp-fail-1@dest.test", "reject-me@dest.test", "ok@dest.test", "also-ok@dest.test"]
        result = await send(port, rcpts, tls_policy=TlsPolicy.NONE)
    assert result.connection_error is None
    got = {r: (rep.code, rep.enhanced) for r, rep in result.per_rcpt.items()}
    assert got == {
        "temp-fail-1@dest.test": (451, "4.3.0"),
        "reject-me@dest.test": (550, "5.1.1"),
        "ok@dest.test": (250, "2.0.0"),
        "also-ok@dest.test": (250, "2.0.0"),
    }
    assert result.per_rcpt["reject-me@dest.test"].text == "user unknown (capture sink)"
    [message] = sink.messages()
    assert message.rcpts == ("ok@dest.test", "also-ok@dest.test")


@pytest.mark.trio
async def test_tls_offered(tmp_path: Path, server_tls: ssl.SSLContext) -> None:
    async with capture_sink(tmp_path, ssl_context=server_tls) as (sink, port):
        result = await send(port, mx="mx.dest.test")
        assert result.per_rcpt["a@dest.test"].code == 250
        assert result.tls is True and result.tls_version in ("TLSv1.2", "TLSv1.3") and result.tls_cipher
        assert sink.tls_messages == 1
        none = await send(port, mx="mx.dest.test", tls_policy=TlsPolicy.NONE)
        assert none.tls is False and none.per_rcpt["a@dest.test"].code == 250


@pytest.mark.trio
async def test_verify_policy(tmp_path: Path, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    async with capture_sink(tmp_path, ssl_context=server_tls) as (sink, port):
        ok = await send(port, mx="localhost", tls_policy=TlsPolicy.VERIFY, ssl_context=client_tls)
        assert ok.tls is True and ok.per_rcpt["a@dest.test"].code == 250
        with pytest.raises(SmtpTlsError) as info:
            await connect(port, tls=TlsPolicy.VERIFY, tls_server_name="mx.wrong.test", ssl_context=client_tls)
        assert info.value.temporary and "mx.wrong.test" in info.value.text
        bad = await send(port, mx="mx.wrong.test", tls_policy=TlsPolicy.VERIFY, ssl_context=client_tls)
        assert bad.per_rcpt == {} and bad.tls is False
        assert bad.connection_error is not None and "certificate" in bad.connection_error.lower()
        # The system trust store does not know the test CA either.
        with pytest.raises(SmtpTlsError):
            await connect(port, tls=TlsPolicy.VERIFY, tls_server_name="localhost")
        assert len(sink.messages()) == 1


@pytest.mark.trio
async def test_tls_handshake_failure_retried_in_clear() -> None:
    async def script(peer: Peer, n: int) -> None:
        if n == 0:
            await peer.say(b"220 fake.test ESMTP\r\n")
            await peer.line()
            await peer.say(b"250-fake.test\r\n250 STARTTLS\r\n")
            assert (await peer.line()).upper() == b"STARTTLS\r\n"
            await peer.say(b"220 go ahead\r\n")
            await peer.stream.receive_some(65536)  # the ClientHello
            await peer.say(b"this is not a TLS server hello\r\n" * 10)
            return
        await simple_session(peer, starttls=True)

    async with scripted_server(script) as (port, seen):
        client = await connect(port, tls=TlsPolicy.OPPORTUNISTIC, tls_server_name="fake.test")
        async with client:
            assert client.tls_fallback and not client.tls_active and client.extensions.starttls
            result = await client.send_message(FROM, ["a@dest.test"], MESSAGE)
            assert result.replies() == {"a@dest.test": Reply(250, "2.0.0", "queued")}
        assert seen == [0, 1]  # the same host, once more


@pytest.mark.trio
async def test_starttls_response_injection() -> None:
    """Clear-text replies queued behind the 220 to STARTTLS are refused, not read as if under TLS."""

    async def script(peer: Peer, n: int) -> None:
        await peer.say(b"220 fake.test ESMTP\r\n")
        await peer.line()
        await peer.say(b"250-fake.test\r\n250 STARTTLS\r\n")
        await peer.line()
        await peer.say(b"220 go ahead\r\n250-fake.test\r\n250 AUTH PLAIN\r\n")  # one write
        await trio.sleep_forever()

    async with scripted_server(script) as (port, seen):
        with pytest.raises(SmtpProtocolError, match="after the 220"):
            await connect(port)
        assert seen == [0]


@pytest.mark.trio
async def test_size_over_advertised_limit_refused_locally(tmp_path: Path) -> None:
    async with capture_sink(tmp_path, limits=Limits(max_message_size=100)) as (sink, port):
        result = await send(port, data=MESSAGE * 5)
        reply = result.per_rcpt["a@dest.test"]
        assert (reply.code, reply.enhanced) == (552, "5.3.4") and "100" in reply.text
        small = await send(port, data=b"Subject: s\r\n\r\nx\r\n")
        assert small.per_rcpt["a@dest.test"].code == 250
        assert len(sink.messages()) == 1


# ---- connection failures and timeouts ---------------------------------------------------------


@pytest.mark.trio
async def test_connection_refused() -> None:
    port = closed_port()
    with pytest.raises(SmtpConnectError) as info:
        await connect(port, tls=TlsPolicy.OPPORTUNISTIC, tls_server_name="mx.dest.test")
    assert info.value.temporary and info.value.reply.enhanced == "4.4.1"
    assert info.value.text.startswith(f"connect to mx.dest.test[127.0.0.1]:{port}: ")
    result = await send(port, mx="mx.dest.test")
    assert result.per_rcpt == {} and result.connection_error == info.value.text
    assert result.connection_reply is None


@pytest.mark.trio
async def test_next_address_after_connection_failure(tmp_path: Path) -> None:
    async with capture_sink(tmp_path) as (_, port):
        # 127.0.0.2 is loopback too, but nothing listens there on this port.
        result = await send(port, addresses=["127.0.0.2", "127.0.0.1"])
    assert result.address == "127.0.0.1" and result.per_rcpt["a@dest.test"].code == 250


@pytest.mark.trio
async def test_timeout_waiting_for_final_reply() -> None:
    async def script(peer: Peer, n: int) -> None:
        await peer.say(b"220 fake.test ESMTP\r\n")
        while not (line := (await peer.line()).upper()).startswith(b"DATA"):
            await peer.say(b"550 5.1.1 no such user\r\n" if b"REJECT" in line else b"250 ok\r\n")
        await peer.say(b"354 go ahead\r\n")
        await trio.sleep_forever()  # never reads the message, never answers

    timeouts = ClientTimeouts(greeting=2, helo=2, mail=2, rcpt=2, data_init=2, data_block=2, data_final=0.5)
    async with scripted_server(script) as (port, _):
        with trio.fail_after(5):
            result = await send(port, ["reject@dest.test", "a@dest.test"], mx="fake.test", timeouts=timeouts)
    # The refused recipient is settled by its RCPT reply; the other one is left for a retry.
    assert result.per_rcpt == {"reject@dest.test": Reply(550, "5.1.1", "no such user")}
    assert result.connection_error == (
        f"conversation with fake.test[127.0.0.1]:{port} timed out while sending end of data -- "
        "message may be sent more than once"
    )


@pytest.mark.trio
async def test_timeout_writing_the_message() -> None:
    async def script(peer: Peer, n: int) -> None:
        await peer.say(b"220 fake.test ESMTP\r\n")
        while not (await peer.line()).upper().startswith(b"DATA"):
            await peer.say(b"250 ok\r\n")
        await peer.say(b"354 go ahead\r\n")
        await trio.sleep_forever()

    timeouts = ClientTimeouts(greeting=2, helo=2, mail=2, rcpt=2, data_init=2, data_block=0.5, data_final=5)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 40_000  # 40 MB: more than the socket buffers hold
    async with scripted_server(script) as (port, _):
        client = await connect(port, timeouts=timeouts, tls=TlsPolicy.NONE)
        with trio.fail_after(5), pytest.raises(SmtpTimeout) as info:
            await client.send_message(FROM, ["a@dest.test"], big)
    assert "timed out while sending message body" in info.value.text
    assert info.value.temporary and info.value.reply.enhanced == "4.4.2"
    assert not client.usable


@pytest.mark.trio
async def test_greeting_timeout_and_refusal() -> None:
    async def script(peer: Peer, n: int) -> None:
        if n == 0:
            await trio.sleep_forever()  # no greeting
        await peer.say(b"554 5.7.1 no service for you\r\n")
        assert (await peer.line()).upper() == b"QUIT\r\n"  # §3.1: the client says QUIT
        await peer.say(b"221 bye\r\n")

    async with scripted_server(script) as (port, _):
        with pytest.raises(SmtpTimeout, match="receiving the initial server greeting"):
            await connect(port, timeouts=ClientTimeouts(greeting=0.3))
        result = await send(port, mx="fake.test")
    assert result.per_rcpt == {}
    assert result.connection_reply == Reply(554, "5.7.1", "no service for you")
    assert (
        result.connection_error
        == f"host fake.test[127.0.0.1]:{port} refused to talk to me: 554 5.7.1 no service for you"
    )


@pytest.mark.trio
async def test_garbage_reply_is_a_protocol_error() -> None:
    async def script(peer: Peer, n: int) -> None:
        await peer.say(b"220 fake.test ESMTP\r\n")
        await peer.line()
        await peer.say(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    async with scripted_server(script) as (port, _):
        with pytest.raises(SmtpProtocolError) as info:
            await connect(port)
    assert info.value.temporary and "malformed reply" in info.value.text


@pytest.mark.trio
async def test_ehlo_refused_temporarily() -> None:
    async def script(peer: Peer, n: int) -> None:
        await peer.say(b"220 fake.test ESMTP\r\n")
        await peer.line()
        await peer.say(b"421 4.7.0 too busy\r\n")

    async with scripted_server(script) as (port, _):
        with pytest.raises(SmtpReplyError) as info:
            await connect(port)
    assert info.value.temporary and info.value.reply == Reply(421, "4.7.0", "too busy")


# ---- the pool ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_pool_drops_dead_connections(tmp_path: Path) -> None:
    pool = ConnectionPool()
    async with capture_sink(tmp_path) as (_, port):
        first = await send(port, pool=pool)
        key = PoolKey("127.0.0.1", port, TlsPolicy.OPPORTUNISTIC)
        assert first.per_rcpt["a@dest.test"].code == 250 and pool.idle(key) == 1
    # The sink shut down: its idle session got 421 and was closed.
    assert await pool.acquire(key) is None
    assert pool.idle() == 0


@pytest.mark.trio
async def test_reuse_check_rides_in_the_transactions_write() -> None:
    """RFC 2920 §3.1: on a reused connection the RSET goes in one write with MAIL, RCPT and DATA."""
    peers: list[Peer] = []

    async def script(peer: Peer, n: int) -> None:
        peers.append(peer)
        await simple_session(peer, pipelining=True)

    pool = ConnectionPool()
    async with scripted_server(script) as (port, seen):
        first = await send(port, pool=pool)
        second = await send(port, ["b@dest.test"], pool=pool)
        await pool.aclose()
    assert (first.reused, second.reused, seen) == (False, True, [0])
    assert second.per_rcpt == {"b@dest.test": Reply(250, "2.0.0", "queued")}
    [peer] = peers
    group = b"RSET\r\nMAIL FROM:<%s>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n" % FROM.encode()
    assert group in peer.reads, peer.reads


@pytest.mark.trio
async def test_a_pooled_connection_closed_at_reuse_gives_way_to_a_new_one() -> None:
    """The server hangs up on the RSET ahead of the transaction: nothing was answered, so the message goes
    through a new connection at once (not a deferral)."""

    async def script(peer: Peer, n: int) -> None:
        await simple_session(peer, pipelining=True, messages=1 if n == 0 else None)

    pool = ConnectionPool()
    async with scripted_server(script) as (port, seen):
        first = await send(port, pool=pool)
        second = await send(port, ["b@dest.test"], pool=pool)
        await pool.aclose()
    assert first.per_rcpt["a@dest.test"].code == 250
    assert second.connection_error is None and second.per_rcpt == {"b@dest.test": Reply(250, "2.0.0", "queued")}
    assert (second.reused, seen) == (False, [0, 1])


@pytest.mark.trio
async def test_pool_limits(tmp_path: Path) -> None:
    async with capture_sink(tmp_path, replies={}) as (sink, port):
        pool = ConnectionPool(max_messages=2, idle_timeout=0.2)
        for _ in range(3):
            await send(port, pool=pool)
        # Messages 1-2 on the first connection (then retired at the limit), message 3 on a second one.
        assert sink.connections == 2 and pool.idle() == 1
        await trio.sleep(0.3)
        await pool.prune()  # idle past idle_timeout: QUIT
        assert pool.idle() == 0
        # max_idle_per_key: two connections in use at once, only one kept.
        pool = ConnectionPool(max_idle_per_key=1)
        key = PoolKey("127.0.0.1", port, TlsPolicy.NONE)
        a = await connect(port, tls=TlsPolicy.NONE)
        b = await connect(port, tls=TlsPolicy.NONE)
        await pool.release(key, a)
        await pool.release(key, b)
        assert pool.idle(key) == 1 and not b.usable
        assert await pool.acquire(key) is a and pool.idle() == 0
        await pool.release(key, a)
        await pool.aclose()
        assert not a.usable and pool.idle() == 0
