"""What the operator sees of every node: one view for ``atmos admin nodes``, ``/admin/api/nodes``,
``/metrics`` and the console (pure: rows from the store in, JSON-ready dicts out).

A node is ``running`` while its heartbeat is younger than ``live_within`` (the jobs lease's ttl),
``stopped`` once it recorded a clean stop, else ``silent`` (it died, or its machine or its store link
did): a silent node's queue waits for it, or for a node started under its name (relay.cluster.identity).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from relay.store.rows import NodeRow

JOBS_LEASE = "jobs"  # the lease of the cluster's once-only jobs (relay.cluster.node)
COUNTERS = ("queue_messages", "queue_recipients", "spool_bytes", "in_flight", "accepted", "delivered", "deferred",
            "bounced")


def node_state(row: NodeRow, now: float, live_within: float) -> str:
    if row.stopped_at is not None:
        return "stopped"
    return "running" if now - row.heartbeat_at <= live_within else "silent"


def node_view(rows: Sequence[NodeRow], jobs_holder: str | None, now: float, live_within: float) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        try:
            stats = json.loads(row.stats)
        except ValueError:
            stats = {}
        figures = {k: int(stats[k]) for k in COUNTERS if isinstance(stats, dict) and isinstance(stats.get(k), int)}
        out.append({"node": row.name, "number": row.number, "host": row.host, "pid": row.pid,
                    "state": node_state(row, now, live_within), "jobs": row.name == jobs_holder,
                    "started_at": row.started_at, "heartbeat_age_seconds": round(max(0.0, now - row.heartbeat_at), 1),
                    **figures})
    return out


def totals(view: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The running nodes' figures added up (a stopped or silent node's last report is not current)."""
    running = [v for v in view if v["state"] == "running"]
    return {k: sum(int(v.get(k, 0)) for v in running) for k in COUNTERS} | {"nodes_running": len(running)}


__all__ = ["COUNTERS", "JOBS_LEASE", "node_state", "node_view", "totals"]
