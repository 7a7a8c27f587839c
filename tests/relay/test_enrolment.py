"""Enrolment written once (relay.members.enrolment): the rules the CLI, the dev set-up and the pages share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import Config
from relay.dns.challenge import verify_token
from relay.mail.dkimkeys import DomainKeys, SecretBox, new_domain_keys
from relay.members.apikey import check_api_key
from relay.members.enrolment import enroll_domain, issue_api_key
from relay.store.base import DomainLimitReached, DomainTaken
from relay.store.sqlite import SqliteStore

CFG = Config(secret_key=b"k" * 32)
ALICE, BOB = "did:plc:alicealicealicealicealic", "did:plc:bobbobbobbobbobbobbobbob"


@pytest.fixture(scope="module")
def keys() -> DomainKeys:
    return new_domain_keys("mail.example.com")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(str(tmp_path / "relay.db"))
    yield s
    s.close()


def test_new_domain_is_pending_with_encrypted_keys_and_the_did_token(store: SqliteStore, keys: DomainKeys) -> None:
    done = enroll_domain(store, CFG, ALICE, "mail.example.com", keys, handle="alice.example")
    assert done.fresh and done.row.state == "pending" and done.row.did == ALICE
    assert done.token == verify_token(CFG.secret_key, ALICE) and done.row.verify_token == done.token
    assert SecretBox(CFG.secret_key).decrypt(done.row.rsa_private) == keys.rsa_private_pem
    member = store.get_member(ALICE)
    assert member is not None and member.handle == "alice.example"


def test_enrolling_again_keeps_the_keys_and_the_handle(store: SqliteStore, keys: DomainKeys) -> None:
    first = enroll_domain(store, CFG, ALICE, "mail.example.com", keys, handle="alice.example")
    again = enroll_domain(store, CFG, ALICE, "mail.example.com", new_domain_keys("mail.example.com"))
    assert not again.fresh and again.row.selector == first.row.selector
    assert again.row.rsa_private == first.row.rsa_private and again.row.state == "pending"
    member = store.get_member(ALICE)
    assert member is not None and member.handle == "alice.example"
    vouched = enroll_domain(store, CFG, ALICE, "mail.example.com", keys, vouched=True)
    assert vouched.row.state == "verified" and vouched.row.rsa_private == first.row.rsa_private


def test_verified_elsewhere_is_taken_pending_elsewhere_is_a_competing_claim(
        store: SqliteStore, keys: DomainKeys) -> None:
    enroll_domain(store, CFG, ALICE, "mail.example.com", keys)
    claim = enroll_domain(store, CFG, BOB, "mail.example.com", keys)
    assert claim.fresh and claim.row.claim and claim.row.did == BOB and claim.row.state == "pending"
    domain = store.get_domain("mail.example.com")
    assert domain is not None and domain.did == ALICE  # the first claimant's row is untouched
    taken = enroll_domain(store, CFG, BOB, "mail.example.com", keys, vouched=True)  # the operator vouches
    assert taken.row.did == BOB and taken.row.state == "verified" and not taken.row.claim
    with pytest.raises(DomainTaken):
        enroll_domain(store, CFG, ALICE, "mail.example.com", keys)


def test_domain_limit_comes_from_the_store(store: SqliteStore, keys: DomainKeys) -> None:
    for name in ("a.example.com", "b.example.com"):
        enroll_domain(store, CFG, ALICE, name, keys)
    with pytest.raises(DomainLimitReached):
        enroll_domain(store, CFG, ALICE, "c.example.com", keys)


def test_issue_api_key_replaces_the_stored_hash(store: SqliteStore, keys: DomainKeys) -> None:
    enroll_domain(store, CFG, ALICE, "mail.example.com", keys)
    first = issue_api_key(store, ALICE)
    second = issue_api_key(store, ALICE)
    stored = store.get_api_key_hash(ALICE)
    assert stored is not None and first != second
    assert check_api_key(second, stored) and not check_api_key(first, stored)
