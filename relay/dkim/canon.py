"""DKIM "relaxed" canonicalization (RFC 6376 §3.4.2 header, §3.4.4 body) and message splitting.

Written here rather than borrowed from dkimpy: the same rules on whole byte strings with C-level
``bytes`` methods only (``translate`` tabs to SP, ``replace`` double SP until none is left), no
regex on the body, ~4x faster than dkimpy's three ``re.sub`` passes on prose (scripts/benchlib/
dkimbench.py prints both; the tests check both give the same bytes).

Everything works on CRLF text. ``normalize`` turns bare LF line ends into CRLF first (RFC 5322 §2.1:
a line ends in CRLF; a message that reached us with bare LFs is sent as CRLF on the wire).
"""

from __future__ import annotations

import re

from relay.mail import headers

CRLF = b"\r\n"
_WSP = b" \t"
_TAB_TO_SP = bytes.maketrans(b"\t", b" ")
# WSP left before a line end once runs are compressed: at most one SP (RFC 6376 §3.4.4 a).
_SP_CRLF = b" \r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


def normalize(message: bytes) -> bytes:
    """CRLF line ends throughout (bare LF -> CRLF; an existing CRLF is kept) and a final CRLF.

    A message that does not end in CRLF gets one: SMTP DATA adds it on the wire anyway (RFC 5321
    §4.1.1.4), so signing the text without it would hash a last line the receiver never sees.
    A lone CR (not followed by LF) is left as it is.
    """
    if message.count(b"\n") != message.count(CRLF):
        message = _BARE_LF.sub(CRLF, message)
    if message and not message.endswith(CRLF):
        message += CRLF
    return message


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields, body) of a CRLF message.

    Each field is ``(name, value)`` exactly as in the message: ``value`` is everything after the
    first colon, continuation lines included (joined by their CRLF), without the final CRLF. The
    body starts after the empty line; a message without one is all header (empty body). A header
    line without a colon is kept as a field with that whole line as its name and an empty value:
    it cannot match a name we sign, and the message is passed on unchanged.
    """
    fields, body = headers.split(message)  # the relay's one splitter: CRLF line ends only
    return [(name, value) for name, _, value in (f.partition(b":") for f in fields)], body


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field in relaxed form, CRLF-terminated (RFC 6376 §3.4.2).

    Lowercase name, no WSP around the colon, unfolded, WSP runs compressed to one SP, no WSP at
    the start or end of the value.
    """
    if CRLF in value:
        value = value.replace(CRLF, b"")
    return name.rstrip(_WSP).lower() + b":" + _compress_wsp(value).strip(_WSP) + CRLF


def _compress_wsp(data: bytes) -> bytes:
    """Every run of SP/HTAB as one SP. ``replace`` does not overlap, so a run of n blanks takes about
    log2(n) passes; text with single spaces only costs one scan and no copy."""
    if b"\t" in data:
        data = data.translate(_TAB_TO_SP)
    while len(shorter := data.replace(b"  ", b" ")) != len(data):
        data = shorter
    return data


def relaxed_body(body: bytes) -> bytes:
    """The body in relaxed form (RFC 6376 §3.4.4).

    WSP runs inside a line become one SP, WSP at the end of each line goes, empty lines at the end
    go; a non-empty result ends in CRLF, an empty body stays empty (the §3.4.4 rule, not the
    "simple" one CRLF). A last line without CRLF is treated as if it had one (see ``normalize``).
    """
    body = _compress_wsp(body).replace(_SP_CRLF, CRLF)  # one scan, even when there is nothing to do
    end = len(body)
    while body.endswith(CRLF, 0, end):
        end -= 2
    if end == 0:
        return b""
    if end == len(body):  # no final CRLF at all: the last line's trailing WSP still goes
        return body.rstrip(_WSP) + CRLF
    return body[: end + 2]
