"""The DATA phase: find the end of the message, unstuff dots, enforce limits. Pure.

RFC 5321 §4.1.1.4: only ``CRLF . CRLF`` ends the data. A bare LF never ends it
(that ambiguity is what SMTP smuggling exploits: ``\\n.\\n``, ``\\r\\n.\\n``...),
but it does end a content line: such lines are normalized to CRLF, as Postfix 3.9
does by default (``smtpd_forbid_bare_newline = normalize``), so ``curl -T`` of a
file with Unix line ends works and a ``\\n.\\n`` in it stays message text (the
delivery client dot-stuffs it again on the way out). A bare CR is never a line
end either and has no such reading: a message with one is rejected after the
real end (``\\r.\\r`` and friends).

Input is processed in blocks of complete lines with C-level bytes operations
(``find``, ``count``, ``replace``, ``split``), never byte by byte. Memory stays
bounded: the message is kept only while within ``max_size``, and an unfinished
line is kept only up to ``max_line`` octets.

Verdicts, first match wins: bare CR -> 550 5.6.11, too big -> 552 5.3.4
(RFC 1870 §6.3, after the final dot), text line over ``max_line`` -> 500 5.5.6
(§4.5.3.1.6). Each flag only grows and is computed exactly, so the verdict does
not depend on how the bytes were chunked.
"""

from __future__ import annotations

from relay.smtp.events import MessageComplete, ProtocolError
from relay.smtp.reply import Reply

BARE_NEWLINE = Reply(550, "5.6.11", "bare CR not allowed in message data, use CRLF")
TOO_BIG = Reply(552, "5.3.4", "message exceeds fixed maximum message size")
LINE_TOO_LONG = Reply(500, "5.5.6", "message line too long (RFC 5321 limit is 1000 octets)")


class DataReader:
    """Consumes message bytes from a buffer until ``CRLF.CRLF``."""

    __slots__ = ("_crlf_start", "_line_start", "_max_line", "_max_size", "_parts", "_size", "bare", "held",
                 "long_line", "normalized", "too_big")

    def __init__(self, *, max_size: int, max_line: int) -> None:
        self._max_size = max_size
        self._max_line = max_line
        self._parts: list[bytes] = []
        self._size = 0  # unstuffed octets seen so far (exact until too_big)
        self.held = 0  # octets kept in memory (0 once the message is refused)
        # The next buffered byte starts a line that follows a CRLF; true at the start,
        # since the DATA command line ended in CRLF.
        self._crlf_start = True
        self._line_start = True  # the next buffered byte starts a line (after CRLF or a bare LF)
        self.bare = False  # a bare CR was seen: the message is refused
        self.normalized = False  # some line ended in a bare LF (now CRLF)
        self.too_big = False
        self.long_line = False

    def consume(self, buf: bytearray) -> bool:
        """Take message bytes from ``buf``; True once the final dot was consumed.

        Bytes after the final dot stay in ``buf`` (pipelined commands, RFC 2920).
        """
        last_lf = buf.rfind(b"\n")
        if last_lf >= 0:
            with memoryview(buf) as view, view[: last_lf + 1] as head:
                block = bytes(head)  # one copy (buf[:n] would make two)
            end, resume = self._find_end(block)
            if end >= 0:
                self._take(block[:end])
                del buf[:resume]
                return True
            self._take(block)
            del buf[: last_lf + 1]
            self._crlf_start = block.endswith(b"\r\n")
            self._line_start = True
        if len(buf) >= self._max_line:
            self._drop_partial(buf)
        return False

    def result(self) -> MessageComplete | ProtocolError:
        if self.bare:
            return ProtocolError(BARE_NEWLINE)
        if self.too_big:
            return ProtocolError(TOO_BIG)
        if self.long_line:
            return ProtocolError(LINE_TOO_LONG)
        return MessageComplete(b"".join(self._parts))

    def _find_end(self, block: bytes) -> tuple[int, int]:
        """(end of message data, end of terminator) in ``block``, or (-1, -1)."""
        if self._crlf_start and block.startswith(b".\r\n"):
            return 0, 3
        i = block.find(b"\r\n.\r\n")
        return (i + 2, i + 5) if i >= 0 else (-1, -1)

    def _take(self, part: bytes) -> None:
        """Account for complete lines (``part`` ends in LF, or is empty)."""
        if self.bare or not part:
            return
        crlf = part.count(b"\r\n")
        if part.count(b"\r") != crlf:  # a CR not followed by LF
            self.bare = True
            self._parts.clear()
            self.held = 0
            return
        if part.count(b"\n") != crlf:  # bare LF line ends: normalize (no bare CR is left to confuse)
            self.normalized = True
            part = part.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        lines = part.split(b"\r\n")  # the last item is b"" (part ends in CRLF)
        if self.too_big:
            return
        if not self.long_line and len(part) > self._max_line:
            # Only a part longer than one full line can hold an over-long line.
            self.long_line = max(map(len, lines)) > self._max_line - 2
        # §4.5.2: a line starting with "." lost its first dot on the way in.
        body = part[1:] if self._line_start and part.startswith(b".") else part
        self._add(body.replace(b"\r\n.", b"\r\n"))

    def _drop_partial(self, buf: bytearray) -> None:
        """An unfinished line reached ``max_line``: it is too long; drop all but its last byte.

        The last byte is kept so that a CR there still pairs with a following LF.
        """
        piece = bytes(buf[:-1])
        del buf[:-1]
        self.long_line = True
        if b"\r" in piece:  # no LF follows inside the buffer: this CR is bare
            self.bare = True
            self._parts.clear()
            self.held = 0
        elif not self.bare and not self.too_big:
            self._add(piece[1:] if self._line_start and piece.startswith(b".") else piece)
        self._crlf_start = self._line_start = False

    def _add(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_size:
            self.too_big = True
            self._parts.clear()
            self.held = 0
        elif body:
            self._parts.append(body)
            self.held += len(body)
