"""relay.dkim.sign without DNS: the tags it writes, oversigning, the shared body hash, folding, and the
signatures checked against the public keys with this package's own canonicalization. Verification by
independent implementations over real DNS is in test_verify_dkimpy.py and test_verify_opendkim.py."""

from __future__ import annotations

import base64
import hashlib
import re
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from dkim.canonicalization import Relaxed

import relay.dkim.signer as signer_module
from relay.dkim import DEFAULT_HEADERS, MUST_NOT_ADD, SigningKey, domain_signing_keys, sign
from relay.dkim.canon import relaxed_body, relaxed_header, split_message
from relay.dkim.signer import MAX_LINE
from tests.dkim.helpers import Identities, message, signature_fields, tags

NOW = 1_715_679_000


def h_list(field: bytes) -> list[str]:
    return tags(field)["h"].split(":")


def test_one_field_per_key_in_key_order(identities: Identities) -> None:
    signed = sign(message(), identities.keys, now=NOW)
    fields = signature_fields(signed)
    assert len(fields) == 3
    assert signed[sum(map(len, fields)) :] == message()  # the message itself is untouched below
    expected = [(k.domain, k.selector, k.algorithm) for k in identities.keys]
    assert [(tags(f)["d"], tags(f)["s"], tags(f)["a"]) for f in fields] == expected


def test_tags(identities: Identities) -> None:
    for field in signature_fields(sign(message(), identities.keys, now=NOW + 0.9)):
        t = tags(field)
        assert t["v"] == "1"
        assert t["c"] == "relaxed/relaxed"
        assert t["t"] == str(NOW)
        assert "l" not in t  # RFC 6376 §8.2: no body length limit
        assert "x" not in t
        assert set(t) == {"v", "a", "c", "d", "s", "t", "h", "bh", "b"}
        assert list(t)[-1] == "b"  # b= last: its value is what verifiers blank out


def test_default_time_is_now(identities: Identities) -> None:
    before = int(time.time())
    stamp = int(tags(signature_fields(sign(message(), identities.keys[:1]))[0])["t"])
    assert before <= stamp <= int(time.time())


def test_oversigning_lists_each_present_field_once_more(identities: Identities) -> None:
    msg = message(extra=b"Cc: dave@example.org\r\nCc: erin@example.org\r\n")
    names = h_list(signature_fields(sign(msg, identities.keys, now=NOW))[0])
    assert names == [
        "from", "from", "subject", "subject", "to", "to", "date", "date", "message-id", "message-id",
        "list-unsubscribe", "list-unsubscribe", "list-unsubscribe-post", "list-unsubscribe-post",
        "feedback-id", "feedback-id",
        "reply-to",  # absent: the guard entry alone
        "cc", "cc", "cc",  # two fields present: three entries
        "mime-version", "mime-version", "content-type", "content-type",
    ]


def test_absent_headers_are_not_signed_except_the_guard(identities: Identities) -> None:
    msg = b"From: a@member.test\r\nSubject: hi\r\n\r\nbody\r\n"
    key = identities.keys[:1]
    names = h_list(signature_fields(sign(msg, key, now=NOW))[0])
    # every default name appears: twice if present, once (the guard) if absent
    assert names == [n for name in DEFAULT_HEADERS for n in [name.lower()] * (2 if name in ("From", "Subject") else 1)]
    # a name outside the guard set is not listed when absent, and oversigned when present
    custom = [*DEFAULT_HEADERS, "In-Reply-To"]
    assert "in-reply-to" not in h_list(signature_fields(sign(msg, key, headers_to_sign=custom, now=NOW))[0])
    with_it = msg.replace(b"\r\n\r\n", b"\r\nIn-Reply-To: <p@x>\r\n\r\n")
    names = h_list(signature_fields(sign(with_it, key, headers_to_sign=custom, now=NOW))[0])
    assert names.count("in-reply-to") == 2
    # without a guard set only present fields are listed (From always is, RFC 6376 §5.4)
    assert h_list(signature_fields(sign(msg, key, guard=(), now=NOW))[0]) == ["from", "from", "subject", "subject"]
    no_from = b"Subject: hi\r\n\r\nbody\r\n"
    assert h_list(signature_fields(sign(no_from, key, guard=(), now=NOW))[0]) == ["from", "subject", "subject"]
    assert "from" in MUST_NOT_ADD


def test_header_names_match_case_insensitively(identities: Identities) -> None:
    msg = b"FROM: a@member.test\r\nsubject : hi\r\n\r\nbody\r\n"
    names = h_list(signature_fields(sign(msg, identities.keys[:1], headers_to_sign=["from", "SUBJECT"], now=NOW))[0])
    assert names == ["from", "from", "subject", "subject"]


def test_headers_to_sign_must_include_from(identities: Identities) -> None:
    with pytest.raises(ValueError, match="From"):
        sign(message(), identities.keys, headers_to_sign=["Subject", "To"])


def test_body_hash_computed_once_for_all_keys(identities: Identities, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = signer_module.relaxed_body

    def counting(body: bytes) -> bytes:
        calls.append(body)
        return real(body)

    monkeypatch.setattr(signer_module, "relaxed_body", counting)
    fields = signature_fields(sign(message(), identities.keys, now=NOW))
    assert len(calls) == 1
    bh = {tags(f)["bh"] for f in fields}
    body = split_message(message())[1]
    assert bh == {base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest()).decode()}


def test_keys_are_not_parsed_per_message(identities: Identities, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("PEM parsed while signing")

    monkeypatch.setattr(serialization, "load_pem_private_key", refuse)
    monkeypatch.setattr(ed25519.Ed25519PrivateKey, "from_private_bytes", refuse)
    assert len(signature_fields(sign(message(), identities.keys))) == 3


@pytest.mark.parametrize("domain", ["member.test", "a-rather-long-member-domain-name.example-organisation.co.uk"])
@pytest.mark.parametrize("count", [1, 2, 7])
def test_folded_lines_at_most_78(identities: Identities, domain: str, count: int) -> None:
    rsa_key, ed_key, _ = identities.keys
    keys = [SigningKey(domain, "atmosabcdefr", "rsa-sha256", rsa_key.key),
            SigningKey(domain, "atmosabcdefe", "ed25519-sha256", ed_key.key)]
    msg = message(extra=b"Cc: x@example.org\r\n" * count)
    fields = signature_fields(sign(msg, keys, now=NOW))
    for field in fields:
        lines = field.removesuffix(b"\r\n").split(b"\r\n")
        assert lines[0].startswith(b"DKIM-Signature: v=1; ")
        assert all(line.startswith(b"\t") for line in lines[1:])
        assert max(len(line) for line in lines) <= MAX_LINE, field.decode()
        assert b"\n" not in field.replace(b"\r\n", b"")


def _verify_locally(signed: bytes, index: int, public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> None:
    """Check one signature with our own canonicalization (RFC 6376 §3.7 steps spelled out)."""
    fields = signature_fields(signed)
    field = fields[index]
    rest = signed[sum(map(len, fields)) :]
    headers, body = split_message(rest)
    t = tags(field)
    assert t["bh"] == base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        by_name.setdefault(name.strip().lower(), []).append(value)
    data = b""
    for name in t["h"].split(":"):
        found = by_name.get(name.encode())
        if found:
            data += relaxed_header(name.encode(), found.pop())  # bottom-up, each field used once
    blanked = re.sub(rb"(\bb=)[A-Za-z0-9+/=\s]*$", rb"\1", field.removesuffix(b"\r\n"))
    name, value = blanked.split(b":", 1)
    data += relaxed_header(name, value)[:-2]
    sig = base64.b64decode(t["b"])
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        public.verify(sig, hashlib.sha256(data).digest())  # RFC 8463 §3: Ed25519 over the SHA-256


def test_signatures_check_with_public_keys(identities: Identities) -> None:
    signed = sign(message(), identities.keys, now=NOW)
    for i, key in enumerate(identities.keys):
        _verify_locally(signed, i, key.key.public_key())


def test_bare_lf_input_is_normalized(identities: Identities) -> None:
    crlf = message()
    lf = crlf.replace(b"\r\n", b"\n")
    signed_lf = sign(lf, identities.keys, now=NOW)
    # RSA PKCS#1 v1.5 and Ed25519 are deterministic: the same bytes as for the CRLF original
    assert signed_lf == sign(crlf, identities.keys, now=NOW)
    assert signed_lf.endswith(crlf)
    _verify_locally(signed_lf, 0, identities.keys[0].key.public_key())


def test_no_keys_returns_the_normalized_message() -> None:
    assert sign(b"From: a@b\n\nhi", []) == b"From: a@b\r\n\r\nhi\r\n"


def test_domain_signing_keys(identities: Identities) -> None:
    rsa_key, ed_key = domain_signing_keys(identities.member)
    assert (rsa_key.selector, rsa_key.algorithm) == (identities.member.selector + "r", "rsa-sha256")
    assert (ed_key.selector, ed_key.algorithm) == (identities.member.selector + "e", "ed25519-sha256")
    assert rsa_key.domain == ed_key.domain == "member.test"
    assert isinstance(rsa_key.key, rsa.RSAPrivateKey) and isinstance(ed_key.key, ed25519.Ed25519PrivateKey)


def test_signing_key_validation(identities: Identities) -> None:
    rsa_key, ed_key, _ = identities.keys
    with pytest.raises(TypeError):
        SigningKey("member.test", "s", "rsa-sha256", ed_key.key)
    with pytest.raises(TypeError):
        SigningKey("member.test", "s", "ed25519-sha256", rsa_key.key)
    with pytest.raises(ValueError, match="algorithm"):
        SigningKey("member.test", "s", "rsa-sha1", rsa_key.key)  # type: ignore[arg-type]
    for domain, selector in [("member.test; x=1", "s"), ("member.test", "s\r\nX: y"), ("", "s"), ("a..b", "s"),
                             ("member.test", "-s"), ("member.test", "s s")]:
        with pytest.raises(ValueError, match="labels"):
            SigningKey(domain, selector, "rsa-sha256", rsa_key.key)
    # the private key object is kept out of repr (and so out of logs)
    assert repr(rsa_key) == "SigningKey(domain='member.test', selector='atmostestr', algorithm='rsa-sha256')"
