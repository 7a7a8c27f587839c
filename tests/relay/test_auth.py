"""SMTP user names that survive every client (issue 18): DID, handle, verified sending domain, and a DID a
client split at its first colon (Postfix, curl --user, nodemailer 6.x): ``did`` + ``plc:<id>:<key>``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.apikey import ApiKeyCache, hash_api_key
from relay.auth import Authenticator, unmangle
from relay.errors import AuthFailed, InvalidDid
from relay.store import open_store
from relay.store.aio import AsyncStore

ALICE, BOB = "did:plc:aliceaaaaaaaaaaaaaaaaaaa", "did:web:bob.example.net"
KEY_A, KEY_B = "atmos_alicekey-_0123456789", "atmos_bobkey_-9876543210"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AsyncStore]:
    sync = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    sync.create_member(ALICE, "alice.example.com")
    sync.create_member(BOB, "bob.example.net")
    for did, key in ((ALICE, KEY_A), (BOB, KEY_B)):
        sync.set_api_key_hash(did, hash_api_key(key, cost=4))
    def add(did: str, domain: str, state: str) -> None:
        sync.add_domain(did, domain, selector="s", rsa_private=b"r", ed25519_private=b"e", verify_token="t",
                        state=state)  # type: ignore[arg-type]

    add(ALICE, "mail.alice.example", "verified")
    add(ALICE, "pending.alice.example", "pending")
    add(BOB, "alice.example.com", "verified")  # Bob's domain is named as Alice's handle: the key decides
    yield AsyncStore(sync)
    sync.close()


@pytest.mark.parametrize(("user", "key", "did"), [
    (ALICE, KEY_A, ALICE),
    ("alice.example.com", KEY_A, ALICE),  # handle
    ("@Alice.Example.com", KEY_A, ALICE),
    ("mail.alice.example", KEY_A, ALICE),  # verified sending domain
    ("MAIL.alice.example.", KEY_A, ALICE),
    ("alice.example.com", KEY_B, BOB),  # Bob's domain of that name
    ("did", "plc:aliceaaaaaaaaaaaaaaaaaaa:" + KEY_A, ALICE),  # split at the first colon
    ("did", "web:bob.example.net:" + KEY_B, BOB),
])
@pytest.mark.trio
async def test_every_user_name_form(store: AsyncStore, user: str, key: str, did: str) -> None:
    principal = await Authenticator(store, ApiKeyCache(cost=4)).authenticate(user, key)
    assert principal.did == did


@pytest.mark.parametrize(("user", "key"), [
    ("pending.alice.example", KEY_A),  # not verified: a claim is not an identity
    ("mail.alice.example", KEY_B),  # Bob's key for Alice's domain
    ("did", "plc:aliceaaaaaaaaaaaaaaaaaaa:" + KEY_B),
    ("did", KEY_A),  # no colon in the password: nothing to put back together
    ("nobody.example", KEY_A),
])
@pytest.mark.trio
async def test_wrong_pairs_fail(store: AsyncStore, user: str, key: str) -> None:
    with pytest.raises(AuthFailed):
        await Authenticator(store, ApiKeyCache(cost=4)).authenticate(user, key)


@pytest.mark.trio
async def test_malformed_mangled_did_is_invalid(store: AsyncStore) -> None:
    with pytest.raises(InvalidDid):
        await Authenticator(store, ApiKeyCache(cost=4)).authenticate("did", "nope:x:" + KEY_A)


def test_unmangle_splits_at_the_last_colon() -> None:
    assert unmangle("did", "plc:abc:key") == ("did:plc:abc", "key")
    assert unmangle("DID", "web:host.example:k") == ("did:web:host.example", "k")
    assert unmangle("alice.example.com", "a:b") == ("alice.example.com", "a:b")
