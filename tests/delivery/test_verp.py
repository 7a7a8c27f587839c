"""VERP bounce addresses (DESIGN §5): round trip, forgeries, other domains, case changes, junk."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery import verp

SECRET = b"operator-verp-secret-0123456789abcdef"
DOMAIN = "relay.example"
ADDRESS = re.compile(r"bounces\+(0|[1-9][0-9]*)-([a-z2-7]{10})@relay\.example")


def make(rcpt_id: int, **kwargs: str) -> str:
    return verp.encode(
        rcpt_id, secret=SECRET, domain=kwargs.get("domain", DOMAIN), prefix=kwargs.get("prefix", "bounces")
    )


def read(address: str, *, secret: bytes = SECRET, domain: str = DOMAIN, prefix: str = "bounces") -> int | None:
    return verp.decode(address, secret=secret, domain=domain, prefix=prefix)


def test_the_address_format_and_its_tag() -> None:
    address = make(17)
    m = ADDRESS.fullmatch(address)
    assert m is not None and m.group(1) == "17"
    mac = hmac.new(SECRET, b"verp:17", hashlib.sha256).digest()
    assert m.group(2) == base64.b32encode(mac).decode().lower()[:10]
    assert read(address) == 17


@pytest.mark.parametrize("rcpt_id", [0, 1, 17, 999_999, 2**31, 2**63 - 1])
def test_round_trip(rcpt_id: int) -> None:
    assert read(make(rcpt_id)) == rcpt_id


def test_a_custom_prefix() -> None:
    address = make(5, prefix="bounce.v1")
    assert address.startswith("bounce.v1+5-")
    assert read(address, prefix="bounce.v1") == 5
    assert read(address) is None
    assert read(make(5), prefix="bounce.v1") is None


def test_forged_tags_are_refused() -> None:
    address = make(17)
    tag = address.split("-")[1].split("@")[0]
    assert read(address.replace("+17-", "+18-")) is None  # another recipient's id with this tag
    flipped = ("b" if tag[0] != "b" else "c") + tag[1:]
    assert read(address.replace(tag, flipped)) is None
    assert read(address.replace(tag, tag[:-1])) is None  # too short
    assert read(address.replace(tag, tag + "a")) is None  # too long
    assert read(address, secret=b"another secret") is None
    assert read(make(17).replace(tag, "a" * 10)) is None


def test_other_domains_and_prefixes_are_not_ours() -> None:
    address = make(17)
    assert read(address, domain="other.example") is None
    assert read(address.replace("@relay.example", "@relay.example.evil")) is None
    assert read(address.replace("@relay.example", "@sub.relay.example")) is None
    assert read("x" + address) is None
    assert read(address.replace("bounces+", "bounces-")) is None


def test_case_changes_are_tolerated() -> None:
    address = make(12345)
    assert read(address.upper()) == 12345
    assert read(address.title()) == 12345
    assert read(address, domain="RELAY.Example") == 12345
    assert read(address.upper(), prefix="BOUNCES") == 12345


def test_angle_brackets_and_spaces_are_tolerated() -> None:
    assert read(f"<{make(3)}>") == 3
    assert read(f"  {make(3)} ") == 3


def test_non_canonical_ids_are_refused() -> None:
    """An id of 017 would verify with 17's tag if ids were compared as numbers: one id, one address."""
    address = make(17)
    assert read(address.replace("+17-", "+017-")) is None
    assert read(address.replace("+17-", "++17-")) is None


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "@",
        "bounces",
        "bounces+",
        "bounces+@relay.example",
        "bounces+-@relay.example",
        "bounces+17@relay.example",
        "bounces+17-@relay.example",
        "bounces+x-aaaaaaaaaa@relay.example",
        "bounces+17-aaaaaaaaa1@relay.example",  # "1" is not base32
        "bounces+1" + "0" * 30 + "-aaaaaaaaaa@relay.example",
        "bounces+" + "9" * 5000 + "-aaaaaaaaaa@relay.example",  # beyond int() digit limits
        "bounces+9223372036854775808-aaaaaaaaaa@relay.example",  # 2**63
        "bounces+17-k3q9x2mb7a@relay.example@relay.example",
        "bounces+17-ｋ３ｑ９ｘ２ｍｂ７ａ@relay.example",  # fullwidth look-alikes
        "bounces+17-\u212a3q9x2mb7a@relay.example",  # KELVIN SIGN lowercases to "k"
        "bounces+١٧-k3q9x2mb7a@relay.example",  # Arabic-Indic digits
        "\x00\r\n",
        "\ud800@relay.example",
    ],
)
def test_junk_is_none(junk: str) -> None:
    assert read(junk) is None


def test_a_non_ascii_lookalike_of_a_real_address_is_refused() -> None:
    address = make(42)
    tag = address.split("-")[1].split("@")[0]
    if "k" in tag:
        assert read(address.replace("k", "\u212a")) is None
    assert read(address.replace("4", "٤")) is None


@pytest.mark.parametrize(
    ("kwargs", "rcpt_id"),
    [
        ({}, -1),
        ({}, 2**63),
        ({"prefix": ""}, 1),
        ({"prefix": "a+b"}, 1),
        ({"prefix": "a@b"}, 1),
        ({"prefix": "a b"}, 1),
        ({"domain": ""}, 1),
        ({"domain": "relay example"}, 1),
        ({"domain": "relay.example\r\nRCPT TO:<x@y>"}, 1),
        ({"domain": "-relay.example"}, 1),
        ({"domain": "x" * 300}, 1),
    ],
)
def test_encode_refuses_bad_parameters(kwargs: dict[str, str], rcpt_id: int) -> None:
    with pytest.raises(ValueError):
        make(rcpt_id, **kwargs)


def test_encode_refuses_an_empty_secret_and_decode_never_accepts_one() -> None:
    with pytest.raises(ValueError):
        verp.encode(1, secret=b"", domain=DOMAIN)
    assert read(make(1), secret=b"") is None


def test_encode_refuses_booleans() -> None:
    with pytest.raises(ValueError):
        verp.encode(True, secret=SECRET, domain=DOMAIN)


@given(st.text())
def test_decode_never_raises_on_text(junk: str) -> None:
    assert read(junk) is None or ADDRESS.fullmatch(junk.lower().strip().strip("<>")) is not None


@given(st.from_regex(r"\A(bounces|BOUNCES|x)\+[0-9]{0,25}-[a-zA-Z0-9]{0,12}@(relay\.example|RELAY\.EXAMPLE|x)\Z"))
def test_decode_never_raises_on_near_misses(candidate: str) -> None:
    result = read(candidate)
    if result is not None:  # only a genuine address decodes, in some case
        assert make(result).lower() == candidate.lower()


@given(st.integers(0, 2**63 - 1), st.binary(min_size=1, max_size=64))
def test_round_trip_property(rcpt_id: int, secret: bytes) -> None:
    address = verp.encode(rcpt_id, secret=secret, domain=DOMAIN)
    assert verp.decode(address, secret=secret, domain=DOMAIN) == rcpt_id
    assert verp.decode(address.upper(), secret=secret, domain=DOMAIN) == rcpt_id
    assert verp.decode(address, secret=secret + b"x", domain=DOMAIN) is None
