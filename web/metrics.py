"""``GET /metrics``: Prometheus text format 0.0.4 for operators with a monitoring stack (DESIGN §3).

No token: scrapers expect a plain GET, and the figures are relay-wide aggregates (queue depth by
state, counters by source and outcome, accept latency) with no DID, address or domain in them.
The HTTP listener's bind is the operator's choice; a relay whose HTTP port faces the internet
should not route ``/metrics`` through its public reverse proxy. The metric names and what they
count are listed in ``relay.metrics.RelayCollector``.
"""

from __future__ import annotations

from quart import Blueprint, Response

from relay.metrics import CONTENT_TYPE, render
from web.api import services

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
async def metrics() -> Response:
    return Response(render(services()), content_type=CONTENT_TYPE)
