"""Enrolment: a member DID and one of its sending domains, with the domain's DKIM keys (DESIGN §3).

The one implementation behind ``atmos admin enroll``, the ``--dev`` demo member and the member pages'
``POST /enroll/domain``. A synchronous function over a ``Store``: the CLI and the dev set-up call it
directly, the web through ``AsyncStore.call`` (a worker thread).

The rules, whoever asks:
- A domain another DID has verified is taken (DomainTaken): its owner releases it first.
- A domain another DID holds only pending is a competing claim: this DID gets its own pending row
  with its own keys and challenge token, and the first DNS proof wins (relay.dns.verifier).
- ``vouched`` (the operator's ``--skip-dns``, the dev demo member) marks the domain verified without
  DNS; on a competing claim it takes the domain and the pending claimants lose it.
- Enrolling a domain the DID already holds changes nothing (except ``vouched`` verifying it): its
  keys stay, so records already published stay right.
- The DKIM private keys are stored encrypted with the relay's secret (SecretBox); the challenge
  token is bound to the DID (relay.dns.challenge).

``keys`` are made by the caller (``new_domain_keys``, ~0.1 s of CPU: from Trio, in a worker thread)
and used only when a new row is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import Config
from relay.dns.challenge import verify_token
from relay.mail.dkimkeys import DomainKeys, SecretBox
from relay.members.apikey import generate_api_key, hash_api_key
from relay.store.base import DomainTaken, Store
from relay.store.rows import Domain


@dataclass(frozen=True, slots=True)
class Enrolment:
    row: Domain  # the DID's row of the domain, as stored now
    fresh: bool  # written with the caller's new keys (else the DID's existing keys are kept)
    token: str  # the DID-bound challenge token (``_atmos-challenge.<domain> TXT atmos-verify=<token>``)


def enroll_domain(store: Store, cfg: Config, did: str, domain: str, keys: DomainKeys, *,
                  handle: str | None = None, vouched: bool = False) -> Enrolment:
    """Create (or update the handle of) the member and enroll ``domain`` under it, by the rules above.

    ``did`` and ``domain`` are checked and normalized by the caller. Raises DomainTaken (verified by
    another DID) and DomainLimitReached (the DID has its maximum of domains) from the store."""
    if handle is not None or store.get_member(did) is None:  # else nothing to write (updated_at stays)
        store.create_member(did, handle)
    existing = store.get_domain(domain)
    if existing is not None and existing.did != did and existing.state == "verified":
        raise DomainTaken(domain)
    mine = _own_row(store, did, domain)
    token = verify_token(cfg.secret_key, did)
    fresh = mine is None
    if mine is None or (mine.claim and vouched):
        box = SecretBox(cfg.secret_key)
        store.add_domain(did=did, domain=domain, selector=mine.selector if mine else keys.selector,
                         rsa_private=mine.rsa_private if mine else box.encrypt(keys.rsa_private_pem),
                         ed25519_private=mine.ed25519_private if mine else box.encrypt(keys.ed25519_private_raw),
                         verify_token=token, state="verified" if vouched else "pending",
                         claim_ttl=cfg.dns.pending_claim_ttl)
    elif vouched:
        store.set_domain_state(domain, "verified")
    row = _own_row(store, did, domain)
    assert row is not None  # written above, or already there
    return Enrolment(row=row, fresh=fresh, token=token)


def issue_api_key(store: Store, did: str) -> str:
    """A new API key for ``did``; only its hash is stored, the old key stops working. (The running relay
    also drops its cached hash: web/pages.py does that through ``ApiKeyCache.forget``.)"""
    key = generate_api_key()
    store.set_api_key_hash(did, hash_api_key(key))
    return key


def _own_row(store: Store, did: str, domain: str) -> Domain | None:
    """The DID's own row of ``domain``: its enrolled domain or its competing pending claim."""
    return next((d for d in store.domains_for(did) if d.domain == domain), None)


__all__ = ["Enrolment", "enroll_domain", "issue_api_key"]
