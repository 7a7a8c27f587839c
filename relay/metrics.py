"""Counters the relay keeps for operators: throughput, accept latency, and their Prometheus exposition.

Everything here is in memory and resets at restart (as Prometheus counters may). ``GET /metrics``
(web.metrics) serves ``render(services)``: prometheus_client writes the text format 0.0.4 from one
custom collector, ``RelayCollector``, which reads the figures where they live (the spool's stats, the
scheduler's and the acceptor's counters, the event bus) at scrape time, so nothing is counted twice.
Label values are a small closed set (states, sources, outcomes): no DIDs, addresses or destination
domains ever become labels.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from relay.services import Services

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

    def observe_accept(self, source: str, recipients: int, seconds: float) -> None:
        self.accepted[source if source in SOURCES else "smtp"] += 1
        self.accepted_recipients += recipients
        self.accept_latency.observe(seconds)


# ---- exposition ---------------------------------------------------------------------------------


class RelayCollector:
    """A prometheus_client collector over one running relay's services (read at each scrape)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        from relay.eventstream import QUEUE_STATES, queue_view  # here: eventstream imports Services, which imports us

        services = self.services
        spool_stats = services.spool.stats()
        now = time.time()
        view = queue_view(services.spool, services.scheduler, limit=0, now=now)
        metrics, bus, scheduler = services.metrics, services.bus, services.scheduler

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, value=value)

        by_state = GaugeMetricFamily("atmos_queue_recipients", "Live recipients in the spool by state.",
                                     labels=["state"])
        for state in QUEUE_STATES:
            by_state.add_metric([state], view.by_state.get(state, 0))
        yield by_state
        yield gauge("atmos_queue_messages", "Live messages in the spool.", spool_stats.live_messages)
        yield gauge("atmos_queue_oldest_deferred_age_seconds",
                    "Age of the oldest message with a deferred recipient (0 when none).",
                    round(now - view.oldest_deferred, 3) if view.oldest_deferred else 0)
        yield gauge("atmos_spool_bytes", "Size of the spool's segment files.", spool_stats.bytes)
        yield gauge("atmos_deliveries_in_flight", "Recipients being delivered right now.",
                    scheduler.in_flight if scheduler is not None else 0)
        yield gauge("atmos_event_subscribers", "Operator event stream subscribers (/admin/ws clients).",
                    bus.subscribers)
        accepted = CounterMetricFamily("atmos_accepted_messages_total",
                                       "Messages accepted (durable in the spool) by source.", labels=["source"])
        for source in SOURCES:
            accepted.add_metric([source], metrics.accepted.get(source, 0))
        yield accepted
        yield CounterMetricFamily("atmos_accepted_recipients_total", "Recipients accepted.",
                                  value=metrics.accepted_recipients)
        outcomes = {"sent": 0, "deferred": 0, "bounced": 0}
        if scheduler is not None:
            outcomes = {"sent": scheduler.delivered, "deferred": scheduler.deferred, "bounced": scheduler.bounced}
        attempts = CounterMetricFamily("atmos_delivery_attempts_total", "Delivery attempts by outcome.",
                                       labels=["outcome"])
        for outcome, n in outcomes.items():
            attempts.add_metric([outcome], n)
        yield attempts
        yield CounterMetricFamily("atmos_events_published_total", "Operator events published.", value=bus.published)
        yield CounterMetricFamily("atmos_event_subscribers_dropped_total",
                                  "Event stream subscribers dropped for falling behind.", value=bus.dropped)
        faults = CounterMetricFamily("atmos_faults_total",
                                     "Contained faults: connections ended by an internal error, items a service "
                                     "quarantined.", labels=["where"])
        faults.add_metric(["http_connection"], metrics.faults.get("http_connection", 0))
        faults.add_metric(["status_writer"], services.writer.stats.quarantined)
        yield faults
        hist = metrics.accept_latency
        cumulative, running = [], 0
        for bound, n in zip(hist.bounds, hist.counts, strict=True):
            running += n
            cumulative.append((repr(float(bound)), float(running)))
        cumulative.append(("+Inf", float(hist.count)))
        yield HistogramMetricFamily("atmos_accept_latency_seconds",
                                    "From accept to durable in the spool (group commit).",
                                    buckets=cumulative, sum_value=hist.sum)


def render(services: Services) -> str:
    """The relay's metrics in the Prometheus text format 0.0.4 (``CONTENT_TYPE``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(services))
    return generate_latest(registry).decode()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

__all__ = ["CONTENT_TYPE", "Histogram", "RateWindow", "RelayCollector", "RelayMetrics", "render"]
