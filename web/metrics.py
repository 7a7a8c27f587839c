"""``GET /metrics``: Prometheus text format 0.0.4 for operators with a monitoring stack (DESIGN §3).

No token: scrapers expect a plain GET, and the figures are relay-wide aggregates (queue depth by
state, counters by source and outcome, accept latency) with no DID, address or domain in them: label
values are a small closed set (states, sources, outcomes). The HTTP listener's bind is the operator's
choice; a relay whose HTTP port faces the internet should not route ``/metrics`` through its public
reverse proxy.

prometheus_client writes the exposition from one custom collector, ``RelayCollector``, which reads the
figures where they live (the spool's stats, the scheduler's and the acceptor's counters, the event bus,
relay.operator.metrics' accept counters) at scrape time, so nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from quart import Blueprint, Response

from relay.cluster.status import totals
from relay.operator.eventstream import QUEUE_STATES, OperatorView, queue_view
from relay.operator.metrics import SOURCES
from relay.store.base import StoreError
from web.admin import node_list
from web.api import services as current_services

blueprint = Blueprint("metrics", __name__)


class RelayCollector:
    """A prometheus_client collector over one running relay's services (read at each scrape)."""

    def __init__(self, services: OperatorView, nodes: list[dict[str, Any]] | None = None) -> None:
        self.services = services
        self.nodes = nodes or []  # relay.cluster.status.node_view, read from the store before the scrape

    def collect(self) -> Iterator[Metric]:
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
        refusals = CounterMetricFamily("atmos_smtp_refusals_total",
                                       "SMTP commands, messages and connections refused, by listener and reason.",
                                       labels=["listener", "reason"])
        for (listener, reason), n in sorted(metrics.smtp_refusals.items()):
            refusals.add_metric([listener, reason], n)
        yield refusals
        hist = metrics.accept_latency
        cumulative, running = [], 0
        for bound, n in zip(hist.bounds, hist.counts, strict=True):
            running += n
            cumulative.append((repr(float(bound)), float(running)))
        cumulative.append(("+Inf", float(hist.count)))
        yield HistogramMetricFamily("atmos_accept_latency_seconds",
                                    "From accept to durable in the spool (group commit).",
                                    buckets=cumulative, sum_value=hist.sum)
        yield from self._cluster()

    def _cluster(self) -> Iterator[Metric]:
        """Every node as its last heartbeat reported it, and the running ones' totals: the figures above
        are this node's own (the one that answered the scrape, label ``node`` of ``atmos_node_info``)."""
        info = GaugeMetricFamily("atmos_node_info", "The node that answered this scrape.", labels=["node"])
        info.add_metric([self.services.node.name], 1)
        yield info
        up = GaugeMetricFamily("atmos_node_up", "1 while the node's heartbeat is current.", labels=["node"])
        age = GaugeMetricFamily("atmos_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat.",
                                labels=["node"])
        queue = GaugeMetricFamily("atmos_node_queue_messages", "Live messages in the node's spool (last heartbeat).",
                                  labels=["node"])
        for n in self.nodes:
            up.add_metric([n["node"]], 1 if n["state"] == "running" else 0)
            age.add_metric([n["node"]], n["heartbeat_age_seconds"])
            queue.add_metric([n["node"]], n.get("queue_messages", 0))
        yield from (up, age, queue)
        sums = totals(self.nodes)
        yield GaugeMetricFamily("atmos_cluster_queue_messages", "Live messages in every running node's spool.",
                                value=sums["queue_messages"])
        yield GaugeMetricFamily("atmos_cluster_nodes_running", "Nodes whose heartbeat is current.",
                                value=sums["nodes_running"])


def render(services: OperatorView, nodes: list[dict[str, Any]] | None = None) -> str:
    """The relay's metrics in the Prometheus text format 0.0.4 (``CONTENT_TYPE``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(services, nodes))
    return generate_latest(registry).decode()


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes



@blueprint.get("/metrics")
async def metrics() -> Response:
    svc = current_services()
    try:
        nodes = await node_list(svc)
    except StoreError:
        nodes = []  # the store's trouble shows on /healthz; this node's own figures still answer
    return Response(render(svc, nodes), content_type=CONTENT_TYPE)
