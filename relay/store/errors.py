"""The store's errors, shared by every backend (relay.store.base lists them)."""

from __future__ import annotations

MAX_DOMAINS_PER_DID = 2


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    pass


class UnsupportedStore(StoreError):
    pass


class SchemaTooNew(StoreError):
    pass


class NotFound(StoreError, LookupError):
    pass


class InvalidRow(StoreError, ValueError):
    pass


class DomainLimitReached(StoreError):
    def __init__(self, did: str, limit: int = MAX_DOMAINS_PER_DID) -> None:
        super().__init__(f"{did} already has {limit} domains (the maximum)")
        self.did = did
        self.limit = limit


class DomainTaken(StoreError):
    def __init__(self, domain: str) -> None:
        super().__init__(f"{domain} is already enrolled by another member")
        self.domain = domain
