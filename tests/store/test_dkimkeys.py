"""DKIM key material: generation, TXT records, encryption at rest (DESIGN §5, §7)."""

from __future__ import annotations

import base64
import json
import re

import dkim
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from relay.mail.dkimkeys import (
    DomainKeys,
    SecretBox,
    SecretBoxError,
    load_ed25519_private,
    load_rsa_private,
    new_domain_keys,
    public_records,
    split_txt,
    zone_txt,
)

DATA = b"The quick brown fox"


@pytest.fixture(scope="module")
def keys() -> DomainKeys:
    return new_domain_keys("example.com")


def _tags(txt: str) -> dict[str, str]:
    """Parse a DKIM key record (RFC 6376 §3.6.1 tag=value list)."""
    return dict(part.strip().split("=", 1) for part in txt.split(";") if part.strip())


def test_selectors_and_record_names(keys: DomainKeys) -> None:
    assert re.fullmatch(r"atmos[a-z0-9]{6}", keys.selector)
    assert keys.rsa_selector == keys.selector + "r"
    assert keys.ed25519_selector == keys.selector + "e"
    assert keys.rsa_record_name == f"{keys.selector}r._domainkey.example.com"
    assert keys.ed25519_record_name == f"{keys.selector}e._domainkey.example.com"
    assert new_domain_keys("example.com").selector != keys.selector
    assert "PRIVATE" not in repr(keys)


def test_rsa_txt_verifies_a_signature_made_with_the_private_key(keys: DomainKeys) -> None:
    tags = _tags(keys.rsa_txt)
    assert (tags["v"], tags["k"]) == ("DKIM1", "rsa")
    public = serialization.load_der_public_key(base64.b64decode(tags["p"]))
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    private = load_rsa_private(keys.rsa_private_pem)
    signature = private.sign(DATA, padding.PKCS1v15(), hashes.SHA256())
    public.verify(signature, DATA, padding.PKCS1v15(), hashes.SHA256())  # raises if it does not match


def test_ed25519_txt_is_the_raw_key_and_verifies(keys: DomainKeys) -> None:
    tags = _tags(keys.ed25519_txt)
    assert (tags["v"], tags["k"]) == ("DKIM1", "ed25519")
    raw = base64.b64decode(tags["p"])
    assert len(raw) == 32 and len(keys.ed25519_private_raw) == 32
    public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    public.verify(load_ed25519_private(keys.ed25519_private_raw).sign(DATA), DATA)


def test_from_private_rebuilds_the_records(keys: DomainKeys) -> None:
    rebuilt = DomainKeys.from_private(
        "example.com", keys.selector, keys.rsa_private_pem, keys.ed25519_private_raw
    )
    assert rebuilt == keys


def test_dkimpy_signs_and_verifies_with_the_rsa_key(keys: DomainKeys) -> None:
    """The PEM is PKCS#1 so dkimpy reads it too; the TXT value is a record dkimpy accepts."""
    message = b"From: a@example.com\r\nTo: b@dest.example\r\nSubject: hi\r\n\r\nhello\r\n"
    header = dkim.sign(message, keys.rsa_selector.encode(), b"example.com", keys.rsa_private_pem)
    records = {keys.rsa_record_name + ".": keys.rsa_txt.encode()}

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        return records.get(name.decode() if isinstance(name, bytes) else name, b"")

    assert dkim.verify(header + message, dnsfunc=dnsfunc)


def test_split_txt_keeps_strings_within_255_bytes(keys: DomainKeys) -> None:
    parts = split_txt(keys.rsa_txt)
    assert len(parts) == 2
    assert all(len(p.encode()) <= 255 for p in parts)
    assert "".join(parts) == keys.rsa_txt  # verifiers concatenate without separators
    assert split_txt(keys.ed25519_txt) == [keys.ed25519_txt]
    assert split_txt("") == [""]
    assert split_txt("a" * 255) == ["a" * 255]
    assert split_txt("a" * 256) == ["a" * 255, "a"]


def test_split_txt_never_cuts_a_utf8_sequence() -> None:
    value = "a" * 254 + "é" + "b"
    parts = split_txt(value)
    assert parts == ["a" * 254, "éb"]


def test_zone_txt_quotes_each_string() -> None:
    assert zone_txt("a" * 256) == f'"{"a" * 255}" "a"'
    assert zone_txt('say "hi"\\') == '"say \\"hi\\"\\\\"'


def test_secret_box_round_trip() -> None:
    box = SecretBox(b"relay secret")
    blob = box.encrypt(b"private key", aad=b"example.com")
    assert blob[:1] == b"\x01" and b"private key" not in blob
    assert box.encrypt(b"private key", aad=b"example.com") != blob  # fresh nonce every time
    assert SecretBox(b"relay secret").decrypt(blob, aad=b"example.com") == b"private key"


def test_secret_box_wrong_secret_or_tampering_is_a_clear_error() -> None:
    blob = SecretBox(b"relay secret").encrypt(b"private key", aad=b"example.com")
    with pytest.raises(SecretBoxError, match="wrong relay secret"):
        SecretBox(b"another secret").decrypt(blob, aad=b"example.com")
    with pytest.raises(SecretBoxError):
        SecretBox(b"relay secret").decrypt(blob, aad=b"other.example")  # moved to another row
    with pytest.raises(SecretBoxError):
        SecretBox(b"relay secret").decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), aad=b"example.com")
    with pytest.raises(SecretBoxError, match="known version"):
        SecretBox(b"relay secret").decrypt(b"\x02" + blob[1:], aad=b"example.com")
    with pytest.raises(SecretBoxError):
        SecretBox(b"relay secret").decrypt(b"\x01short")
    with pytest.raises(ValueError, match="non-empty"):
        SecretBox(b"")


def test_records_are_json_ready_and_rebuild_from_stored_keys(keys: DomainKeys) -> None:
    records = keys.records()
    assert records["rsa"] == {
        "name": keys.rsa_record_name,
        "type": "TXT",
        "value": keys.rsa_txt,
        "strings": split_txt(keys.rsa_txt),
    }
    assert records["ed25519"]["name"] == keys.ed25519_record_name
    json.dumps(records)
    box = SecretBox(b"relay secret")  # the enrollment path: encrypt at rest, decrypt to show
    stored = box.encrypt(keys.rsa_private_pem), box.encrypt(keys.ed25519_private_raw)
    rebuilt = public_records("example.com", keys.selector, box.decrypt(stored[0]), box.decrypt(stored[1]))
    assert rebuilt == records
