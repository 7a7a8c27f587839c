"""Test helpers for the sans-I/O core: drive a ServerConnection like a tiny app would."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable

from relay.smtp.core import ServerConnection, State
from relay.smtp.events import (
    NEED_DATA,
    AuthChallenge,
    ConnectionClosed,
    Credentials,
    Data,
    Ehlo,
    Event,
    Help,
    ProtocolError,
    Quit,
    StartTls,
    Vrfy,
)
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply

GREETING = Reply(220, None, "relay.example ESMTP")
OK = Reply(250, "2.0.0", "ok")
PASSWORD = "secret"


def plain(username: str = "user", password: str = PASSWORD, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{username}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def accept_all(conn: ServerConnection, event: Event) -> Reply:
    """The reply a permissive app gives to each event."""
    match event:
        case ProtocolError() | AuthChallenge():
            return event.reply
        case Ehlo():
            return conn.ehlo_reply(event)
        case StartTls():
            return Reply(220, "2.0.0", "ready")
        case Credentials():
            ok = event.password == PASSWORD
            return Reply(235, "2.7.0", "ok") if ok else Reply(535, "5.7.8", "authentication failed")
        case Data():
            return Reply(354, None, "go ahead")
        case Quit():
            return Reply(221, "2.0.0", "bye")
        case Vrfy():
            return Reply(252, "2.5.0", "maybe")
        case Help():
            return Reply(214, "2.0.0", "help")
    return OK


App = Callable[[ServerConnection, Event], Reply]


def new_conn(**kwargs: object) -> ServerConnection:
    kwargs.setdefault("hostname", "relay.example")
    conn = ServerConnection(**kwargs)  # type: ignore[arg-type]
    conn.send(GREETING)
    return conn


def exchange(conn: ServerConnection, data: bytes = b"", app: App = accept_all) -> list[tuple[Event, bytes]]:
    """Feed ``data`` and answer every event until the core needs more bytes (or closes)."""
    if data:
        conn.receive_data(data)
    out: list[tuple[Event, bytes]] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        if isinstance(event, ConnectionClosed):
            out.append((event, b""))
            return out
        if conn.state is State.CLOSED:
            raise AssertionError("an event after CLOSED")
        wire = conn.send(app(conn, event))
        out.append((event, wire))
        if conn.state is State.TLS:
            conn.tls_started()  # pretend the handshake worked; later bytes are "decrypted"


def events(conn: ServerConnection, data: bytes = b"", app: App = accept_all) -> list[Event]:
    return [e for e, _ in exchange(conn, data, app)]


def replies(conn: ServerConnection, data: bytes = b"", app: App = accept_all) -> list[bytes]:
    return [w for _, w in exchange(conn, data, app)]


def run_stream(chunks: Iterable[bytes], limits: Limits | None = None, **kwargs: object) -> list[Event]:
    """Feed chunks then EOF, answering with ``accept_all``; returns every event."""
    conn = new_conn(limits=limits, **kwargs)
    out: list[Event] = []
    pending = [c for c in chunks if c]
    pending.append(b"")
    fed_eof = False
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            assert not fed_eof, "NEED_DATA after EOF"
            chunk = pending.pop(0)
            fed_eof = chunk == b""
            conn.receive_data(chunk)
            continue
        out.append(event)
        if isinstance(event, ConnectionClosed):
            assert conn.state is State.CLOSED
            return out
        conn.send(accept_all(conn, event))
        if conn.state is State.TLS:
            conn.tls_started()


def ready(**kwargs: object) -> ServerConnection:
    """A connection after EHLO."""
    conn = new_conn(**kwargs)
    assert [type(e) for e in events(conn, b"EHLO client.example\r\n")] == [Ehlo]
    return conn


def in_transaction(**kwargs: object) -> ServerConnection:
    """A connection after EHLO, MAIL and one RCPT."""
    conn = ready(**kwargs)
    events(conn, b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n")
    assert conn.state is State.RCPT
    return conn


def in_data(**kwargs: object) -> ServerConnection:
    conn = in_transaction(**kwargs)
    events(conn, b"DATA\r\n")
    assert conn.state is State.DATA
    return conn
