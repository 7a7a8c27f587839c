"""Counters the relay keeps for operators: throughput and accept latency.

Everything here is in memory and resets at restart (as Prometheus counters may). ``GET /metrics``
(web.metrics) exposes them beside the spool's, the scheduler's and the event bus's own figures.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SOURCES = ("smtp", "http", "dsn", "forward")


class Histogram:
    """A cumulative Prometheus histogram with fixed bucket bounds (seconds)."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return


class RateWindow:
    """Per-second rates from monotonically growing counters, over a sliding window of samples."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, now: float, accepted: int, delivered: int) -> None:
        self._samples.append((now, accepted, delivered))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(accepted per s, delivered per s); zero until two samples exist."""
        if len(self._samples) < 2:
            return 0.0, 0.0
        t0, a0, d0 = self._samples[0]
        t1, a1, d1 = self._samples[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0
        return round(max(0, a1 - a0) / span, 3), round(max(0, d1 - d0) / span, 3)


class RelayMetrics:
    """What the accept path counts (the scheduler keeps its own delivered/deferred/bounced counters)."""

    def __init__(self, window: float = 10.0) -> None:
        self.accepted: Counter[str] = Counter()  # messages, by source
        self.accepted_recipients = 0
        self.accept_latency = Histogram()  # from the accept call to durable (fdatasync'ed) in the spool
        self.throughput = RateWindow(window)
        # Contained faults by where they happened: a connection ended by an exception the protocol code
        # did not handle (web.server). Each one is a bug to read in the log; none of them stops the relay.
        self.faults: Counter[str] = Counter()
        # SMTP refusals by (listener, reason): reasons are a closed set (relay.smtp.server, RelayError codes).
        self.smtp_refusals: Counter[tuple[str, str]] = Counter()

    def observe_accept(self, source: str, recipients: int, seconds: float) -> None:
        self.accepted[source if source in SOURCES else "smtp"] += 1
        self.accepted_recipients += recipients
        self.accept_latency.observe(seconds)

    def observe_refusal(self, listener: str, reason: str) -> None:
        self.smtp_refusals[(listener, reason)] += 1


__all__ = ["LATENCY_BUCKETS", "SOURCES", "Histogram", "RateWindow", "RelayMetrics"]
