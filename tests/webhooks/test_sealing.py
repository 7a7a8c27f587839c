"""Webhook secrets are sealed at rest like DKIM keys, each ciphertext bound to its row (issue 15)."""

from __future__ import annotations

import pytest

from relay.mail.dkimkeys import SecretBox, SecretBoxError
from relay.members.webhooks import new_secret, open_secret, seal_secret
from relay.store.rows import Webhook

DID, OTHER = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
URL = "https://hooks.example/atmos"


def test_sealed_secret_opens_only_for_its_row_and_relay_secret() -> None:
    box = SecretBox(b"relay secret " * 3)
    secret = new_secret()
    sealed = seal_secret(box, DID, URL, secret)
    assert secret not in sealed and sealed.startswith("sealed:v1:")
    assert open_secret(box, Webhook(did=DID, url=URL, secret=sealed, events=())) == secret
    for did, url in ((OTHER, URL), (DID, "https://attacker.example/")):  # copied to another row
        with pytest.raises(SecretBoxError):
            open_secret(box, Webhook(did=did, url=url, secret=sealed, events=()))
    with pytest.raises(SecretBoxError):
        open_secret(SecretBox(b"another relay secret"), Webhook(did=DID, url=URL, secret=sealed, events=()))
    # Rows written before sealing stay readable.
    assert open_secret(box, Webhook(did=DID, url=URL, secret=secret, events=())) == secret
