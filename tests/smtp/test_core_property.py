"""Hypothesis properties of the core: no crash on any input, chunking never matters,
and the DATA reader agrees with a slow reference model of RFC 5321 §4.1.1.4/§4.5.2."""

from __future__ import annotations

import itertools
import typing

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relay.smtp.core import State
from relay.smtp.data import BARE_NEWLINE, LINE_TOO_LONG, TOO_BIG, DataReader
from relay.smtp.events import NEED_DATA, ConnectionClosed, Event, MailFrom, MessageComplete, ProtocolError, RcptTo
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply
from tests.smtp.harness import accept_all, b64, new_conn, plain, run_stream

EVENT_TYPES = typing.get_args(Event)
LIMITS = Limits(
    max_command_line=64,
    max_text_line=40,
    max_auth_line=64,
    max_message_size=200,
    max_recipients=3,
    max_errors=8,
)
VOCABULARY = [
    b"EHLO client.example\r\n",
    b"HELO h\r\n",
    b"MAIL FROM:<a@example.com>\r\n",
    b"MAIL FROM:<> SIZE=10\r\n",
    b"RCPT TO:<b@example.org>\r\n",
    b"RCPT TO:<c@example.org>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    f"AUTH PLAIN {plain()}\r\n".encode(),
    f"{b64('user')}\r\n".encode(),
    b"*\r\n",
    b".\r\n",
    b"..dot\r\n",
    b"\r\n.\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\n.\n",
    b"\r\n.\n",
    b"x" * 70,
    b"text line\r\n",
]
fragments = st.lists(st.one_of(st.sampled_from(VOCABULARY), st.binary(max_size=24)), max_size=40)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def cuts_for(draw: st.DataObject, data: bytes) -> list[int]:
    return draw.draw(st.lists(st.integers(0, len(data)), max_size=12))


@SETTINGS
@given(fragments, st.data())
def test_any_stream_in_any_chunking_gives_the_same_events(frags: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(frags)
    # STARTTLS is the one command whose meaning depends on what is buffered with it (CVE-2011-0411).
    assume(b"STARTTLS" not in stream.upper())
    kwargs: dict[str, object] = {"require_tls_for_auth": False}
    whole = run_stream([stream], LIMITS, **kwargs)
    assert all(isinstance(e, EVENT_TYPES) for e in whole)
    assert run_stream(split(stream, cuts_for(draw, stream)), LIMITS, **kwargs) == whole
    if len(stream) <= 400:
        assert run_stream([stream[i : i + 1] for i in range(len(stream))], LIMITS, **kwargs) == whole


@SETTINGS
@given(
    st.lists(st.one_of(st.sampled_from([*VOCABULARY, b"STARTTLS\r\n"]), st.binary(max_size=24)), max_size=40),
    st.data(),
)
def test_no_input_crashes_the_core_even_with_starttls(frags: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(frags)
    got = run_stream(split(stream, cuts_for(draw, stream)), limits=LIMITS, tls_available=True)
    assert all(isinstance(e, EVENT_TYPES) for e in got)


# ---- the DATA reader against a reference model -------------------------------------------

MAX_SIZE, MAX_LINE = 60, 20


def reference(stream: bytes) -> tuple[MessageComplete | ProtocolError, bytes] | None:
    """Slow and obvious: find CRLF.CRLF (with a virtual CRLF before the data), then judge.

    Bare CR anywhere: refused; bare LF: a line end like CRLF (Postfix ``normalize``)."""
    s = b"\r\n" + stream
    end = s.find(b"\r\n.\r\n")
    if end < 0:
        return None
    raw, rest = s[2 : end + 2], s[end + 5 :]
    if raw.count(b"\r") != raw.count(b"\r\n"):
        return ProtocolError(BARE_NEWLINE), rest
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")[:-1]  # a bare LF is a (normalized) line end
    body = b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)
    if len(body) > MAX_SIZE:
        return ProtocolError(TOO_BIG), rest
    if any(len(line) > MAX_LINE - 2 for line in lines):
        return ProtocolError(LINE_TOO_LONG), rest
    return MessageComplete(body), rest


data_fragments = st.lists(
    st.one_of(
        st.sampled_from(
            [
                *(b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.\r\n", b".\r\n", b"x" * 25, b"ab"),
                *(b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"),  # smuggling vectors
            ]
        ),
        st.binary(max_size=8),
    ),
    max_size=40,
)


@SETTINGS
@given(data_fragments, st.data())
def test_data_reader_matches_reference(frags: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(frags)
    reader = DataReader(max_size=MAX_SIZE, max_line=MAX_LINE)
    buf = bytearray()
    chunks = split(stream, cuts_for(draw, stream))
    done = False
    while chunks and not done:
        chunk = chunks.pop(0)
        buf += chunk
        done = reader.consume(buf)
        assert len(buf) <= len(chunk) + MAX_LINE  # memory stays bounded
    expected = reference(stream)
    if expected is None:
        assert not done
        return
    assert done
    event, rest = expected
    assert reader.result() == event
    # Whatever follows the terminator is left for the command parser (RFC 2920 pipelining).
    assert bytes(buf) + b"".join(chunks) == rest


lines = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b"..", b".x", b"x.", b"From x"]),
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    max_size=30,
)


@SETTINGS
@given(lines, st.data())
def test_stuffed_message_round_trips(text: list[bytes], draw: st.DataObject) -> None:
    body = b"".join(line + b"\r\n" for line in text)
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in text) + b".\r\n"
    reader = DataReader(max_size=10**6, max_line=1000)
    buf = bytearray()
    done = False
    for chunk in split(wire, cuts_for(draw, wire)):
        assert not done
        buf += chunk
        done = reader.consume(buf)
    assert done and not buf
    assert reader.result() == MessageComplete(body)


# ---- budgets: nothing a client sends keeps a session alive past its error budget -------------

BUDGET = Limits(max_command_line=64, max_errors=4, max_junk_commands=3)


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from(VOCABULARY), st.binary(max_size=24)), max_size=60))
def test_past_the_error_budget_the_next_event_closes(frags: list[bytes]) -> None:
    """With an app that refuses every MAIL and RCPT (so no message resets the counters), errors never
    exceed max_errors + 1, and once they exceed max_errors the session ends with 421 4.7.0."""
    conn = new_conn(limits=BUDGET, require_tls_for_auth=False)
    conn.receive_data(b"".join(frags))
    conn.receive_data(b"")
    while True:
        over = conn.errors > BUDGET.max_errors
        event = conn.next_event()
        assert event is not NEED_DATA
        if isinstance(event, ConnectionClosed):
            return
        if over:
            assert isinstance(event, ProtocolError) and event.reply.code == 421 and event.close
        refuse = isinstance(event, MailFrom | RcptTo)
        conn.send(Reply(550, "5.7.1", "no") if refuse else accept_all(conn, event))
        assert conn.errors <= BUDGET.max_errors + 1
        if over:
            assert conn.state is State.CLOSED
