"""Per-recipient preparation of an outbound message: relay headers, then three DKIM signatures.

Runs at delivery time, once per recipient transaction, because the one-click unsubscribe URL
names the recipient (RFC 8058) and so each copy differs. Signatures, in order (DESIGN §5):
member domain RSA-2048 (``<sel>r``), member domain Ed25519 (``<sel>e``, RFC 8463), operator
domain RSA (feedback loops are keyed on it). DSNs the relay generates carry only the operator's.
Replies forwarded to a member's mailbox are not signed as if the operator wrote them: they get an
ARC set (RFC 8617, dkimpy's ``arc_sign`` with the operator key) over the Authentication-Results the
inbound listener recorded. Member keys are chosen by (DID, domain): a message spooled under one
DID is never signed with the keys of a domain another DID holds. Parsed key objects are cached:
parsing costs ~100 µs, signing ~210 µs. A cached entry is checked against the stored row at most once
per ``key_recheck`` seconds (1 s): when the domain's keys changed (released and enrolled again, a
competing claim promoted), by this process or another, the next message after that is signed with the
new keys; an unchanged row costs one store read per domain per second, not a parse per message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from relay.address import domain_of
from relay.config import Config
from relay.dkim.signer import SigningKey, domain_signing_keys, sign
from relay.dkim.verify import arc_seal
from relay.mail.dkimkeys import DomainKeys, SecretBox, load_rsa_private
from relay.mail.operatorkey import OperatorKeys
from relay.mail.outbound import rewrite
from relay.mail.unsubscribe import make_token, unsubscribe_url
from relay.store.aio import AsyncStore
from spool import Envelope

log = logging.getLogger("relay.delivery")


@dataclass(slots=True)
class _MemberKeys:
    keys: tuple[SigningKey, ...]
    stored: tuple[str, bytes, bytes] | None  # (selector, rsa, ed25519) of the row they came from; None: no row
    checked: float  # trio time of the last comparison with the stored row


class Preparer:
    def __init__(self, cfg: Config, store: AsyncStore, operator: OperatorKeys, *, key_recheck: float = 1.0) -> None:
        self._cfg = cfg
        self._store = store
        self._box = SecretBox(cfg.secret_key)
        self._operator = operator
        self._operator_key: SigningKey | None = None
        self._operator_checked = 0.0
        self._operator_lock = trio.Lock()  # one reader of the key file at a time
        self._member_keys: dict[tuple[str, str], _MemberKeys] = {}  # (did, domain) -> parsed keys
        self._key_recheck = key_recheck
        self._operator_pem: bytes | None = None

    async def __call__(self, env: Envelope, rcpt_id: int, rcpt: str, data: bytes) -> bytes:
        operator = await self._operator_signing_key()
        if env.attrs.get("arc") == "1" and not env.attrs.get("dsn"):
            assert self._operator_pem is not None and self._operator_key is not None
            seal = functools.partial(arc_seal, data, domain=self._cfg.operator_domain,
                                     selector=self._operator_key.selector, private_pem=self._operator_pem,
                                     authserv_id=self._cfg.banner_host)
            return await trio.to_thread.run_sync(seal)  # dkimpy is pure Python: off the event loop
        if env.attrs.get("dsn") or env.attrs.get("forward") or not env.mail_from:
            return await _signed(data, [operator])  # the relay's own mail (DSNs, forwarded replies): operator key only
        member_domain = domain_of(env.mail_from)
        transactional = env.attrs.get("transactional") == "1"
        url = None if transactional else unsubscribe_url(
            self._cfg.public_url, make_token(self._cfg.secret_key, env.did, rcpt))
        out = rewrite(data, did=env.did, category=env.attrs.get("category", ""), transactional=transactional,
                      member_domain=member_domain, unsubscribe_url=url)
        return await _signed(out, [*await self._keys_for(env.did, member_domain), operator])

    def forget(self, domain: str) -> None:
        """Drop cached keys (after a key change)."""
        for key in [k for k in self._member_keys if k[1] == domain]:
            del self._member_keys[key]

    async def _keys_for(self, did: str, domain: str) -> tuple[SigningKey, ...]:
        now = trio.current_time()
        cached = self._member_keys.get((did, domain))
        if cached is not None:
            if now - cached.checked < self._key_recheck:
                return cached.keys
            cached.checked = now  # deliveries meanwhile use these keys: one store read, not one per worker
        row = await self._store.get_domain(domain)
        if row is not None and row.did != did:
            log.warning("%s belongs to %s, not %s: signing with the operator key only", domain, row.did, did)
            row = None
        stored = (row.selector, row.rsa_private, row.ed25519_private) if row is not None else None
        if cached is not None and cached.stored == stored:
            return cached.keys
        if row is None or not row.rsa_private:
            log.warning("no DKIM keys for %s: signing with the operator key only", domain)
            keys: tuple[SigningKey, ...] = ()
        else:
            if cached is not None:
                log.info("DKIM keys of %s changed (selector %s): signing with the new ones", domain, row.selector)
            dk = DomainKeys.from_private(domain, row.selector, self._box.decrypt(row.rsa_private),
                                         self._box.decrypt(row.ed25519_private))
            keys = domain_signing_keys(dk)
        self._member_keys[(did, domain)] = _MemberKeys(keys, stored, now)
        return keys

    async def _operator_signing_key(self) -> SigningKey:
        # Re-read at most once a minute so `atmos admin dkim rotate` takes effect without a restart.
        async with self._operator_lock:
            now = trio.current_time()
            if self._operator_key is None or now - self._operator_checked > 60:
                current = await trio.to_thread.run_sync(self._operator.current)
                if self._operator_key is None or self._operator_key.selector != current.selector:
                    self._operator_key = SigningKey(self._cfg.operator_domain, current.selector, "rsa-sha256",
                                                    load_rsa_private(current.rsa_private_pem))
                    self._operator_pem = current.rsa_private_pem
                self._operator_checked = now
            return self._operator_key


# Hashing and canonicalizing the body (RFC 6376 §3.4) costs ~linear time in its size: a 10 MiB message
# would hold the event loop for a good part of a second, so big ones are signed in a worker thread.
# Small ones stay here. cryptography releases the GIL for the RSA/Ed25519 operations, but measured
# in scripts/bench (reused connections, one node) signing every message in a thread cost 30-40 % of the
# throughput: the worker's Python part (canonicalization) and the event loop then hand the GIL back and
# forth (each hand-off waits for the switch interval), which costs more than the signing itself.
_THREAD_SIGN_BYTES = 128 << 10


async def _signed(data: bytes, keys: Sequence[SigningKey]) -> bytes:
    if len(data) < _THREAD_SIGN_BYTES:
        return sign(data, keys)
    return await trio.to_thread.run_sync(sign, data, keys)
