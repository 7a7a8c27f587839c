"""The header section of a message: where it ends and its fields (RFC 5322 §2.1, §2.2). The relay's one
header splitter: DKIM canonicalization, the outbound rewriter, the sender policy, the scheduler's DSN
headers and the inbound handler all cut messages here.

The line-end rule: only CRLF ends a line. RFC 5322 §2.2 makes a header field lines ending in CRLF and
§2.3 allows CR and LF only together, so a bare LF is a byte inside a line and ``LF LF`` does not end the
header section (§3.5: the body follows the first empty line, ``CRLF CRLF``). Messages reach the relay
with CRLF line ends already: the SMTP DATA reader turns bare-LF line ends into CRLF and refuses a bare
CR (relay.smtp.data); text from anywhere else whose line ends matter is normalized before it is split
(``relay.dkim.canon.normalize`` when signing, the DSN builder for the headers it returns).

The shapes: a message that starts with an empty line has no header fields, one without an empty line
is all header (empty body). A field is its first line and its folded continuation lines (§2.2.3: a
line starting with SP or HTAB), joined by their CRLFs, without its final CRLF. A line without a colon
is a field too (its name is the whole line): the splitter never refuses, policy decides.
"""

from __future__ import annotations

CRLF = b"\r\n"
_EMPTY_LINE = b"\r\n\r\n"  # the end of the last field and the empty line after it


def header_size(data: bytes, limit: int | None = None) -> int:
    """How many bytes of ``data`` the header section takes: its lines with their CRLFs, not the empty
    line after them (the body starts at ``header_size + 2``); all of ``data`` when there is no empty line.

    With ``limit`` the search stops after ``limit + 4`` bytes, so a 10 MB body is not scanned for a
    header section it cannot hold: a result over ``limit`` means "too large", not the exact size."""
    if data.startswith(CRLF):
        return 0
    end = data.find(_EMPTY_LINE, 0, len(data) if limit is None else limit + len(_EMPTY_LINE))
    return end + 2 if end >= 0 else len(data)


def fields(head: bytes) -> list[bytes]:
    """The fields of a header section (``data[:header_size(data)]``), each without its final CRLF."""
    out: list[bytes] = []
    if not head:
        return out
    for line in head.removesuffix(CRLF).split(CRLF):
        if line[:1] in (b" ", b"\t") and out:  # RFC 5322 §2.2.3: a folded continuation line
            out[-1] += CRLF + line
        else:
            out.append(line)
    return out


def split(data: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, body): the fields as ``fields`` gives them, the body after the empty line."""
    size = header_size(data)
    return fields(data[:size]), data[size + 2 :]


def field_name(field: bytes) -> bytes:
    """The lower-cased name of a field (before its first colon, blanks stripped)."""
    return field.split(b":", 1)[0].strip().lower()


__all__ = ["CRLF", "field_name", "fields", "header_size", "split"]
