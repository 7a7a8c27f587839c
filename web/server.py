"""The HTTP listener: hypercorn's HTTP/1.1 protocol on our own accept loop, one fault per connection.

Why not ``hypercorn.trio.serve``: in hypercorn 0.18 an exception inside one connection's protocol
handler leaves ``serve`` and ends the caller's nursery (pgjones/hypercorn issue 225, open, no fixed
release): a stranger's websocket upgrade with a few bytes after the request head, or an ``Upgrade:
h2c`` with an undecodable ``HTTP2-Settings``, stopped the whole relay. Three guards, outermost first:

1. ``_contained``: every connection runs inside its own ``except* Exception``. Whatever escapes the
   protocol code ends that connection only (its socket is closed by ``trio.serve_listeners``), is
   logged once with the peer and a short connection id, and is counted in ``faults``.
2. HTTP/1.1 only (``_H11``): no h2c upgrade and no prior-knowledge HTTP/2 on cleartext. Nothing the
   relay serves needs HTTP/2 (RFC 9113 §3.1 itself deprecates the h2c upgrade; RFC 9110 §7.8 lets a
   server ignore ``Upgrade``), so the upgrade header is ignored and the request answered in 1.1.
3. ``_WSStream``: bytes that arrive before the websocket handshake is answered (RFC 6455 §4.1: the
   client must wait for the 101) make hypercorn answer 400 while the app may be answering the same
   handshake, two responses on one h11 connection (the upstream crash). Here the handshake has one
   answer: whichever comes first; the early bytes are dropped and the app is told to disconnect.
4. ``_Connection.protocol_send`` and ``_close``: what hypercorn does in the app's task when a response
   ends is shielded from the app's cancellation, and EOF is sent under the send lock (three more
   hypercorn/quart-trio races that ``scripts/fuzz`` found: sockets held open, see there).

Bounds (``[http]`` config): a request head must arrive within ``keep_alive_timeout`` of the
connection's start (slowloris), each read within ``read_timeout``, heads are capped at
hypercorn's ``h11_max_incomplete_size`` (16 KiB: answered 431/400), websocket messages at
``websocket_max_message``; idle websockets are kept honest by pings every ``websocket_ping``.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.events import Body, Data, Request, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol, H11WSConnection
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGISendEvent, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr, repr_socket_addr, wrap_app

log = logging.getLogger("web.server")

_STREAM_ID = 1  # HTTP/1.1 has one stream per connection (hypercorn's STREAM_ID)
_CLOSE_GRACE = 5.0  # seconds a close waits for a response being written to finish
MAX_CHUNKS = 1024  # chunks in one request body (a 1 MiB body still fits in 1 KiB chunks)


class _WSStream(WSStream):
    """hypercorn's websocket stream with one answer per handshake (guard 3 in the module docstring)."""

    answered = False  # the handshake's answer (101, the app's HTTP response, our 400) has begun

    async def handle(self, event: StreamEvent) -> None:
        if isinstance(event, Body | Data) and not self.closed and not self.handshake.accepted:
            # RFC 6455 §4.1: nothing may follow the upgrade request before the server's 101.
            if self.answered:
                return  # the app is answering the handshake (a refusal): drop the bytes, let it finish
            self.answered = self.closed = True  # before any await: app_send now returns at once
            await self._send_error_response(400)
            if self.app_put is not None:
                await self.app_put({"type": "websocket.disconnect", "code": 1002})  # the app stops
            await self.send(StreamClosed(stream_id=self.stream_id))  # and the connection closes
            return
        await super().handle(event)

    async def app_send(self, message: ASGISendEvent | None) -> None:
        if not self.closed and self.state == ASGIWebsocketState.HANDSHAKE:
            kind = None if message is None else message["type"]
            if kind != "websocket.http.response.start":  # the only message that sends nothing
                self.answered = True
        await super().app_send(message)


class _CoalescingConnection(h11.Connection):
    """h11 with consecutive body ``Data`` events merged (up to 64 KiB), and a cap on chunks per body.

    h11 parses and yields one event per chunk, ~14 µs each: a 120 KB body of 20,000 one-byte chunks
    held the event loop for ~0.3 s, one stranger's request (scripts/fuzz). Clients send chunks of
    kilobytes; past ``MAX_CHUNKS`` in one body the request is refused (400) before h11 parses more.
    """

    _held: Any = None  # the event read past the merged data, returned by the next call
    _chunks = 0  # Data events in the current request body

    def next_event(self) -> Any:
        if self._held is not None:
            event, self._held = self._held, None
            return event
        event = self._next()
        if type(event) is not h11.Data:
            return event
        parts, size = [event.data], len(event.data)
        while size < 65536:
            try:
                following = self._next()
            except h11.RemoteProtocolError:
                break  # raised again (h11 is in ERROR, or still over the cap) on the next call
            if type(following) is h11.Data:
                parts.append(following.data)
                size += len(following.data)
                continue
            if following is not h11.NEED_DATA and following is not h11.PAUSED:
                self._held = following  # sentinels are not held: h11 answers them afresh
            break
        return h11.Data(data=b"".join(parts)) if len(parts) > 1 else event

    def _next(self) -> Any:
        if self._chunks >= MAX_CHUNKS:
            raise h11.RemoteProtocolError(f"more than {MAX_CHUNKS} chunks in one request body", 400)
        event = super().next_event()
        if type(event) is h11.Data:
            self._chunks += 1
        elif type(event) is h11.Request:
            self._chunks = 0
        return event


class _H11(H11Protocol):
    """HTTP/1.1 only, with the guarded websocket stream (guards 2 and 3), body chunks coalesced."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        limit = self.config.h11_max_incomplete_size
        self.connection = _CoalescingConnection(h11.SERVER, max_incomplete_event_size=limit)

    _errored = False  # hypercorn answered this connection's request with an error (400, 431, ...)

    async def _send_error_response(self, status_code: int) -> None:
        self._errored = True  # first: the app's response must not slip in between these two events
        headers = [(b"content-length", b"0"), (b"connection", b"close"), *self.config.response_headers("h11")]
        await super()._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await super()._send_h11_event(h11.EndOfMessage())

    async def _send_h11_event(self, event: Any) -> None:
        # After hypercorn's own error answer (a malformed body, too many chunks) the app may still be
        # answering the same request: h11 refused that second response and the app's task raised (found
        # by scripts/fuzz). The request has its answer; what the app sends after it is dropped.
        if not self._errored:
            await super()._send_h11_event(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        return None  # no h2c upgrade, no "PRI * HTTP/2.0": the request is served as HTTP/1.1

    async def _create_stream(self, request: h11.Request) -> None:
        upgrade, connection = b"", b""
        for name, value in request.headers:  # h11 lower-cases names
            if name == b"upgrade":
                upgrade = value.strip().lower()
            elif name == b"connection":
                connection = value.lower()
        websocket = (upgrade == b"websocket" and request.method.upper() == b"GET"
                     and any(token.strip() == b"upgrade" for token in connection.split(b",")))
        stream_class = _WSStream if websocket else HTTPStream
        self.stream = stream_class(self.app, self.config, self.context, self.task_group, self.ssl,
                                   self.client, self.server, self.stream_send, _STREAM_ID)
        if websocket:
            assert isinstance(self.connection, h11.Connection)
            self.connection = H11WSConnection(self.connection)
        headers = request.headers.raw_items() if self.config.h11_pass_raw_headers else list(request.headers)
        await self.stream.handle(Request(
            stream_id=_STREAM_ID, headers=headers, http_version=request.http_version.decode(),
            method=request.method.decode("ascii").upper(), raw_path=request.target, state=self.connection_state,
        ))
        self.keep_alive_requests += 1
        await self.context.mark_request()


class _Connection(TCPServer):
    """hypercorn's per-connection driver over plain TCP, speaking ``_H11`` (TLS ends in front of it)."""

    async def run(self) -> None:
        try:
            sock = self.stream.socket
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _H11(self.app, self.config, self.context, task_group,  # type: ignore[assignment]
                                     ConnectionState(self.state), False, client, server, self.protocol_send)
                await self.idle_task.restart(self._task_group, self._idle_timeout)  # the head's deadline
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Any) -> None:
        # Runs in the app's task when a response ends (close the connection, or restart the keep-alive
        # timer), and quart-trio cancels that task as soon as the stream closes: the close was cancelled
        # half-way (the socket stayed open until the read timeout) and the keep-alive timer never started
        # (idle connections were never closed). Found by scripts/fuzz. Shielded here, with a bound.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_GRACE):
            await super().protocol_send(event)

    async def _close(self) -> None:
        # hypercorn sends EOF without its send lock, and trio's send_eof holds the stream's send side
        # across a checkpoint: a response being written then raised BusyResourceError (scripts/fuzz).
        # Taken under the lock here; shielded as above (also called from the idle timer's task).
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_CLOSE_GRACE):
                if self.send_lock.statistics().owner is trio.lowlevel.current_task():
                    await super()._close()
                    return
                async with self.send_lock:
                    await super()._close()
                    return
            await self.stream.aclose()  # a send is stuck on a client that does not read: close under it


ConnectionFactory = Callable[[trio.SocketStream], Awaitable[None]]


async def _contained(connection: ConnectionFactory, faults: Counter[str], stream: trio.SocketStream) -> None:
    """Run one connection; an exception ends it alone (guard 1). Cancellation still propagates."""
    conn_id, peer = secrets.token_hex(4), _peer(stream)  # the peer now: a failed connection is closed
    try:
        await connection(stream)
    except* Exception as group:
        faults["http_connection"] += 1
        log.error("http connection %s from %s ended by an internal error: %s", conn_id, peer,
                  "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions), exc_info=group)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "(gone)"
    return f"{host}:{port}"


async def serve(
    app: Any,
    config: HypercornConfig,
    stop: trio.Event,
    *,
    faults: Counter[str] | None = None,
    connection_class: type[TCPServer] = _Connection,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``config.bind`` until ``stop``; reports the bound URLs (port 0 works).

    Then graceful shutdown as hypercorn does it: stop accepting, close idle keep-alive
    connections, give in-flight requests ``config.graceful_timeout``. ``connection_class``
    exists for the test that runs hypercorn's own unguarded ``TCPServer`` under guard 1; a contained
    fault counts in ``faults["http_connection"]`` (``RelayMetrics.faults``, on /metrics).
    """
    faults = faults if faults is not None else Counter()
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        sockets = config.create_sockets()
        listeners, binds = [], []
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
        connection = partial(connection_class, wrapped, config, context, ConnectionState(lifespan_state.copy()))
        handler = partial(_contained, connection, faults)
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, handler, listeners, handler_nursery=connections))
                task_status.started(binds)
                await stop.wait()
                accepting.cancel_scope.cancel()
            await context.terminated.set()  # idle keep-alive connections close now
            connections.cancel_scope.deadline = trio.current_time() + (config.graceful_timeout or 0)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


__all__ = ["serve"]
