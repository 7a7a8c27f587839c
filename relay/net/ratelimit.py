"""Per-source token buckets: inbound connections (DESIGN §6) and authentication attempts.

Each source gets a bucket of ``burst`` tokens refilled at ``per_minute`` tokens a minute; a new
inbound connection (and each further transaction on it) takes one token, and so does each
authentication attempt that would run bcrypt (``relay.members.auth``). IPv6 sources are keyed by
their /64, the unit one host usually controls, so a single machine cannot dodge the limit by
walking through its own prefix; IPv4-mapped IPv6 addresses count as the IPv4 address.

Memory is bounded: past ``max_sources`` entries, buckets that have refilled completely (they
carry no information) are dropped, and if that is not enough the oldest ones go.

Pure apart from the injected clock (``time.monotonic`` by default).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


def source_key(host: str) -> str:
    """The rate-limit key for a peer address: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP (a test transport): limit it as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class TokenBuckets:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = 100_000,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._max = max_sources
        self._buckets: dict[str, _Bucket] = {}

    def take(self, host: str) -> bool:
        """Take one token for ``host``; False (and nothing taken) when its bucket is empty."""
        key = source_key(host)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def refund(self, host: str) -> None:
        """Give back a token taken by ``take`` (e.g. the attempt turned out to be legitimate)."""
        bucket = self._buckets.get(source_key(host))
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def retry_after(self, host: str) -> float:
        """Seconds until ``host`` has a token again (0 if it has one now)."""
        bucket = self._buckets.get(source_key(host))
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + (self._clock() - bucket.at) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        excess = len(self._buckets) - self._max + 1
        if excess > 0:  # dicts keep insertion order: the first keys are the oldest sources
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]
