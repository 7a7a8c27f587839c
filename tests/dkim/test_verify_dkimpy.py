"""Independent verification by dkimpy, keys looked up over real DNS: Knot on 127.0.0.1:<free port>
serves the three DKIM TXT records (RSA ones split into 255-byte strings, as published), queried by
dnspython through a resolver configured with that server only (never the system resolver).

dkimpy's ``dkim.verify`` checks the first signature alone, so every index is checked with
``dkim.DKIM(msg).verify(idx=i)``. Ed25519 verification in dkimpy needs PyNaCl.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dkim
import dns.rdatatype
import dns.resolver
import pytest

from relay.delivery.routing import parse_nameserver
from relay.dkim import sign
from tests.dkim.helpers import MEMBER, OPERATOR, OPERATOR_SELECTOR, Identities, message, signature_fields
from tests.peers.knot import KnotServer
from tests.peers.require import require_module


def _require_nacl() -> None:
    require_module("nacl.signing", "dkimpy needs PyNaCl to verify ed25519-sha256")


@pytest.fixture(scope="module")
def knot(identities: Identities, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with KnotServer(tmp_path_factory.mktemp("knot"), identities.zones()) as server:
        yield server


@pytest.fixture(scope="module")
def dnsfunc(knot: KnotServer) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc (name, timeout) -> TXT bytes, asking this Knot server alone."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [parse_nameserver(ns) for ns in knot.nameservers]
    resolver.lifetime = 3

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii"), dns.rdatatype.TXT, lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)  # type: ignore[attr-defined]

    return get_txt


def verify_all(msg: bytes, dnsfunc: object) -> list[bool]:
    """dkimpy's verdict on each signature (index 0 = topmost); a ValidationError counts as a fail."""
    results = []
    for i in range(len(signature_fields(msg))):
        try:
            results.append(bool(dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.DKIMException:
            results.append(False)
    return results


MESSAGES = {
    "typical": message(),
    "bare-lf": message().replace(b"\r\n", b"\n"),
    "empty-body": message(b""),
    "no-final-crlf": message(b"last line without CRLF  "),
    "100k": message(b"A line of text, with  runs\tof whitespace   \r\n" * 2300),
    "two-cc": message(extra=b"Cc: a@example.org\r\nCc: b@example.org\r\n"),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_dkimpy_verifies_every_signature(name: str, identities: Identities, dnsfunc: object, knot: KnotServer) -> None:
    _require_nacl()
    signed = sign(MESSAGES[name], identities.keys)
    assert verify_all(signed, dnsfunc) == [True, True, True]
    assert dkim.verify(signed, dnsfunc=dnsfunc)  # the module-level helper: the top signature only
    assert knot.queries(MEMBER).get("TXT", 0) >= 2 and knot.queries(OPERATOR).get("TXT", 0) >= 1


def _add_field_at_top(signed: bytes, field: bytes) -> bytes:
    fields = signature_fields(signed)
    top = sum(map(len, fields))
    return signed[:top] + field + signed[top:]


def _add_field_at_bottom(signed: bytes, field: bytes) -> bytes:
    head, sep, body = signed.partition(b"\r\n\r\n")
    return head + b"\r\n" + field.removesuffix(b"\r\n") + sep + body


TAMPERED = {
    "body changed": lambda m: m.replace(b"Hello Bob", b"Hello Bib"),
    "body appended": lambda m: m + b"P.S. click here\r\n",
    "subject changed": lambda m: m.replace(b"A folded", b"A FOLDED"),
    "second From at top": lambda m: _add_field_at_top(m, b"From: Mallory <m@evil.test>\r\n"),
    "second From at bottom": lambda m: _add_field_at_bottom(m, b"From: Mallory <m@evil.test>\r\n"),
    "Reply-To added": lambda m: _add_field_at_bottom(m, b"Reply-To: m@evil.test\r\n"),
    "second List-Unsubscribe": lambda m: _add_field_at_top(m, b"List-Unsubscribe: <https://evil.test/>\r\n"),
}


@pytest.mark.parametrize("what", list(TAMPERED))
def test_tampering_breaks_every_signature(what: str, identities: Identities, dnsfunc: object) -> None:
    _require_nacl()
    signed = sign(message(), identities.keys)
    tampered = TAMPERED[what](signed)
    assert tampered != signed
    assert verify_all(tampered, dnsfunc) == [False, False, False]


UNHARMED = {
    "Received added on top": lambda m: _add_field_at_top(m, b"Received: from relay.test by mx.example.org\r\n"),
    "unsigned field added": lambda m: _add_field_at_bottom(m, b"X-Spam-Score: 0.1\r\n"),
    "subject refolded": lambda m: m.replace(b"A folded\r\n  subject", b"A   folded subject"),
    "trailing blank lines": lambda m: m + b"\r\n\r\n",
}


@pytest.mark.parametrize("what", list(UNHARMED))
def test_changes_relaxed_canonicalization_allows(what: str, identities: Identities, dnsfunc: object) -> None:
    _require_nacl()
    signed = sign(message(), identities.keys)
    changed = UNHARMED[what](signed)
    assert changed != signed
    assert verify_all(changed, dnsfunc) == [True, True, True]


def test_key_changes_in_dns_are_seen(identities: Identities, knot: KnotServer, dnsfunc: object) -> None:
    _require_nacl()
    signed = sign(message(), identities.keys)
    knot.update(OPERATOR, [f"{OPERATOR_SELECTOR}._domainkey TXT \"v=DKIM1; k=rsa; p=\""])
    try:
        assert verify_all(signed, dnsfunc) == [True, True, False]  # p= empty: the key is revoked
    finally:
        knot.update(OPERATOR, identities.zones()[OPERATOR])
    assert verify_all(signed, dnsfunc) == [True, True, True]
