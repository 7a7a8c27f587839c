"""Fail-fast concurrency caps: at most ``total`` holders at once, at most ``per_key`` per key (a client IP).

For work a stranger can start and the relay must finish on their behalf, such as a sign-in, where every
step makes the relay fetch from servers the stranger chose: beyond the cap the caller is refused at
once (429 for one client over its share, 503 when the relay as a whole is busy), never queued, so
waiting work cannot pile up and one client cannot take every slot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class SlotsFull(Exception):
    def __init__(self, per_key: bool) -> None:
        super().__init__("too many at once from this client" if per_key else "too many at once")
        self.per_key = per_key  # True: this key's share is used up; False: the total is


class Slots:
    def __init__(self, total: int, per_key: int) -> None:
        if total < 1 or per_key < 1:
            raise ValueError("total and per_key must be at least 1")
        self.total = total
        self.per_key = per_key
        self._held: Counter[str] = Counter()
        self.in_use = 0
        self.refused = 0  # since start

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        if self._held[key] >= self.per_key or self.in_use >= self.total:
            self.refused += 1
            raise SlotsFull(per_key=self._held[key] >= self.per_key)
        self._held[key] += 1
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]  # no entry per client that came once: the map stays as small as in_use


__all__ = ["Slots", "SlotsFull"]
