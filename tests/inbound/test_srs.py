"""SRS0 rewriting and reversal (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.inbound import srs

SECRET = b"s" * 32
DOMAIN = "relay.example"
NOW = 1_750_000_000.0
DAY = 86400.0


def test_round_trip_and_layout() -> None:
    address = srs.forward("Bob.Smith@Sender.Example", secret=SECRET, domain=DOMAIN, now=NOW)
    assert address is not None
    local, _, domain = address.rpartition("@")
    assert domain == DOMAIN
    tag, hash_, stamp, orig_domain, orig_local = local.split("=", 4)
    assert tag == "SRS0" and len(hash_) == srs.HASH_LENGTH and len(stamp) == 2
    assert (orig_domain, orig_local) == ("sender.example", "Bob.Smith")
    day = int(NOW // DAY) % 1024
    assert stamp == srs._B32[day >> 5] + srs._B32[day & 31]  # libsrs2's base32 day stamp
    assert srs.reverse(address, secret=SECRET, domain=DOMAIN, now=NOW) == "Bob.Smith@sender.example"
    assert srs.is_srs(address, domain=DOMAIN)


def test_case_changes_in_transit_still_verify() -> None:
    address = srs.forward("bob@sender.example", secret=SECRET, domain=DOMAIN, now=NOW)
    assert address is not None
    assert srs.reverse(address.upper(), secret=SECRET, domain=DOMAIN, now=NOW) == "BOB@sender.example"
    assert srs.reverse(address.lower(), secret=SECRET, domain=DOMAIN.upper(), now=NOW) == "bob@sender.example"


def test_age_window() -> None:
    address = srs.forward("bob@sender.example", secret=SECRET, domain=DOMAIN, now=NOW)
    assert address is not None
    assert srs.reverse(address, secret=SECRET, domain=DOMAIN, now=NOW + 21 * DAY) is not None
    assert srs.reverse(address, secret=SECRET, domain=DOMAIN, now=NOW + 22 * DAY) is None
    assert srs.reverse(address, secret=SECRET, domain=DOMAIN, now=NOW - DAY) is not None  # clock skew
    assert srs.reverse(address, secret=SECRET, domain=DOMAIN, now=NOW - 2 * DAY) is None


def test_forgeries_are_refused() -> None:
    address = srs.forward("bob@sender.example", secret=SECRET, domain=DOMAIN, now=NOW)
    assert address is not None
    local, _, _ = address.rpartition("@")
    _, hash_, stamp, _, _ = local.split("=", 4)
    forged = [
        address.replace("bob@", "eve@"),
        address.replace("sender.example", "evil.example"),
        address.replace(f"={hash_}=", "=aaaaaa="),
        address.replace(f"={stamp}=", "=AA="),
        f"{local}@other.example",
        address.replace("SRS0=", "SRS1="),
        "SRS0=@relay.example",
        "SRS0==AA=x.example=y@relay.example",
        "",
        "bob@relay.example",
    ]
    for bad in forged:
        assert srs.reverse(bad, secret=SECRET, domain=DOMAIN, now=NOW) is None, bad
    assert srs.reverse(address, secret=b"t" * 32, domain=DOMAIN, now=NOW) is None


@pytest.mark.parametrize(
    "sender",
    ["", "no-at-sign", '"quoted"@sender.example', "a%b@sender.example", "bob@[192.0.2.1]", "bøb@sender.example",
     "x" * 40 + "@sender.example"],
)
def test_senders_that_cannot_be_rewritten(sender: str) -> None:
    assert srs.forward(sender, secret=SECRET, domain=DOMAIN, now=NOW) is None


def test_local_part_never_exceeds_64_octets() -> None:
    for n in range(1, 64):
        address = srs.forward("a" * n + "@sender.example", secret=SECRET, domain=DOMAIN, now=NOW)
        if address is not None:
            assert len(address.rpartition("@")[0]) <= 64


@given(st.text(max_size=120))
def test_reverse_never_raises(text: str) -> None:
    srs.reverse(text, secret=SECRET, domain=DOMAIN, now=NOW)
    srs.reverse(f"SRS0={text}@{DOMAIN}", secret=SECRET, domain=DOMAIN, now=NOW)
