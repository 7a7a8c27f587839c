"""The operator domain's DKIM key (the third signature, for the pool's feedback loops), with rotation.

Kept in ``<state>/dkim/operator.json`` (0600), private keys encrypted with the relay secret.
Rotation makes a new selector current; the old key stays listed (its DNS record must stay
published) for ``GRACE`` so mail signed just before the switch still verifies in transit.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.mail.dkimkeys import SecretBox, rsa_txt, split_txt

GRACE = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class OperatorKey:
    selector: str
    created: float
    retired: float | None
    rsa_private_pem: bytes

    def record(self, domain: str) -> dict[str, Any]:
        key = serialization.load_pem_private_key(self.rsa_private_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        value = rsa_txt(key.public_key())
        return {"name": f"{self.selector}._domainkey.{domain}", "type": "TXT", "value": value,
                "strings": split_txt(value), "retired": self.retired}


class OperatorKeys:
    def __init__(self, state_dir: Path, secret: bytes) -> None:
        self.path = state_dir / "dkim" / "operator.json"
        self._box = SecretBox(secret)

    def load(self) -> list[OperatorKey]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [OperatorKey(k["selector"], k["created"], k.get("retired"),
                            self._box.decrypt(base64.b64decode(k["rsa"]))) for k in raw["keys"]]

    def current(self) -> OperatorKey:
        """The signing key, created on first use."""
        keys = [k for k in self.load() if k.retired is None]
        return keys[-1] if keys else self.rotate()[0]

    def rotate(self, now: float | None = None) -> tuple[OperatorKey, list[OperatorKey]]:
        """New current key; retire the old one; drop keys retired longer than GRACE ago."""
        now = time.time() if now is None else now
        keys = [k if k.retired is not None else OperatorKey(k.selector, k.created, now, k.rsa_private_pem)
                for k in self.load()]
        keys = [k for k in keys if k.retired is None or now - k.retired < GRACE]
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
        new = OperatorKey(f"op{time.strftime('%Y%m', time.gmtime(now))}{secrets.token_hex(3)}", now, None, pem)
        keys.append(new)
        self._save(keys)
        return new, keys

    def _save(self, keys: list[OperatorKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"keys": [{"selector": k.selector, "created": k.created, "retired": k.retired,
                          "rsa": base64.b64encode(self._box.encrypt(k.rsa_private_pem)).decode()} for k in keys]}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, self.path)
