"""The labeler's identity: a secp256k1 signing key, its multibase form and the DID document.

    key = LabelerKey.load_or_create(cfg.state_path / "labeler" / "key.pem")   # 0600, made once
    sig = key.sign(data)          # SHA-256, ECDSA secp256k1, low-S, 64-byte compact r||s
    key.multibase                 # "z..." = base58btc(0xe7 0x01 + 33-byte compressed point)
    did_document(did, key, endpoint)

The multikey encoding is what the atproto SDKs expect for ``publicKeyMultibase`` with ``type:
Multikey`` (atproto cryptography spec; ``did:key:`` + the same string is the did:key form).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

__all__ = [
    "SECP256K1_MULTICODEC",
    "LabelerKey",
    "b58encode",
    "default_did",
    "did_document",
    "verify_compact",
]

SECP256K1_MULTICODEC = b"\xe7\x01"  # varint of 0xe7 (secp256k1-pub)
_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 n
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    """Bitcoin base58 (the 'z' multibase alphabet); leading zero bytes become '1'."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, rem = divmod(n, 58)
        out = _B58[rem] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


class LabelerKey:
    def __init__(self, private: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private.curve, ec.SECP256K1):
            raise TypeError("the labeler key must be secp256k1")
        self._private = private

    @classmethod
    def generate(cls) -> LabelerKey:
        return cls(ec.generate_private_key(ec.SECP256K1()))

    @classmethod
    def load_or_create(cls, path: Path) -> LabelerKey:
        """Read the PEM key at ``path``, creating it (mode 0600, O_EXCL) on first use."""
        try:
            pem = path.read_bytes()
            if pem.strip():
                return cls._load(pem, path)
            # Empty: a crash right after creating it (only the spool fsyncs, DESIGN §2); no label
            # can have been signed with a key that never reached the disk, so make a new one.
            path.unlink()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = cls.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return cls._load(path.read_bytes(), path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.pem())
        return key

    @classmethod
    def _load(cls, pem: bytes, path: Path) -> LabelerKey:
        private = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{path}: not an EC private key")
        return cls(private)

    def pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public_compressed(self) -> bytes:
        return self._private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )

    @property
    def multibase(self) -> str:
        return "z" + b58encode(SECP256K1_MULTICODEC + self.public_compressed)

    @property
    def did_key(self) -> str:
        return "did:key:" + self.multibase

    def sign(self, data: bytes) -> bytes:
        """ECDSA over SHA-256(data), low-S normalized, as 64 bytes r||s (atproto cryptography spec)."""
        r, s = decode_dss_signature(self._private.sign(data, ec.ECDSA(hashes.SHA256())))
        if s > _ORDER // 2:
            s = _ORDER - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, data: bytes, sig: bytes) -> bool:
        return verify_compact(self._private.public_key(), data, sig)


def verify_compact(public: ec.EllipticCurvePublicKey, data: bytes, sig: bytes) -> bool:
    """Check a 64-byte low-S compact signature (high-S is refused, as atproto verifiers do)."""
    from cryptography.exceptions import InvalidSignature

    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if s > _ORDER // 2:
        return False
    try:
        public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def default_did(public_url: str) -> str:
    """``did:web:<host>`` of the public URL; a port is percent-encoded (did:web spec)."""
    parts = urllib.parse.urlsplit(public_url)
    host = (parts.hostname or "localhost").lower()
    if parts.port is not None and parts.port not in (80, 443):
        return f"did:web:{host}%3A{parts.port}"
    return f"did:web:{host}"


def did_document(did: str, key: LabelerKey, endpoint: str) -> dict[str, Any]:
    """The labeler's DID document: ``#atproto_label`` key and ``#atproto_labeler`` service."""
    return {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1",
        ],
        "id": did,
        "verificationMethod": [
            {
                "id": f"{did}#atproto_label",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": key.multibase,
            }
        ],
        "service": [
            {"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": endpoint.rstrip("/")}
        ],
    }
