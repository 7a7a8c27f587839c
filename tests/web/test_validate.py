import base64
import email
from email import policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        ({"from": "Bob <nope>"}, "from:"),
        ({"from": "Bob <a@x.org> <b@x.org>"}, "from:"),
        ({"cc": ["ok@x.org", "bad"]}, r"cc\[1\]"),
        ({"bcc": 7}, "bcc: must be a string or an array"),
        ({"to": ["a@x.org", "b@x.org"], "cc": "c@x.org", "bcc": "d@x.org"}, "at most 3 recipients"),
        ({"attachments": {"filename": "a"}}, "attachments: must be an array"),
        ({"attachments": [{"filename": "a.txt"}]}, r"attachments\[0\]\.content: required"),
        ({"attachments": [{"filename": "a.txt", "content": "!!!"}]}, r"attachments\[0\]\.content: not valid base64"),
        ({"attachments": [{"content": "aGk="}]}, r"attachments\[0\]\.filename"),
        ({"attachments": [{"filename": "a", "content": "aGk=", "contentType": "nope"}]}, r"attachments\[0\]\.contentType"),
        ({"attachments": [{"filename": "a", "content": "aGk=", "contentId": "a b"}]}, r"attachments\[0\]\.contentId"),
        ({"attachments": [{"filename": "a", "content": "aGk=", "size": 2}]}, r"attachments\[0\]\.size: unknown"),
        ({"tags": "t"}, "tags: must be an array"),
        ({"tags": ["ok", "not ok"]}, r"tags\[1\]"),
        ({"tags": [str(i) for i in range(11)]}, "tags: at most 10"),
        ({"metadata": ["x"]}, "metadata: must be an object"),
        ({"metadata": {"k": 1}}, r"metadata\.k"),
        ({"metadata": {"bad key": "v"}}, r"metadata\.bad key"),
        ({"headers": {"Cc": "x@x.org"}}, "reserved header"),
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


def test_display_names_cc_bcc_and_encoded_words() -> None:
    req = parse(**{"from": "Ann Example <hello@mail.example.com>", "to": ['"Doe, John" <a@example.org>'],
                   "cc": "Zoë Ünïcode <c@example.org>", "bcc": ["hidden@example.org"],
                   "replyTo": "Support <r@mail.example.com>"})
    raw = compose(req)  # type: ignore[arg-type]
    assert raw.split(b"\r\n\r\n")[0].isascii()  # non-ASCII names are RFC 2047 words
    assert b"=?utf-8?" in raw
    assert b"hidden@example.org" not in raw and b"Bcc" not in raw
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["From"].addresses[0].display_name == "Ann Example"
    assert msg["To"].addresses[0].display_name == "Doe, John"
    assert msg["Cc"].addresses[0].display_name == "Zoë Ünïcode"
    assert msg["Reply-To"].addresses[0].addr_spec == "r@mail.example.com"
    assert req.recipients == ("a@example.org", "c@example.org", "hidden@example.org")  # type: ignore[attr-defined]


def test_attachments_mixed_and_inline_related() -> None:
    pdf = bytes(range(256)) * 40
    logo = b"\x89PNG fake"
    req = parse(html='<img src="cid:logo1">', attachments=[
        {"filename": "report.pdf", "content": base64.b64encode(pdf).decode(), "contentType": "application/pdf"},
        {"filename": "logo.png", "content": base64.b64encode(logo).decode(), "contentId": "logo1"},
        {"filename": "naïve résumé.txt", "content": base64.b64encode(b"hi").decode()},
    ])
    raw = compose(req)  # type: ignore[arg-type]
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))  # RFC 5322 §2.1.1
    assert max(len(line) for line in raw.split(b"\r\n") if line.startswith(b"AAECAwQF")) == 76  # RFC 2045 §6.8
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/mixed"
    related, report, resume = list(msg.iter_parts())
    assert related.get_content_type() == "multipart/related"
    alternative, inline = list(related.iter_parts())
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert inline["Content-ID"] == "<logo1>" and inline.get_content_disposition() == "inline"
    assert inline.get_content() == logo
    assert report.get_filename() == "report.pdf" and report.get_content() == pdf
    assert report.get_content_disposition() == "attachment"
    assert resume.get_filename() == "naïve résumé.txt" and resume.get_content_type() == "text/plain"


def test_attachment_total_size_limit_is_413() -> None:
    from relay.errors import PayloadTooLarge
    body = {**BASE, "attachments": [{"filename": "big.bin", "content": base64.b64encode(b"x" * 101).decode()}]}
    with pytest.raises(PayloadTooLarge, match="attachments"):
        parse_send_request(body, max_recipients=3, max_attachment_bytes=100)


def test_tags_and_metadata_kept() -> None:
    req = parse(tags=["welcome", "welcome", "v2"], metadata={"user_id": "42"})
    assert req.tags == ("welcome", "v2")  # type: ignore[attr-defined]
    assert req.metadata == (("user_id", "42"),)  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_any_address_string_is_refused_by_name_or_composes_without_injection(value: str, name: str) -> None:
    for candidate in (value, f"{name} <{value}>", f'"{name}" <a@example.org>'):
        try:
            req = parse(to=[candidate], cc=candidate)
        except InvalidRequest as exc:
            assert str(exc).startswith(("to[0]", "cc[0]", "to:", "cc:")), str(exc)
            continue
        raw = compose(req)  # type: ignore[arg-type]
        head = raw.split(b"\r\n\r\n", 1)[0]
        names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]
        assert names.count(b"to") == 1 and names.count(b"cc") == 1 and b"bcc" not in names  # no header injected
        assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize(("content", "cte", "charset"), [
    (b"name,city\nZoe,Koeln\n", "7bit", None),  # ASCII text: as it is, LF made CRLF
    ("Grüße aus Köln\r\nline with bare \r inside\n".encode(), "quoted-printable", "utf-8"),
    ("東京の天気は晴れです。\n".encode() * 20, "base64", "utf-8"),  # quoted-printable would triple it
    (b"caf\xe9 latin-1\n", "quoted-printable", None),  # not UTF-8: no charset is claimed
    (b"x" * 1200 + b"\n", "quoted-printable", None),  # a line over 998 octets is not 7bit (RFC 5322 §2.1.1)
])
def test_text_attachments_go_as_text(content: bytes, cte: str, charset: str | None) -> None:
    req = parse(attachments=[{"filename": "notes.txt", "content": base64.b64encode(content).decode(),
                              "contentType": "text/plain"}])
    raw = compose(req)  # type: ignore[arg-type]
    assert all(len(line) <= 998 for line in raw.split(b"\r\n")) and b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=policy.default)
    _, part = list(msg.iter_parts())
    assert part["Content-Transfer-Encoding"] == cte and part.get_content_charset() == charset
    assert part.get_filename() == "notes.txt" and part.get_content_disposition() == "attachment"
    canonical = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # RFC 2046 §4.1.1
    assert part.get_payload(decode=True) == (content if cte == "base64" else canonical)
