import pytest

from relay.accept.sender import check_header_from, check_sender, parse_headers
from relay.errors import DomainMismatch, HeaderTooLarge, InvalidRequest
from relay.members.auth import Principal

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


def test_the_whole_header_section_is_judged_never_a_prefix() -> None:
    """A second From: after 256 KiB of padding headers: read (and refused), or the section is too large."""
    padding = "".join(f"X-Pad-{i}: {'p' * 990}\n" for i in range(262))  # ~260 KiB of header fields
    second_from = msg("From: a@mail.example.com\n" + padding + "From: b@evil.example\n")
    with pytest.raises(HeaderTooLarge) as too_large:
        check_header_from(P, second_from)
    assert (too_large.value.smtp_reply.code, too_large.value.smtp_reply.enhanced) == (552, "5.3.4")
    assert too_large.value.http_status == 400
    # Under a larger limit the same message is read whole: the second From: is found.
    with pytest.raises(DomainMismatch, match="exactly one From"):
        check_header_from(P, second_from, limit=1 << 20)
    # A section exactly at the limit passes; one byte over does not.
    head = "From: a@mail.example.com\n"
    exact = msg(head)
    limit = exact.index(b"\r\n\r\n") + 2
    check_header_from(P, exact, limit=limit)
    with pytest.raises(HeaderTooLarge):
        check_header_from(P, exact, limit=limit - 1)
    # A body of any size is not part of the header section.
    check_header_from(P, msg(head) + b"x" * (1 << 20))
