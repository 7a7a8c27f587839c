"""Relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4) and message splitting, against the RFC's own
example (§3.4.5) and against dkimpy's implementation."""

from __future__ import annotations

import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.dkim.canon import normalize, relaxed_body, relaxed_header, split_message

# RFC 6376 §3.4.5, written out: <SP> and <HTAB> as the bytes they stand for.
RFC_EXAMPLE = (
    b"A: X\r\n"
    b"B : Y\t\r\n"
    b"\tZ  \r\n"
    b"\r\n"
    b" C \r\n"
    b"D \t E\r\n"
    b"\r\n"
    b"\r\n"
)


def test_rfc6376_example_relaxed_headers() -> None:
    fields, _ = split_message(RFC_EXAMPLE)
    assert fields == [(b"A", b" X"), (b"B ", b" Y\t\r\n\tZ  ")]
    assert b"".join(relaxed_header(n, v) for n, v in fields) == b"a:X\r\nb:Y Z\r\n"


def test_rfc6376_example_relaxed_body() -> None:
    _, body = split_message(RFC_EXAMPLE)
    assert body == b" C \r\nD \t E\r\n\r\n\r\n"
    assert relaxed_body(body) == b" C\r\nD E\r\n"


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"", b""),  # §3.4.4: an empty body stays empty under relaxed (simple would give CRLF)
        (b"\r\n", b""),
        (b"\r\n\r\n \t \r\n", b""),  # only whitespace lines: all of them are trailing empty lines
        (b"a\r\n", b"a\r\n"),
        (b"a  \t b\t\r\n", b"a b\r\n"),
        (b"\ta\r\n", b" a\r\n"),  # leading WSP is compressed, not removed
        (b"a\r\n\r\nb\r\n\r\n", b"a\r\n\r\nb\r\n"),  # inner empty lines stay
        (b"a" + b" " * 1000 + b"b\r\n", b"a b\r\n"),
        (b"a\r\n \r\n", b"a\r\n"),  # a trailing line of blanks becomes empty, then goes
        (b"no final line end  ", b"no final line end\r\n"),  # as if SMTP's CRLF were there
    ],
)
def test_relaxed_body_cases(body: bytes, canonical: bytes) -> None:
    assert relaxed_body(body) == canonical


@pytest.mark.parametrize(
    ("name", "value", "canonical"),
    [
        (b"Subject", b" hello", b"subject:hello\r\n"),
        (b"SUBJECT \t", b"\t hello  \t world \t", b"subject:hello world\r\n"),
        (b"To", b" a@x,\r\n\tb@y,\r\n  c@z", b"to:a@x, b@y, c@z\r\n"),
        (b"X-Empty", b"", b"x-empty:\r\n"),
        (b"X-Blank", b"   \r\n ", b"x-blank:\r\n"),
    ],
)
def test_relaxed_header_cases(name: bytes, value: bytes, canonical: bytes) -> None:
    assert relaxed_header(name, value) == canonical
    assert Relaxed.canonicalize_headers([(name, value)]) == [(canonical.split(b":", 1)[0], canonical.split(b":", 1)[1])]


_PIECES = [b" ", b"\t", b"a", b"b", b"\xc3\xa9", b"  "]
_LINE = st.lists(st.sampled_from([*_PIECES, b"\r"]), max_size=12).map(b"".join)
# Header values without lone CRs: RFC 5322 forbids them, and dkimpy strips them as whitespace
# where RFC 6376 §3.4.2 strips WSP (SP, HTAB) only.
_HEADER_LINE = st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12))
def test_relaxed_body_matches_dkimpy(lines: list[bytes]) -> None:
    # CRLF-terminated bodies, as sign() always passes (see canon.normalize); lone CRs included.
    body = b"".join(line + b"\r\n" for line in lines)
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=300, deadline=None)
@given(_HEADER_LINE, st.lists(_HEADER_LINE, max_size=3))
def test_relaxed_header_matches_dkimpy(first: bytes, continuations: list[bytes]) -> None:
    value = b"".join([first, *(b"\r\n" + (b"\t" if i % 2 else b" ") + c for i, c in enumerate(continuations))])
    ours = relaxed_header(b"X-Test", value)
    [(name, theirs)] = Relaxed.canonicalize_headers([(b"X-Test", value)])
    assert ours == name + b":" + theirs


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"", b""),
        (b"A: 1\r\n\r\nbody\r\n", b"A: 1\r\n\r\nbody\r\n"),  # already CRLF: the same object back
        (b"A: 1\n\nbody\n", b"A: 1\r\n\r\nbody\r\n"),
        (b"A: 1\r\n\nbody\r\nmore\n", b"A: 1\r\n\r\nbody\r\nmore\r\n"),  # mixed
        (b"A: 1\r\n\r\nno final CRLF", b"A: 1\r\n\r\nno final CRLF\r\n"),
        (b"A: 1\r\n\r\nlone\rCR\r\n", b"A: 1\r\n\r\nlone\rCR\r\n"),  # a lone CR is left alone
    ],
)
def test_normalize(raw: bytes, normal: bytes) -> None:
    assert normalize(raw) == normal


def test_normalize_returns_crlf_input_unchanged() -> None:
    raw = b"A: 1\r\n\r\nbody\r\n"
    assert normalize(raw) is raw


@pytest.mark.parametrize(
    ("message", "fields", "body"),
    [
        (b"A: 1\r\nB:2\r\n\r\nbody\r\n", [(b"A", b" 1"), (b"B", b"2")], b"body\r\n"),
        (b"A: 1\r\n continued\r\n\tagain\r\n\r\n", [(b"A", b" 1\r\n continued\r\n\tagain")], b""),
        (b"A: 1\r\nB: 2\r\n", [(b"A", b" 1"), (b"B", b" 2")], b""),  # no empty line: all header
        (b"\r\nbody only\r\n", [], b"body only\r\n"),
        (b"no colon line\r\nA: x: y\r\n\r\n", [(b"no colon line", b""), (b"A", b" x: y")], b""),
        (b"A: 1\r\n\r\n\r\nbody starts with an empty line\r\n", [(b"A", b" 1")],
         b"\r\nbody starts with an empty line\r\n"),
    ],
)
def test_split_message(message: bytes, fields: list[tuple[bytes, bytes]], body: bytes) -> None:
    assert split_message(message) == (fields, body)
