"""API keys: ``atmos_`` + 32 random bytes, bcrypt at rest, shown once (DESIGN §4).

bcrypt is slow on purpose (~250 ms at cost 12), so it never runs on the event
loop: ``ApiKeyCache.verify`` runs it in a worker thread (at most two at once,
so a flood of bad keys cannot take every core) and remembers a successful
check for a few minutes as an HMAC, so a client that reconnects for every
message pays microseconds, not a bcrypt. The queue for those threads is
bounded: past ``bcrypt_queue`` waiting checks, ``verify`` raises ``AuthBusy``
at once rather than make everyone wait behind a flood. Identical checks that
overlap (a client opening ten connections at once) share one bcrypt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

import bcrypt
import trio

from relay.errors import AuthBusy

KEY_PREFIX = "atmos_"
DEFAULT_COST = 12
_BCRYPT_MAX_BYTES = 72  # bcrypt ignores (bcrypt>=5: refuses) longer passwords


def generate_api_key() -> str:
    """``atmos_`` + base64url(32 random bytes), unpadded: 49 characters."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
    return KEY_PREFIX + raw.decode("ascii")


def hash_api_key(key: str, *, cost: int = DEFAULT_COST) -> str:
    return bcrypt.hashpw(key.encode("utf-8"), bcrypt.gensalt(rounds=cost)).decode("ascii")


def check_api_key(key: str, hashed: str) -> bool:
    """bcrypt check (constant-time compare inside); False for any malformed key or hash."""
    try:
        password = key.encode("utf-8")
        if not password or len(password) > _BCRYPT_MAX_BYTES:
            return False
        return bcrypt.checkpw(password, hashed.encode("ascii"))
    except (ValueError, TypeError, AttributeError):  # bad salt, non-ASCII hash, surrogates, non-str
        return False


class ApiKeyCache:
    """Remembers successful (did, key) checks in memory.

    An entry is HMAC-SHA256(process secret, did, key, stored hash): the key
    itself is never kept, and a regenerated key (new stored hash, even written
    by another process such as ``atmos admin``) no longer matches. ``forget``
    drops a DID at once when this process regenerates its key.
    """

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        max_entries: int = 10_000,
        bcrypt_threads: int = 2,
        bcrypt_queue: int = 16,
        cost: int = DEFAULT_COST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = secrets.token_bytes(32)
        self._cost = cost
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # did -> (mac, expiry)
        self._limiter = trio.CapacityLimiter(bcrypt_threads)
        self._queue = bcrypt_queue
        self._flights: dict[bytes, _Flight] = {}  # checks running now, by mac

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, did: str, key: str, stored_hash: str) -> bool:
        """True when this exact key was verified recently: no bcrypt needed."""
        return self._hit(did, self._mac(did, key, stored_hash))

    def running(self, did: str, key: str, stored_hash: str) -> bool:
        """True when this exact check is in a bcrypt thread now (``verify`` would share it)."""
        return self._mac(did, key, stored_hash) in self._flights

    async def verify(self, did: str, key: str, stored_hash: str) -> bool:
        """Raises ``AuthBusy`` when the bcrypt queue is full."""
        mac = self._mac(did, key, stored_hash)
        if self._hit(did, mac):
            return True
        while (running := self._flights.get(mac)) is not None:  # the same check is running: share its answer
            await running.done.wait()
            if running.finished:
                return running.ok
            # That caller was cancelled before its check ran: run our own.
        if self._limiter.statistics().tasks_waiting >= self._queue:
            raise AuthBusy(retry_after=1)
        flight = self._flights[mac] = _Flight()
        try:
            flight.ok = await trio.to_thread.run_sync(check_api_key, key, stored_hash, limiter=self._limiter)
            flight.finished = True
        finally:
            del self._flights[mac]
            flight.done.set()
        if flight.ok:
            self._remember(did, mac)
        return flight.ok

    @property
    def waiting(self) -> int:
        """bcrypt checks waiting for a thread."""
        return self._limiter.statistics().tasks_waiting

    async def hash(self, key: str) -> str:
        """bcrypt a new key off the event loop (regenerate: hash, store, then ``forget``)."""
        return await trio.to_thread.run_sync(
            functools.partial(hash_api_key, key, cost=self._cost), limiter=self._limiter
        )

    def forget(self, did: str) -> None:
        self._entries.pop(did, None)

    def _mac(self, did: str, key: str, stored_hash: str) -> bytes:
        # NUL separators: no two different (did, key, hash) triples give the same message.
        message = b"\0".join(s.encode("utf-8", "surrogatepass") for s in (did, key, stored_hash))
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _hit(self, did: str, mac: bytes) -> bool:
        entry = self._entries.get(did)
        if entry is None:
            return False
        cached, expiry = entry
        if self._clock() >= expiry:
            del self._entries[did]
            return False
        if not hmac.compare_digest(cached, mac):
            return False
        self._entries.move_to_end(did)
        return True

    def _remember(self, did: str, mac: bytes) -> None:
        self._entries[did] = (mac, self._clock() + self._ttl)
        self._entries.move_to_end(did)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)  # least recently used


class _Flight:
    __slots__ = ("done", "finished", "ok")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.finished = False  # False when done: the check never ran (its caller was cancelled)
        self.ok = False
