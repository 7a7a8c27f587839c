import pytest

from relay.auth import Principal
from relay.errors import DomainMismatch, InvalidRequest
from relay.sender import check_header_from, check_sender, parse_headers

P = Principal(did="did:plc:abcdefghijklmnopqrstuvwx", handle=None,
              domains=frozenset({"mail.example.com"}), pending=frozenset({"new.example.com"}))


def msg(headers: str) -> bytes:
    return (headers.replace("\n", "\r\n") + "\r\nbody\r\n").encode()


def test_enrolled_domain_passes_case_insensitively() -> None:
    assert check_sender(P, "Bob@MAIL.example.com") == "mail.example.com"


def test_other_domain_is_mismatch_and_names_it() -> None:
    with pytest.raises(DomainMismatch, match="evil.example is not enrolled"):
        check_sender(P, "x@evil.example")
    assert DomainMismatch().smtp_reply.code == 550 and DomainMismatch().smtp_reply.enhanced == "5.1.0"


def test_pending_domain_says_not_verified() -> None:
    with pytest.raises(DomainMismatch, match="not yet verified"):
        check_sender(P, "x@new.example.com")


def test_subdomain_is_not_the_domain() -> None:
    with pytest.raises(DomainMismatch):
        check_sender(P, "x@sub.mail.example.com")


def test_bad_syntax_is_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        check_sender(P, "nobody")


def test_header_from_checked() -> None:
    check_header_from(P, msg("From: Bob <bob@mail.example.com>\nSubject: x\n"))
    with pytest.raises(DomainMismatch, match="From: domain evil.example"):
        check_header_from(P, msg("From: Bob <bob@evil.example>\n"))
    with pytest.raises(DomainMismatch, match="exactly one From"):
        check_header_from(P, msg("Subject: none\n"))
    with pytest.raises(DomainMismatch, match="exactly one From"):
        check_header_from(P, msg("From: a@mail.example.com\nFrom: b@evil.example\n"))
    with pytest.raises(DomainMismatch):  # a group of authors: every one must be ours
        check_header_from(P, msg("From: a@mail.example.com, b@evil.example\n"))


def test_parse_headers_first_value_lowercase_names() -> None:
    h = parse_headers(msg("Subject: Hi\nX-Atmos-Category: Password-Reset\nFrom: a@mail.example.com\n"))
    assert h["subject"] == "Hi" and h["x-atmos-category"] == "Password-Reset"
