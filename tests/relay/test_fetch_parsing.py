"""The JSON-object fetch (relay.net.fetch.get_object, behind DID documents and OAuth metadata) against a
real HTTP server, and the hostile-input wrappers (relay.mail.parsing) behind the DSN and ARF parsers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from relay.delivery.dsn import DsnParseError, parse_dsn
from relay.inbound.arf import ArfParseError, is_arf, parse_arf
from relay.mail.parsing import parse_untrusted, report_type
from relay.net.fetch import FetchError, get_object
from tests.peers.httpd import QuietHandler, serving

PAGES = {"/ok": (200, b'{"id": "x"}'), "/list": (200, b"[1, 2]"), "/text": (200, b"<html>"),
         "/gone": (404, b'{"error": "nope"}'), "/deep": (200, b"[" * 100_000)}


class Handler(QuietHandler):
    def do_GET(self) -> None:
        status, body = PAGES[self.path]
        self.send_body(body, "application/json", status)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serving(Handler) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.trio
@pytest.mark.parametrize(("path", "problem"), [
    ("/list", "is not a JSON object"), ("/text", "is not JSON"), ("/deep", "is not JSON"),
    ("/gone", "no DID document at http://127.0.0.1:"), ("/big", "is 11 bytes, more than the 4 allowed"),
])
async def test_get_object_names_what_is_wrong(base: str, path: str, problem: str) -> None:
    async with httpx.AsyncClient() as client:
        assert await get_object(client, f"{base}/ok", max_bytes=1000, what="DID document") == {"id": "x"}
        with pytest.raises(FetchError, match=problem):
            await get_object(client, f"{base}{'/ok' if path == '/big' else path}",
                             max_bytes=4 if path == "/big" else 1_000_000, what="DID document")


def test_parse_untrusted_turns_any_exception_into_the_parsers_error() -> None:
    def boom(data: bytes) -> int:
        return [][len(data)]  # IndexError, as a parser meeting a truncated part would

    with pytest.raises(DsnParseError, match="cannot parse as a DSN: IndexError"):
        parse_untrusted(boom, b"x", DsnParseError, "a DSN")
    with pytest.raises(ArfParseError, match="its own words"):
        parse_untrusted(lambda d: (_ for _ in ()).throw(ArfParseError("its own words")), b"", ArfParseError, "x")
    assert parse_untrusted(len, b"abc", DsnParseError, "a DSN") == 3
    with pytest.raises(DsnParseError):
        parse_dsn(b"Subject: not a report\r\n\r\nhello\r\n")
    with pytest.raises(ArfParseError):
        parse_arf(b"Content-Type: multipart/report; report-type=feedback-report\r\n\r\nno parts\r\n")


@pytest.mark.parametrize(("data", "expected"), [
    (b"Content-Type: multipart/report; report-type=Feedback-Report; boundary=b\r\n\r\n", "feedback-report"),
    (b"Content-Type: multipart/report; report-type=delivery-status\r\n\r\n", "delivery-status"),
    (b"Content-Type: text/plain\r\n\r\nContent-Type: multipart/report; report-type=delivery-status\r\n", None),
    (b"\r\nContent-Type: multipart/report; report-type=delivery-status\r\n", None),  # that is the body
    (b"Content-Type: multipart/report\r\n\r\n", ""),
])
def test_report_type_reads_the_header_section_only(data: bytes, expected: str | None) -> None:
    assert report_type(data) == expected
    assert is_arf(data) == (expected == "feedback-report")
