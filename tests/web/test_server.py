"""web.server: one connection's fault ends that connection only; h2c is off; early websocket bytes.

The vectors are the ones that stopped the relay under plain ``hypercorn.trio.serve`` (upstream
pgjones/hypercorn issue 225): a websocket upgrade with bytes after the request head, and ``Upgrade:
h2c`` with an undecodable ``HTTP2-Settings``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer

from web.server import serve

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
FRAME = bytes([0x81, 0x85]) + b"abcd" + bytes(b ^ k for b, k in zip(b"hello", b"abcda", strict=True))


def ws_upgrade(path: bytes = b"/ws", extra: bytes = b"") -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Like the relay's Quart app: refuses a websocket without a token with an HTTP 401, else echoes."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await receive()  # websocket.connect
    if b"token=good" not in scope["query_string"]:
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"refused"})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def exchange(port: int, raw: bytes, *, read_until_close: bool = True) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        out = b""
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                out += chunk
                if not read_until_close:
                    break
        return out


async def get_ok(port: int) -> bytes:
    return await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


async def start(nursery: trio.Nursery, faults: Counter[str], **kw: Any) -> tuple[int, trio.Event]:
    cfg = HypercornConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.graceful_timeout = 1
    stop = trio.Event()
    binds = await nursery.start(lambda task_status: serve(app, cfg, stop, faults=faults, task_status=task_status,
                                                          **kw))
    return int(binds[0].rsplit(":", 1)[1]), stop


@pytest.mark.trio
async def test_unguarded_hypercorn_connection_fault_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    """hypercorn's own TCPServer still has the upstream bug; guard 1 keeps it to one connection."""
    faults: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        port, stop = await start(nursery, faults, connection_class=TCPServer)
        with caplog.at_level(logging.ERROR, logger="web.server"):
            await exchange(port, ws_upgrade() + FRAME)
            with trio.fail_after(5):
                while not faults["http_connection"]:  # noqa: ASYNC110 (a test polling a counter)
                    await trio.sleep(0.01)
        assert (await get_ok(port)).endswith(b"ok")  # the server still serves
        stop.set()
    records = [r for r in caplog.records if r.name == "web.server"]
    assert len(records) == 1 and faults["http_connection"] == 1
    assert "from 127.0.0.1:" in records[0].getMessage() and "LocalProtocolError" in records[0].getMessage()


@pytest.mark.trio
@pytest.mark.parametrize("query", [b"", b"?token=good"])
@pytest.mark.parametrize("split", [False, True])
async def test_websocket_bytes_before_the_handshake_answer(query: bytes, split: bool) -> None:
    faults: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        port, stop = await start(nursery, faults)
        for _ in range(20):  # the race has two orders: try it often
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                if split:
                    await stream.send_all(ws_upgrade(b"/ws" + query))
                    await stream.send_all(FRAME)
                else:
                    await stream.send_all(ws_upgrade(b"/ws" + query) + FRAME)
                with trio.move_on_after(5):
                    head = await stream.receive_some(65536)
            assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 401", b"HTTP/1.1 101")), head
        assert (await get_ok(port)).endswith(b"ok")
        stop.set()
    assert faults["http_connection"] == 0


@pytest.mark.trio
async def test_websocket_after_the_handshake_works() -> None:
    faults: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        port, stop = await start(nursery, faults)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(ws_upgrade(b"/ws?token=good"))
            head = await stream.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 101")
            await stream.send_all(FRAME)
            frame = await stream.receive_some(65536)
            assert frame == b"\x81\x05hello"
        stop.set()
    assert faults["http_connection"] == 0


@pytest.mark.trio
@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: !!!\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
])
async def test_no_h2c(raw: bytes) -> None:
    """Upgrade: h2c is ignored (RFC 9110 §7.8) and prior-knowledge HTTP/2 is not spoken: HTTP/1.1 answers."""
    faults: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        port, stop = await start(nursery, faults)
        answer = await exchange(port, raw, read_until_close=False)
        assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 101"), answer
        assert (await get_ok(port)).endswith(b"ok")
        stop.set()
    assert faults["http_connection"] == 0


@pytest.mark.trio
async def test_slow_request_head_is_cut_off() -> None:
    """Slowloris: a head that is not complete within keep_alive_timeout ends the connection."""
    faults: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        cfg_timeout = 5  # hypercorn's keep_alive_timeout default, the deadline for the head
        port, stop = await start(nursery, faults)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\n")
            closed = False
            with trio.move_on_after(cfg_timeout * 4):
                while True:
                    await stream.send_all(b"X-a: b\r\n")
                    with trio.move_on_after(1):
                        if await stream.receive_some(1024) == b"":
                            closed = True
                            break
        assert closed
        stop.set()


@pytest.mark.trio
async def test_connection_close_response_closes_the_socket_under_quart() -> None:
    """quart-trio cancels the task that closes the connection; the close is shielded (found by scripts/fuzz:
    every ``Connection: close`` request held its socket until the read timeout, forever without one)."""
    from quart_trio import QuartTrio

    quart = QuartTrio("t")

    @quart.get("/")
    async def index() -> dict[str, int]:
        return {"ok": 1}

    cfg = HypercornConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.read_timeout = None  # hypercorn's default: nothing else would ever close the socket
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(quart, cfg, stop, task_status=task_status))
        port = int(binds[0].rsplit(":", 1)[1])
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                with trio.fail_after(10):
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"ok":1}\n')
        stop.set()


@pytest.mark.trio
async def test_chunked_bodies_are_coalesced_and_capped() -> None:
    """Many small chunks reach the app as few body events; past MAX_CHUNKS the request is a 400."""
    from quart import request
    from quart_trio import QuartTrio

    from web.server import MAX_CHUNKS

    quart = QuartTrio("t")
    seen: list[int] = []

    @quart.post("/")
    async def echo() -> dict[str, int]:
        body = await request.get_data()
        seen.append(len(body))
        return {"bytes": len(body)}

    cfg = HypercornConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(quart, cfg, stop, task_status=task_status))
        port = int(binds[0].rsplit(":", 1)[1])
        head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        fine = await exchange(port, head + b"1\r\na\r\n" * (MAX_CHUNKS - 1) + b"0\r\n\r\n")
        assert fine.startswith(b"HTTP/1.1 200") and fine.endswith(b'{"bytes":%d}\n' % (MAX_CHUNKS - 1))
        too_many = await exchange(port, head + b"1\r\na\r\n" * 20_000 + b"0\r\n\r\n")
        assert too_many.startswith(b"HTTP/1.1 400")
        stop.set()
    assert seen == [MAX_CHUNKS - 1]


@pytest.mark.trio
async def test_idle_keep_alive_connection_is_closed_under_quart() -> None:
    """After a keep-alive response the idle timer starts even though quart-trio cancels the app's task."""
    from quart_trio import QuartTrio

    quart = QuartTrio("t")

    @quart.get("/")
    async def index() -> dict[str, int]:
        return {"ok": 1}

    cfg = HypercornConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.keep_alive_timeout = 0.5
    cfg.read_timeout = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(quart, cfg, stop, task_status=task_status))
        port = int(binds[0].rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            with trio.fail_after(10):  # the keep-alive timeout is 0.5 s; without the fix: never
                while chunk := await stream.receive_some(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200")
        stop.set()
