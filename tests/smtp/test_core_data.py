"""DATA: end of data, dot-unstuffing (RFC 5321 §4.5.2), SMTP smuggling, size and line limits."""

from __future__ import annotations

import pytest

from relay.smtp.core import ServerConnection, State
from relay.smtp.data import DataReader
from relay.smtp.events import NEED_DATA, ConnectionClosed, Event, MailFrom, MessageComplete, ProtocolError
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply
from tests.smtp.harness import events, in_data


def finish(conn: ServerConnection, *chunks: bytes) -> Event:
    """Feed chunks one by one; exactly one event may come, after the last chunk."""
    for i, chunk in enumerate(chunks):
        conn.receive_data(chunk)
        event = conn.next_event()
        if i < len(chunks) - 1:
            assert event is NEED_DATA, f"early event after chunk {i}: {event!r}"
    assert event is not NEED_DATA
    assert not isinstance(event, ConnectionClosed)
    return event


def message(*chunks: bytes, limits: Limits | None = None) -> Event:
    return finish(in_data(limits=limits), *chunks)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize(
    ("wire", "unstuffed"),
    [
        (b".\r\n", b""),
        (b"hello\r\n.\r\n", b"hello\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..leading dot\r\n.\r\n", b".leading dot\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n..b\r\n..\r\nc.d\r\n.\r\n", b"a\r\n.b\r\n.\r\nc.d\r\n"),
        (b"no dot. here\r\n .x\r\n.\r\n", b"no dot. here\r\n .x\r\n"),
        (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
    ],
)
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_dot_unstuffing(wire: bytes, unstuffed: bytes, chunking: str) -> None:
    chunks = [wire] if chunking == "whole" else bytewise(wire)
    event = message(*chunks)
    assert event == MessageComplete(unstuffed)


SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n\r.\r\n",
    b"\r\n.\r\r\n",
    b"\n\n.\n\n",
]


@pytest.mark.parametrize("vector", SMUGGLING, ids=repr)
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_smuggling_vectors_never_end_data(vector: bytes, chunking: str) -> None:
    smuggled = b"MAIL FROM:<admin@victim.example>\r\nRCPT TO:<x@victim.example>\r\nDATA\r\nforged\r\n"
    wire = b"Subject: hi\r\n\r\nbody" + vector + smuggled + b"\r\n.\r\n"
    conn = in_data()
    chunks = [wire] if chunking == "whole" else bytewise(wire)
    event = finish(conn, *chunks)  # exactly one event, after the real CRLF.CRLF
    if b"\r" in vector.replace(b"\r\n", b""):
        # A bare CR has no reading as a line end: refused.
        assert isinstance(event, ProtocolError)
        assert (event.reply.code, event.reply.enhanced) == (550, "5.6.11")
    else:
        # Bare LFs are normalized line ends; the would-be commands stay message text.
        assert isinstance(event, MessageComplete)
        assert b"\n" not in event.data.replace(b"\r\n", b"")
        assert b"MAIL FROM:<admin@victim.example>\r\n" in event.data
    conn.send(event.reply if isinstance(event, ProtocolError) else Reply(250, "2.0.0", "ok"))
    assert conn.state is State.READY
    assert conn.next_event() is NEED_DATA  # nothing smuggled became a command


@pytest.mark.parametrize(
    ("wire", "stored"),
    [
        (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),
        (b"\n.\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),  # "\n.\r\n" is no terminator: "." is a stuffed empty line
        (b"x\n.\nsmuggled\n\r\n.\r\n", b"x\r\n\r\nsmuggled\r\n\r\n"),
        # curl -T of an LF file: curl appends CRLF.CRLF after the last LF.
        (b"l1\nl2\n..dot\n\r\n.\r\n", b"l1\r\nl2\r\n.dot\r\n\r\n"),
    ],
)
@pytest.mark.parametrize("chunking", ["whole", "bytewise"])
def test_bare_lf_lines_are_normalized(wire: bytes, stored: bytes, chunking: str) -> None:
    event = message(*([wire] if chunking == "whole" else bytewise(wire)))
    assert event == MessageComplete(stored)


BARE_CR = [b"a\rb\r\n.\r\n", b"a\r\r\n.\r\n", b"a\n\rb\r\n.\r\n"]


@pytest.mark.parametrize("data", BARE_CR, ids=repr)
def test_bare_cr_anywhere_is_rejected(data: bytes) -> None:
    event = message(data)
    assert isinstance(event, ProtocolError) and event.reply.code == 550


def test_bare_lf_terminator_is_not_the_end() -> None:
    conn = in_data()
    conn.receive_data(b"x\n.\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"more\r\n.\r\nNOOP\r\n")
    assert conn.next_event() == MessageComplete(b"x\r\n\r\nmore\r\n")


def test_commands_pipelined_after_final_dot() -> None:
    conn = in_data()
    got = events(conn, b"body\r\n.\r\nMAIL FROM:<c@example.com>\r\n")
    assert got[0] == MessageComplete(b"body\r\n")
    assert got[1] == MailFrom("c@example.com", {})


def test_size_limit_counts_unstuffed_octets() -> None:
    limits = Limits(max_message_size=6)
    assert message(b"..abc\r\n.\r\n", limits=limits) == MessageComplete(b".abc\r\n")
    event = message(b"..abcd\r\n.\r\n", limits=limits)
    assert isinstance(event, ProtocolError) and event.reply.code == 552


def test_too_big_is_answered_only_after_final_dot() -> None:
    limits = Limits(max_message_size=100)
    conn = in_data(limits=limits)
    line = b"x" * 70 + b"\r\n"
    event = finish(conn, line, line, line, line, b".\r\n")
    assert isinstance(event, ProtocolError)
    assert (event.reply.code, event.reply.enhanced) == (552, "5.3.4")
    conn.send(event.reply)
    assert conn.state is State.READY


def test_too_big_does_not_buffer_the_message() -> None:
    reader = DataReader(max_size=1000, max_line=1000)
    buf = bytearray()
    for _ in range(200):
        buf += b"y" * 500 + b"\r\n"
        assert not reader.consume(buf)
        assert len(buf) < 1000
    assert reader.too_big and not reader._parts


def test_long_line_memory_is_bounded() -> None:
    reader = DataReader(max_size=10**9, max_line=1000)
    buf = bytearray()
    for _ in range(100):
        buf += b"z" * 4096  # one 400 KB line, no LF
        assert not reader.consume(buf)
        assert len(buf) <= 1
    buf += b"\r\n.\r\n"
    assert reader.consume(buf)
    result = reader.result()
    assert isinstance(result, ProtocolError)
    assert (result.reply.code, result.reply.enhanced) == (500, "5.5.6")


@pytest.mark.parametrize(("length", "ok"), [(998, True), (999, False)])
@pytest.mark.parametrize("chunking", ["whole", "split"])
def test_text_line_limit_1000_with_crlf(length: int, ok: bool, chunking: str) -> None:
    wire = b"h: v\r\n" + b"a" * length + b"\r\n.\r\n"
    chunks = [wire] if chunking == "whole" else [wire[:500], wire[500:1003], wire[1003:]]
    event = message(*chunks)
    if ok:
        assert event == MessageComplete(wire[:-3])
    else:
        assert isinstance(event, ProtocolError)
        assert (event.reply.code, event.reply.enhanced) == (500, "5.5.6")


def test_long_line_with_bare_cr_is_a_bare_newline() -> None:
    event = message(b"a" * 2000 + b"\r" + b"b" * 2000 + b"\r\n.\r\n")
    assert isinstance(event, ProtocolError) and event.reply.code == 550


def test_terminator_right_after_dropped_long_line() -> None:
    conn = in_data()
    event = finish(conn, b"q" * 1500 + b"\r", b"\n.\r\n")
    assert isinstance(event, ProtocolError) and event.reply.code == 500


def test_eof_during_data_discards_message() -> None:
    conn = in_data()
    conn.receive_data(b"half a message\r\n")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.state is State.CLOSED


def test_transaction_resets_after_message() -> None:
    conn = in_data()
    events(conn, b"x\r\n.\r\n")
    assert conn.state is State.READY and conn.recipients == 0
    got = events(conn, b"RCPT TO:<b@example.org>\r\n")
    assert isinstance(got[0], ProtocolError) and got[0].reply.code == 503
