"""The one header splitter (relay.mail.headers) and its callers cutting every message at the same place."""

from __future__ import annotations

import pytest

from relay.accept.sender import header_fields, header_section
from relay.delivery.dsn import _header_section as dsn_header_section
from relay.dkim import canon
from relay.errors import HeaderTooLarge
from relay.inbound.handler import _without_our_results
from relay.mail import headers, outbound


@pytest.mark.parametrize(
    ("data", "fields", "body"),
    [
        (b"A: 1\r\nB:2\r\n\r\nbody\r\n", [b"A: 1", b"B:2"], b"body\r\n"),
        (b"A: 1\r\n more\r\n\tagain\r\nB: 2\r\n\r\n", [b"A: 1\r\n more\r\n\tagain", b"B: 2"], b""),
        (b"A: 1\r\nB: 2\r\n", [b"A: 1", b"B: 2"], b""),  # no empty line: all header
        (b"A: 1\r\nB: 2", [b"A: 1", b"B: 2"], b""),
        (b"\r\nFrom: body@evil.example\r\n\r\nmore\r\n", [], b"From: body@evil.example\r\n\r\nmore\r\n"),
        (b"", [], b""),
        # RFC 5322 §2.2/§2.3: a bare LF is not a line end, so LF LF does not end the header section.
        (b"A: 1\nB: 2\n\nbody\r\n\r\nrest", [b"A: 1\nB: 2\n\nbody"], b"rest"),
        (b" leading fold\r\nA: 1\r\n\r\n", [b" leading fold", b"A: 1"], b""),
    ],
)
def test_split(data: bytes, fields: list[bytes], body: bytes) -> None:
    assert headers.split(data) == (fields, body)
    size = headers.header_size(data)
    assert headers.fields(data[:size]) == fields
    assert data[size + 2:] == body


def test_header_size_limit_bounds_the_search() -> None:
    big = b"A: 1\r\n" + b"X: " + b"y" * 1000 + b"\r\n\r\nbody"
    assert headers.header_size(big) == len(big) - 6
    assert headers.header_size(big, limit=100) == len(big)  # not found within the limit: "too large"
    with pytest.raises(HeaderTooLarge):
        header_section(big, 100)
    assert header_section(big, 2000) == big[:-6]


def test_every_caller_cuts_where_the_splitter_does() -> None:
    # A message that starts with an empty line has no header: its body's "From:" is no header field
    # for the sender policy, the DKIM signer, the rewriter or the DSN.
    data = b"\r\nFrom: body@evil.example\r\n\r\nrest\r\n"
    assert header_fields(data) == []
    assert canon.split_message(data) == ([], data[2:])
    assert outbound.split_message(data) == ([], data)
    assert dsn_header_section(data) == b""
    folded = b"Subject: a\r\n b\r\nFrom: x@m.example\r\n\r\nbody\r\n"
    assert header_fields(folded) == [("subject", "a b"), ("from", "x@m.example")]
    assert canon.split_message(folded) == ([(b"Subject", b" a\r\n b"), (b"From", b" x@m.example")], b"body\r\n")
    fields, rest = outbound.split_message(folded)
    assert fields == [b"Subject: a\r\n b\r\n", b"From: x@m.example\r\n"] and b"".join(fields) + rest == folded


def test_forged_results_dropped_even_without_a_body() -> None:
    forged = b"Authentication-Results: relay.test;\r\n dkim=pass\r\nFrom: a@b.example\r\n"
    assert _without_our_results(forged, "relay.test") == b"From: a@b.example\r\n"
    theirs = b"Authentication-Results: other.example; dkim=pass\r\nFrom: a@b.example\r\n\r\nx"
    assert _without_our_results(theirs, "relay.test") is theirs
    assert _without_our_results(forged + b"\r\nbody\r\n", "RELAY.test") == b"From: a@b.example\r\n\r\nbody\r\n"
