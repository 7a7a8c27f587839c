"""Sharing delivery slots fairly when some destinations hang (Postfix's concurrency scheduler, simplified).

A tarpit (an MX that accepts the message and never answers the final dot) holds a slot for the
whole RFC 5321 §4.5.3.2.6 timeout, 10 minutes. Left alone, five such domains at ``per_destination``
slots each fill ``max_concurrency`` and nobody's mail moves. Three rules prevent that:

1. **Slow start per destination** (Postfix ``initial_destination_concurrency``): a destination starts
   with ``initial_concurrency`` slots and gains one per attempt the remote answered, up to
   ``per_destination``; a timeout halves its window (at least 1). A destination we know nothing
   about cannot take more than a few slots.
2. **Timing-out destinations share a small pool**: a destination whose last attempt timed out
   ("slow", ``strikes > 0``) also needs one of ``slow_concurrency`` slots, so together they never
   hold more than that; the rest stay for destinations that answer.
3. **Per MX address** (``HostHealth``): at most ``per_host`` connections to one IP whatever domains
   it serves, and for an address whose last attempts timed out, every timeout (the final dot
   included) is halved per consecutive timeout, down to ``min_timeout``. Shortening the final-dot
   wait risks a duplicate if the host did take the message (the reason for the RFC's 10 minutes),
   so it only applies to hosts that keep hanging, and one answer restores the full timeouts.

The functions are pure; ``HostHealth`` is plain state the transport consults.
"""

from __future__ import annotations

import dataclasses

import trio

from relay.smtp.client import ClientTimeouts


def next_window(window: int, *, timed_out: bool, per_destination: int) -> int:
    """A destination's concurrency window after one attempt (rule 1)."""
    if timed_out:
        return max(1, window // 2)
    return min(per_destination, window + 1)


def shortened(base: float, strikes: int, floor: float) -> float:
    """A timeout for a host with ``strikes`` consecutive timeouts (rule 3): base / 2**strikes, >= floor."""
    if strikes <= 0:
        return base
    return max(min(floor, base), base / (1 << min(strikes, 30)))


def hanging_timeouts(base: ClientTimeouts, strikes: int, floor: float) -> ClientTimeouts:
    """Every client timeout shortened for a host that keeps hanging (the base itself when strikes is 0)."""
    if strikes <= 0:
        return base
    values = {f.name: shortened(getattr(base, f.name), strikes, floor) for f in dataclasses.fields(base)}
    return ClientTimeouts(**values)


class HostHealth:
    """Per MX address (ip, port): consecutive timeouts and a connection limit (rule 3)."""

    def __init__(self, *, per_host: int = 20, min_timeout: float = 60.0, max_tracked: int = 100_000) -> None:
        self.per_host = per_host
        self._max = max_tracked
        self.min_timeout = min_timeout
        self._strikes: dict[tuple[str, int], int] = {}
        self._slots: dict[tuple[str, int], trio.CapacityLimiter] = {}

    def strikes(self, address: str, port: int) -> int:
        return self._strikes.get((address, port), 0)

    def timeouts(self, address: str, port: int, base: ClientTimeouts) -> ClientTimeouts:
        return hanging_timeouts(base, self.strikes(address, port), self.min_timeout)

    def slot(self, address: str, port: int) -> trio.CapacityLimiter:
        key = (address, port)
        limiter = self._slots.get(key)
        if limiter is None:
            limiter = self._slots[key] = trio.CapacityLimiter(self.per_host)
        return limiter

    def release(self, address: str, port: int) -> None:
        """Forget an address nobody is connected to (keeps memory bounded by the addresses in use)."""
        key = (address, port)
        limiter = self._slots.get(key)
        if limiter is not None and limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
            del self._slots[key]

    def record(self, address: str, port: int, *, timed_out: bool) -> None:
        key = (address, port)
        if timed_out:
            if key not in self._strikes and len(self._strikes) >= self._max:
                del self._strikes[next(iter(self._strikes))]  # the oldest entry: memory stays bounded
            self._strikes[key] = self._strikes.get(key, 0) + 1
        else:
            self._strikes.pop(key, None)
