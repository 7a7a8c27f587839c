import email
from email import policy

import pytest

from relay.errors import InvalidRequest
from web.compose import compose
from web.validate import parse_send_request

BASE = {"from": "hello@mail.example.com", "to": "a@example.org", "subject": "Hi", "text": "Hello"}


def parse(**changes: object) -> object:
    body = {**BASE, **changes}
    return parse_send_request({k: v for k, v in body.items() if v is not None}, max_recipients=3)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"from": None}, "from: required"),
        ({"from": 5}, "from: must be a string"),
        ({"from": "Bob <b@example.com>"}, "from: give a bare address"),
        ({"from": "nope"}, "from:"),
        ({"to": None}, "to: required"),
        ({"to": []}, "to: at least one"),
        ({"to": ["a@example.org", 3]}, "to: must be a string or an array"),
        ({"to": ["a@example.org", "bad"]}, r"to\[1\]"),
        ({"to": ["a@x.org", "b@x.org", "c@x.org", "d@x.org"]}, "at most 3 recipients"),
        ({"to": ["a@x.org", "A@x.org"]}, "duplicate"),
        ({"text": None}, "text: required unless html"),
        ({"subject": "a\r\nBcc: evil@x.org"}, "subject: must not contain line breaks"),
        ({"headers": {"X-Ok": "1\nBcc: x"}}, r"headers\.X-Ok"),
        ({"headers": {"DKIM-Signature": "x"}}, "reserved header"),
        ({"headers": {"From": "x"}}, "reserved header"),
        ({"headers": {"Bad Name": "x"}}, "not a valid header name"),
        ({"headers": ["x"]}, "headers: must be an object"),
        ({"category": "bulk mail!"}, "category"),
        ({"replyTo": 4}, "replyTo"),
        ({"frm": "x"}, "unknown field 'frm'"),
    ],
)
def test_invalid_requests_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse(**changes)


def test_not_an_object() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_send_request([1, 2], max_recipients=3)


def test_compose_text_only() -> None:
    req = parse(headers={"X-Campaign": "c1"}, replyTo=["r@mail.example.com"])
    raw = compose(req, now=0)  # type: ignore[arg-type]
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["From"] == "hello@mail.example.com"
    assert msg["To"] == "a@example.org"
    assert msg["Reply-To"] == "r@mail.example.com"
    assert msg["X-Campaign"] == "c1"
    assert msg["Message-ID"].endswith("@mail.example.com>")
    assert msg["Date"].datetime.timestamp() == 0
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "Hello"


def test_compose_html_makes_alternative_with_plain_first() -> None:
    raw = compose(parse(html="<p>Hello</p>"))  # type: ignore[arg-type]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]


def test_compose_non_ascii_subject_is_encoded() -> None:
    raw = compose(parse(subject="Grüße ✉", text="é"))  # type: ignore[arg-type]
    assert raw.isascii() is False or b"=?utf-8?" in raw
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "Grüße ✉"


@pytest.mark.parametrize("text", ["plain ascii", "Grüße, ça va? ✉", "x" * 3000, "line1\nline2\r\n.dot\n", ""])
def test_compose_body_round_trips(text: str) -> None:
    raw = compose(parse(text=text, html="<p>" + text + "</p>"))  # type: ignore[arg-type]
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=policy.default)
    plain, html = list(msg.iter_parts())
    assert plain.get_content().replace("\r\n", "\n").rstrip("\n") == text.replace("\r\n", "\n").rstrip("\n")
    assert html.get_content_type() == "text/html"
    assert text.replace("\r\n", "\n").rstrip("\n")[:50] in html.get_content().replace("\r\n", "\n")


def test_compose_html_only_and_long_custom_header() -> None:
    long = "v" * 50 + " " + "w" * 60 + " " + "z" * 40
    raw = compose(parse(text=None, html="<b>hi</b>", headers={"X-Long": long, "X-Uni": "naïve"}))  # type: ignore[arg-type]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "text/html"
    assert msg["X-Long"] == long and msg["X-Uni"] == "naïve"
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"))
