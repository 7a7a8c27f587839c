"""Shared pieces of the DKIM tests: the three signing identities and their zones, a message shaped
like the relay's, and helpers to take signed messages apart."""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.dkim import SigningKey, domain_signing_keys
from relay.mail.dkimkeys import DomainKeys, new_domain_keys, zone_txt

MEMBER = "member.test"
OPERATOR = "relay.test"
OPERATOR_SELECTOR = "pool1"


@dataclass(frozen=True)
class Identities:
    member: DomainKeys
    operator: DomainKeys
    keys: tuple[SigningKey, SigningKey, SigningKey]  # member RSA, member Ed25519, operator RSA

    @classmethod
    def generate(cls) -> Identities:
        member = new_domain_keys(MEMBER, selector="atmostest")
        operator = new_domain_keys(OPERATOR, selector="unused")
        rsa, ed = domain_signing_keys(member)
        op = SigningKey(OPERATOR, OPERATOR_SELECTOR, "rsa-sha256", domain_signing_keys(operator)[0].key)
        return cls(member, operator, (rsa, ed, op))

    def zones(self) -> dict[str, list[str]]:
        """Zone-file lines for Knot, RSA values split into 255-byte strings as a member would publish."""
        m, o = self.member, self.operator
        return {
            MEMBER: [
                f"{m.rsa_selector}._domainkey TXT {zone_txt(m.rsa_txt)}",
                f"{m.ed25519_selector}._domainkey TXT {zone_txt(m.ed25519_txt)}",
            ],
            OPERATOR: [f"{OPERATOR_SELECTOR}._domainkey TXT {zone_txt(o.rsa_txt)}"],
        }


def message(body: bytes | None = None, *, extra: bytes = b"") -> bytes:
    """An outbound message shaped like the relay's: folded Subject, tabs and runs of spaces in headers
    and body, trailing WSP and trailing empty lines (all things relaxed canonicalization rewrites)."""
    if body is None:
        body = (
            b"Hello Bob,\r\n"
            b"\r\n"
            b"Some  text   with\truns of\t \twhitespace   \r\n"
            b"  indented line\r\n"
            b"caf\xc3\xa9 and an 8-bit line \r\n"
            b"\r\n"
            b"\r\n"
        )
    return (
        b"From: Alice Example <alice@member.test>\r\n"
        b"To: Bob <bob@example.org>,\r\n\tCarol <carol@example.org>\r\n"
        b"Subject: A folded\r\n  subject\twith   spaces \r\n"
        b"Date: Tue, 14 May 2024 09:30:00 +0000\r\n"
        b"Message-ID: <20240514093000.4f2a9c@member.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"List-Unsubscribe: <https://relay.test/u/abcdef>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"Feedback-ID: digest:did-plc-abc:atmos\r\n"
        b"X-Atmos-Member-Did: did:plc:abc\r\n" + extra + b"\r\n" + body
    )


_SIG_FIELD = re.compile(rb"DKIM-Signature:.*?\r\n(?![ \t])", re.DOTALL | re.IGNORECASE)


def signature_fields(signed: bytes) -> list[bytes]:
    """The DKIM-Signature fields at the top of a signed message, in order, each with its final CRLF."""
    fields = []
    pos = 0
    while (m := _SIG_FIELD.match(signed, pos)) is not None:
        fields.append(m.group(0))
        pos = m.end()
    return fields


def tags(field: bytes) -> dict[str, str]:
    """Tag=value pairs of a DKIM-Signature field, whitespace (folding included) removed."""
    value = re.sub(rb"\s+", b"", field.split(b":", 1)[1]).decode("ascii")
    return dict(part.split("=", 1) for part in value.split(";") if part)


def only_signature(signed: bytes, index: int) -> bytes:
    """The signed message keeping only its index-th DKIM-Signature (the signatures do not cover
    each other, so each still verifies alone)."""
    fields = signature_fields(signed)
    rest = signed[sum(len(f) for f in fields) :]
    return fields[index] + rest
