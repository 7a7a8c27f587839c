"""Line framing shared by the server (core.py) and client (clientcore.py) roles. Pure: no I/O.

``LineBuffer`` holds received bytes and cuts them into LF-terminated lines with a
length cap, scanning with ``bytes.find`` (no per-byte Python loop). Whether a line
ends in a proper CRLF is for the caller to judge: RFC 5321 §2.3.8 says lines end
in CRLF, and the server refuses anything else.
``parse_reply_lines`` turns reply lines (``250-...``/``250 ...``) into a ``Reply``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from relay.smtp.reply import Reply


class _TooLong(enum.Enum):
    TOO_LONG = "TOO_LONG"


#: Returned once per over-long line; the rest of that line is discarded silently.
TOO_LONG = _TooLong.TOO_LONG
TooLong = _TooLong


class LineBuffer:
    """Received bytes, cut into lines on demand (the line limit may change per call)."""

    __slots__ = ("_discarding", "data", "eof")

    def __init__(self) -> None:
        self.data = bytearray()  # unconsumed input; the DATA reader consumes it directly
        self.eof = False
        self._discarding = False  # inside an over-long line already reported

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes; ``b""`` marks the end of the stream."""
        if self.eof:
            raise ValueError("data after end of stream")
        if data:
            self.data += data
        else:
            self.eof = True

    def next_line(self, limit: int) -> bytes | TooLong | None:
        """The next line including its LF, ``TOO_LONG``, or None when incomplete.

        A line of more than ``limit`` octets (LF included) is reported as soon as
        ``limit`` octets without an LF are buffered, so memory stays bounded.
        """
        if self._discarding and not self._skip_rest():
            return None
        end = self.data.find(b"\n", 0, limit)
        if end >= 0:
            line = bytes(self.data[: end + 1])
            del self.data[: end + 1]
            return line
        if len(self.data) >= limit:
            self._discarding = True
            self._skip_rest()
            return TOO_LONG
        return None

    def _skip_rest(self) -> bool:
        """Drop the rest of an over-long line; True once its LF was seen."""
        end = self.data.find(b"\n")
        if end < 0:
            self.data.clear()
            return False
        del self.data[: end + 1]
        self._discarding = False
        return True


class ReplySyntaxError(ValueError):
    """A server reply that does not follow RFC 5321 §4.2."""


_REPLY_LINE = re.compile(r"([2-5][0-9][0-9])(?:([ -])(.*))?\Z", re.DOTALL)
_ENHANCED = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3}) ?")


def parse_reply_lines(lines: Sequence[str]) -> Reply:
    """Build a Reply from the lines of one reply, CRLF already stripped (client side).

    All lines carry the same code; all but the last use ``-`` (RFC 5321 §4.2.1).
    An enhanced code (RFC 2034 §4) on the first line goes to ``Reply.enhanced``
    and is stripped from later lines that repeat it.
    """
    if not lines:
        raise ReplySyntaxError("empty reply")
    code, texts = None, []
    for i, line in enumerate(lines):
        m = _REPLY_LINE.match(line)
        if m is None or (code is not None and m.group(1) != code):
            raise ReplySyntaxError(f"bad reply line {line!r}")
        last = i == len(lines) - 1
        if (m.group(2) == "-") == last:
            raise ReplySyntaxError(f"bad continuation in {line!r}")
        code = m.group(1)
        texts.append(m.group(3) or "")
    enhanced = None
    m = _ENHANCED.match(texts[0])
    if m is not None:
        enhanced = m.group(1)
        texts = [t[len(m.group(0)) :] if t.startswith(enhanced) else t for t in texts]
    assert code is not None
    return Reply(int(code), enhanced, texts[0], tuple(texts[1:]))


def reply_complete(line: str) -> bool:
    """True when ``line`` is the last line of a reply (``250 ok`` or a bare ``250``)."""
    return len(line) == 3 or (len(line) > 3 and line[3] == " ")
