"""The confidential client's ES256 signing keys, generated once into ``<state_dir>/oauth/`` (mode 0600).

The file holds a JWK set; the first key signs client assertions, every key is published in the
JWKS (so a rotated-out key can stay listed while old assertions drain).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

KEY_FILE = "client-keys.json"


class ClientKeys:
    def __init__(self, keys: list[ECKey]) -> None:
        if not keys:
            raise ValueError("at least one client key is needed")
        self.keys = keys

    @property
    def signing(self) -> ECKey:
        return self.keys[0]

    @staticmethod
    def generate() -> ECKey:
        key = ECKey.generate_key("P-256", private=True, auto_kid=True)
        return key

    @classmethod
    def load_or_create(cls, directory: Path) -> ClientKeys:
        path = directory / KEY_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raw = None
        if raw is None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = cls.generate()
            data = json.dumps({"keys": [key.as_dict(private=True)]})
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process won the race: use its key
                raw = json.loads(path.read_text())
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(data)
                return cls([key])
        return cls([ECKey.import_key(k) for k in raw["keys"]])

    def jwks(self) -> dict[str, Any]:
        out = []
        for key in self.keys:
            public = dict(key.as_dict(private=False))
            public.update({"use": "sig", "alg": "ES256"})
            out.append(public)
        return {"keys": out}
