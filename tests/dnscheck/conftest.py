"""Shared pieces of the DNS check tests: one config, one DID, DKIM keys made once per session."""

from __future__ import annotations

import pytest

from relay.config import Config, DnsConfig
from relay.dns.challenge import verify_token
from relay.dns.records import DnsRecord, records_for, zone_line
from relay.mail.dkimkeys import DomainKeys, new_domain_keys

SECRET = b"test secret for the dns checks"
DID = "did:plc:abcdefghijklmnopqrstuvwx"
TOKEN = verify_token(SECRET, DID)
RELAY_V4 = "192.0.2.10"
RELAY_V6 = "2001:db8::10"
CFG = Config(
    operator_domain="relay.test",
    dns=DnsConfig(relay_ips=(RELAY_V4, RELAY_V6), mx_host="mx.relay.test"),
    secret_key=SECRET,
)


@pytest.fixture(scope="session")
def keys() -> DomainKeys:
    return new_domain_keys("keys.test", selector="atmostest")


@pytest.fixture(scope="session")
def other_keys() -> DomainKeys:
    return new_domain_keys("keys.test", selector="atmostest")


def expected(domain: str, keys: DomainKeys, cfg: Config = CFG) -> list[DnsRecord]:
    return records_for(
        domain, did=DID, verify_token=TOKEN, selector=keys.selector,
        rsa_txt=keys.rsa_txt, ed25519_txt=keys.ed25519_txt, cfg=cfg,
    )


def zone(domain: str, keys: DomainKeys, *, drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> list[str]:
    """Zone-file lines publishing every expected record of ``domain`` except the kinds in ``drop``."""
    return [zone_line(r) for r in expected(domain, keys) if r.kind not in drop] + list(extra)
