import pytest

from relay.address import domain_of, is_did, normalize_domain, split_address


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("did:plc:abcdefghijklmnopqrstuvwx", True),
        ("did:plc:ABCDEFGHIJKLMNOPQRSTUVWX", False),
        ("did:plc:short", False),
        ("did:web:example.com", True),
        ("did:web:localhost%3A8080", True),
        ("did:key:z6Mk", False),
        ("alice.bsky.social", False),
    ],
)
def test_is_did(value: str, ok: bool) -> None:
    assert is_did(value) is ok


def test_split_and_normalize() -> None:
    assert split_address("Bob@Mail.Example.COM.") == ("Bob", "mail.example.com")
    assert domain_of("x@bücher.example") == "xn--bcher-kva.example"
    assert normalize_domain(" Example.ORG. ") == "example.org"


@pytest.mark.parametrize("bad", ["nobody", "@example.com", "a@", "a@localhost", "a b@example.com",
                                 "a@exa_mple.com", "a..b@example.com", "x" * 65 + "@example.com", "a@-x.com"])
def test_bad_addresses_name_the_problem(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        split_address(bad)
