"""Line framing and the client-side reply parser (RFC 5321 §4.2)."""

from __future__ import annotations

import pytest

from relay.smtp.lines import TOO_LONG, LineBuffer, ReplySyntaxError, parse_reply_lines, reply_complete
from relay.smtp.reply import Reply


def test_line_buffer_cuts_lines_and_reports_long_ones_once() -> None:
    buf = LineBuffer()
    buf.feed(b"abc\r\nde")
    assert buf.next_line(10) == b"abc\r\n"
    assert buf.next_line(10) is None
    buf.feed(b"f" * 20)
    assert buf.next_line(10) is TOO_LONG
    buf.feed(b"ggg")
    assert buf.next_line(10) is None
    buf.feed(b"\r\nok\r\n")
    assert buf.next_line(10) == b"ok\r\n"
    buf.feed(b"")
    assert buf.eof and buf.next_line(10) is None
    with pytest.raises(ValueError):
        buf.feed(b"late")


@pytest.mark.parametrize(
    "reply",
    [
        Reply(250, "2.0.0", "ok"),
        Reply(220, None, "relay.example ESMTP"),
        Reply(250, None, "relay.example greets x", ("PIPELINING", "SIZE 100", "AUTH PLAIN LOGIN")),
        Reply(550, "5.7.1", "suppressed recipient"),
        Reply(421, "4.3.2", "service shutting down"),
    ],
)
def test_round_trip_through_the_wire_format(reply: Reply) -> None:
    lines = reply.to_bytes().decode().split("\r\n")[:-1]
    assert reply_complete(lines[-1]) and not any(reply_complete(line) for line in lines[:-1])
    assert parse_reply_lines(lines) == reply


def test_enhanced_code_repeated_on_continuation_lines() -> None:
    got = parse_reply_lines(["550-5.7.1 first", "550 5.7.1 second"])
    assert got == Reply(550, "5.7.1", "first", ("second",))


def test_bare_code_and_334() -> None:
    assert parse_reply_lines(["334 "]) == Reply(334, None, "")
    assert parse_reply_lines(["354"]) == Reply(354, None, "")


@pytest.mark.parametrize(
    "lines",
    [[], ["hello"], ["250-a", "251 b"], ["250 a", "250 b"], ["250-a"], ["099 x"], ["250x"]],
)
def test_malformed_replies(lines: list[str]) -> None:
    with pytest.raises(ReplySyntaxError):
        parse_reply_lines(lines)
