"""``--dev`` first-run convenience: a demo member so a newcomer can send at once.

Creates ``did:plc:devdemo...`` with the verified domain ``demo.localhost`` and an
API key written to ``<state>/dev-credentials.json`` (0600). Never runs outside dev.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from relay.config import Config
from relay.mail.dkimkeys import new_domain_keys
from relay.members.enrolment import enroll_domain, issue_api_key
from relay.store.base import Store

DEMO_DID = "did:plc:devdemoaaaaaaaaaaaaaaaaa"
DEMO_DOMAIN = "demo.localhost"


def credentials_path(cfg: Config) -> Path:
    return cfg.state_path / "dev-credentials.json"


def ensure_demo_member(cfg: Config, store: Store) -> dict[str, Any]:
    path = credentials_path(cfg)
    if path.exists() and store.get_member(DEMO_DID) is not None:
        creds: dict[str, Any] = json.loads(path.read_text())
        return creds
    # An earlier run's domain keeps its keys (the fresh ones are then unused: a first run only).
    enroll_domain(store, cfg, DEMO_DID, DEMO_DOMAIN, new_domain_keys(DEMO_DOMAIN), handle=DEMO_DOMAIN, vouched=True)
    key = issue_api_key(store, DEMO_DID)
    creds = {"did": DEMO_DID, "domain": DEMO_DOMAIN, "api_key": key}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh, indent=2)
    return creds


def first_message_hint(cfg: Config, creds: dict[str, Any], http_url: str, submission: str) -> str:
    host, _, port = submission.rpartition(":")
    return "\n".join([
        "Send a first message (demo member, credentials in " + str(credentials_path(cfg)) + "):",
        f"  curl -s {http_url}/v1/send -H 'Authorization: Bearer {creds['api_key']}' \\",
        f"       -H 'X-Atmos-DID: {creds['did']}' -H 'Content-Type: application/json' \\",
        f"       -d '{{\"from\":\"hello@{creds['domain']}\",\"to\":\"you@example.com\","
        "\"subject\":\"Hi\",\"text\":\"First message\"}'",
        f"  swaks --server {host} --port {port} --tls --auth PLAIN \\",
        f"       --auth-user {creds['domain']} --auth-password {creds['api_key']} \\",
        f"       --from hello@{creds['domain']} --to you@example.com",
    ])
