"""DKIM key material for domain enrollment (DESIGN §5, §7).

Every member domain gets two keys under one base selector: ``<sel>r`` RSA-2048
(RFC 6376) and ``<sel>e`` Ed25519 (RFC 8463), both published as TXT records
at ``<selector>._domainkey.<domain>``. Private keys are stored encrypted with
``SecretBox`` (AES-256-GCM under a key derived from the relay secret).
"""

from __future__ import annotations

import base64
import os
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RSA_BITS = 2048
SELECTOR_PREFIX = "atmos"
_SELECTOR_CHARS = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class DomainKeys:
    domain: str
    selector: str  # base selector; the DNS selectors are <selector>r and <selector>e
    rsa_private_pem: bytes = field(repr=False)  # PKCS#1 PEM: readable by cryptography and dkimpy
    ed25519_private_raw: bytes = field(repr=False)  # raw 32-byte seed (RFC 8032 §5.1.5)
    rsa_txt: str
    ed25519_txt: str

    @property
    def rsa_selector(self) -> str:
        return self.selector + "r"

    @property
    def ed25519_selector(self) -> str:
        return self.selector + "e"

    @property
    def rsa_record_name(self) -> str:
        return f"{self.rsa_selector}._domainkey.{self.domain}"

    @property
    def ed25519_record_name(self) -> str:
        return f"{self.ed25519_selector}._domainkey.{self.domain}"

    def records(self) -> dict[str, dict[str, Any]]:
        """The two DNS records to publish, JSON-ready (``atmos admin``, /account)."""
        return {
            "rsa": _record(self.rsa_record_name, self.rsa_txt),
            "ed25519": _record(self.ed25519_record_name, self.ed25519_txt),
        }

    @classmethod
    def from_private(
        cls, domain: str, selector: str, rsa_private_pem: bytes, ed25519_private_raw: bytes
    ) -> DomainKeys:
        """Rebuild the public TXT values from stored (decrypted) private keys."""
        return cls(
            domain=domain,
            selector=selector,
            rsa_private_pem=rsa_private_pem,
            ed25519_private_raw=ed25519_private_raw,
            rsa_txt=rsa_txt(load_rsa_private(rsa_private_pem).public_key()),
            ed25519_txt=ed25519_txt(load_ed25519_private(ed25519_private_raw).public_key()),
        )


def public_records(
    domain: str, selector: str, rsa_private_pem: bytes, ed25519_private_raw: bytes
) -> dict[str, dict[str, Any]]:
    """``DomainKeys.records()`` for an enrolled domain, from its decrypted private keys."""
    return DomainKeys.from_private(domain, selector, rsa_private_pem, ed25519_private_raw).records()


def _record(name: str, value: str) -> dict[str, Any]:
    # "strings": how the value must be split in the zone (RFC 1035 §3.3.14), shown on /account.
    return {"name": name, "type": "TXT", "value": value, "strings": split_txt(value)}


def new_selector() -> str:
    return SELECTOR_PREFIX + "".join(secrets.choice(_SELECTOR_CHARS) for _ in range(6))


def new_domain_keys(domain: str, *, selector: str | None = None) -> DomainKeys:
    """Fresh RSA-2048 + Ed25519 keys. RSA generation takes ~0.1 s of CPU: from Trio,
    call it through ``trio.to_thread.run_sync``."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    fmt, none = serialization.PrivateFormat, serialization.NoEncryption()
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, fmt.TraditionalOpenSSL, none)
    raw = ed_key.private_bytes(serialization.Encoding.Raw, fmt.Raw, none)
    return DomainKeys(
        domain=domain,
        selector=selector or new_selector(),
        rsa_private_pem=pem,
        ed25519_private_raw=raw,
        rsa_txt=rsa_txt(rsa_key.public_key()),
        ed25519_txt=ed25519_txt(ed_key.public_key()),
    )


def rsa_txt(public: rsa.RSAPublicKey) -> str:
    """RFC 6376 §3.6.1: p= is base64 of the DER SubjectPublicKeyInfo."""
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def ed25519_txt(public: ed25519.Ed25519PublicKey) -> str:
    """RFC 8463 §4: p= is base64 of the raw 32-byte public key, not an SPKI."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def load_rsa_private(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("not an RSA private key")
    return key


def load_ed25519_private(raw: bytes) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(raw)


def split_txt(value: str) -> list[str]:
    """Split a TXT value into character-strings of at most 255 bytes (RFC 1035 §3.3.14).

    A 2048-bit RSA record (~410 bytes) needs two; verifiers concatenate them
    without separators (RFC 6376 §3.6.2.2). Never splits inside a UTF-8 sequence.
    """
    data = value.encode("utf-8")
    chunks: list[str] = []
    while len(data) > 255:
        cut = 255
        while data[cut] & 0xC0 == 0x80:  # continuation byte: back up to the character start
            cut -= 1
        chunks.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    chunks.append(data.decode("utf-8"))
    return chunks


def zone_txt(value: str) -> str:
    """The value as zone-file text: quoted 255-byte strings, e.g. ``"v=DKIM1; ..." "...AB"``."""
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in split_txt(value))


class SecretBoxError(ValueError):
    """The ciphertext cannot be opened: wrong relay secret, or corrupted data."""


class SecretBox:
    """AES-256-GCM for private keys at rest.

    Layout: version byte (0x01) | 12-byte random nonce | ciphertext+tag. The key
    is HKDF-SHA256(relay secret), so changing ATMOS_SECRET_KEY makes stored keys
    unreadable (SecretBoxError) rather than silently wrong. Pass the domain as
    ``aad`` to bind a ciphertext to its row.
    """

    VERSION = b"\x01"
    _INFO = b"atmosphere-relay dkim private key v1"

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("SecretBox needs a non-empty relay secret (ATMOS_SECRET_KEY)")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=self._INFO).derive(secret)
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        nonce = os.urandom(12)
        return self.VERSION + nonce + self._aead.encrypt(nonce, plaintext, self.VERSION + aad)

    def decrypt(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        if len(blob) < 1 + 12 + 16 or blob[:1] != self.VERSION:
            raise SecretBoxError("not an encrypted key blob of a known version")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], self.VERSION + aad)
        except InvalidTag:
            raise SecretBoxError(
                "cannot decrypt stored key: wrong relay secret (ATMOS_SECRET_KEY) or corrupted data"
            ) from None
