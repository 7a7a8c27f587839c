"""Per-recipient preparation: member keys chosen by (DID, domain); forwarded replies ARC-sealed."""

from __future__ import annotations

import re
from pathlib import Path

import dkim
import pytest
import trio
import trio.testing

from relay.config import Config
from relay.delivery.prepare import Preparer
from relay.mail.dkimkeys import DomainKeys, SecretBox, new_domain_keys
from relay.mail.operatorkey import OperatorKeys
from relay.store import open_store
from relay.store.aio import AsyncStore
from spool import Envelope

SECRET = b"prepare-test-secret-0123456789"
OWNER, OTHER = "did:plc:owneraaaaaaaaaaaaaaaaaaa", "did:plc:otherbbbbbbbbbbbbbbbbbbb"
MESSAGE = b"From: a@owned.example\r\nTo: x@dest.example\r\nSubject: hi\r\nMessage-ID: <m@owned.example>\r\n\r\nhi\r\n"


def signers(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return re.findall(r"(?im)^DKIM-Signature:.*?\bd=([^;\s]+)", head.replace("\r\n\t", " ").replace("\r\n ", " "))


@pytest.mark.trio
async def test_member_keys_are_chosen_by_did_and_domain(tmp_path: Path) -> None:
    cfg = Config(operator_domain="relay.test", state_dir=str(tmp_path), secret_key=SECRET, public_url="https://r.test")
    store = AsyncStore(open_store("sqlite:///:memory:"))
    for did in (OWNER, OTHER):
        await store.create_member(did)
    keys, box = new_domain_keys("owned.example"), SecretBox(SECRET)
    await store.add_domain(OWNER, "owned.example", selector=keys.selector, rsa_private=box.encrypt(keys.rsa_private_pem),
                           ed25519_private=box.encrypt(keys.ed25519_private_raw), verify_token="t", state="verified")
    prepare = Preparer(cfg, store, OperatorKeys(tmp_path, SECRET))
    attrs = {"transactional": "1"}
    mine = await prepare(Envelope("a@owned.example", ("x@dest.example",), OWNER, attrs, 1.0), 1, "x@dest.example",
                         MESSAGE)
    assert signers(mine) == ["owned.example", "owned.example", "relay.test"]
    # A record spooled under another DID (however it got there) never gets the owner's signatures.
    theirs = await prepare(Envelope("a@owned.example", ("x@dest.example",), OTHER, attrs, 1.0), 2, "x@dest.example",
                           MESSAGE)
    assert signers(theirs) == ["relay.test"]


@pytest.mark.trio
async def test_forwarded_replies_are_arc_sealed_not_signed_as_ours(tmp_path: Path) -> None:
    cfg = Config(operator_domain="relay.test", state_dir=str(tmp_path), secret_key=SECRET, public_url="https://r.test")
    store = AsyncStore(open_store("sqlite:///:memory:"))
    prepare = Preparer(cfg, store, OperatorKeys(tmp_path, SECRET))
    reply = b"Authentication-Results: relay.test;\r\n\tdkim=none;\r\n\tarc=none\r\n" + MESSAGE
    env = Envelope("SRS0=x@relay.test", ("owner@mailbox.example",), OWNER, {"forward": "1", "arc": "1"}, 1.0)
    out = await prepare(env, 3, "owner@mailbox.example", reply)
    head = out.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"ARC-Seal: i=1;") and b"ARC-Message-Signature: i=1;" in head
    assert b"ARC-Authentication-Results: i=1; relay.test;" in head
    assert signers(out) == []
    assert out.endswith(reply)
    # The seal verifies (dkimpy's arc_verify, RFC 8617 §5.2) against the operator key's published record.
    record = OperatorKeys(tmp_path, SECRET).current().record("relay.test")
    published = {record["name"].encode() + b".": record["value"].encode()}

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        return published.get(name if name.endswith(b".") else name + b".")

    cv, _, comment = dkim.arc_verify(out, dnsfunc=txt)
    assert cv == dkim.CV_Pass, comment
    tampered = out.replace(b"Subject: hi", b"Subject: hi!")
    assert dkim.arc_verify(tampered, dnsfunc=txt)[0] == dkim.CV_Fail


def selectors(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    return re.findall(r"(?im)^DKIM-Signature:.*?\bs=([^;\s]+)", head)


@pytest.mark.trio
async def test_new_keys_of_a_domain_are_used_within_the_recheck_interval(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """Parsed keys are kept between messages, but a domain enrolled again with new keys (here, or by another
    process: the store is the truth) is signed with them once the cached entry is re-checked (1 s)."""
    cfg = Config(operator_domain="relay.test", state_dir=str(tmp_path), secret_key=SECRET, public_url="https://r.test")
    store = AsyncStore(open_store("sqlite:///:memory:"))
    await store.create_member(OWNER)
    box = SecretBox(SECRET)

    async def enroll(keys: DomainKeys) -> None:
        await store.add_domain(OWNER, "owned.example", selector=keys.selector,
                               rsa_private=box.encrypt(keys.rsa_private_pem),
                               ed25519_private=box.encrypt(keys.ed25519_private_raw), verify_token="t",
                               state="verified")

    old, new = new_domain_keys("owned.example"), new_domain_keys("owned.example")
    await enroll(old)
    prepare = Preparer(cfg, store, OperatorKeys(tmp_path, SECRET))
    env = Envelope("a@owned.example", ("x@dest.example",), OWNER, {"transactional": "1"}, 1.0)

    async def member_selectors() -> list[str]:
        return selectors(await prepare(env, 1, "x@dest.example", MESSAGE))[:-1]  # the last: the operator's

    assert await member_selectors() == [old.selector + "r", old.selector + "e"]
    first = await prepare._keys_for(OWNER, "owned.example")
    mock_clock.jump(1.1)
    assert await prepare._keys_for(OWNER, "owned.example") is first  # re-checked, row unchanged: not parsed again
    await store.call(lambda s: s.release_domain("owned.example"))
    await enroll(new)
    assert await member_selectors() == [old.selector + "r", old.selector + "e"]  # within the second: cached
    mock_clock.jump(1.1)
    assert await member_selectors() == [new.selector + "r", new.selector + "e"]
    await store.call(lambda s: s.release_domain("owned.example"))
    mock_clock.jump(1.1)
    assert await member_selectors() == []  # no keys any more: the operator's signature only
