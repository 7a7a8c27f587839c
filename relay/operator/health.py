"""Is the relay taking mail right now? The answer behind ``GET /healthz`` (issue 13).

A load balancer or monitor must not be told "ok" while mail is refused. Each reason mirrors a
refusal on the accept path: the status writer far behind the store (``451 4.4.2`` / 503), the store
not answering (authentication reads it), the spool full or unusable (``452 4.3.1`` / ``451 4.4.2``).
A spool refusal is reported for ``RECENT`` seconds: the next accept may succeed (space freed), and a
monitor that stops sending must still see the relay recover.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from relay.store.base import StoreError
from spool import SpoolError

if TYPE_CHECKING:
    from relay.operator.eventstream import OperatorView  # what it reads of the running relay

STORE_PROBE_TIMEOUT = 2.0  # seconds for one cheap read; slower than this is "not answering"
RECENT = 30.0


async def refusals(services: OperatorView) -> list[str]:
    """Why mail is being refused now; empty when the relay takes mail."""
    reasons: list[str] = []
    writer = services.writer
    if writer.overloaded:
        reasons.append(f"status writer overloaded: {writer.backlog} writes waiting for the store")
    if writer.store_error is not None:
        reasons.append(f"store unavailable: {writer.store_error}")
    else:
        reasons.extend(await _probe_store(services))
    try:
        stats = services.spool.stats()
    except SpoolError as exc:
        reasons.append(f"spool unavailable: {exc}")
    else:
        limit = services.cfg.spool.max_bytes
        if limit and stats.bytes >= limit:
            reasons.append(f"spool full: {stats.bytes} of {limit} bytes (spool.max_bytes)")
        if services.spool.pressure:  # issue 14: outcomes live off the reserve, deliveries wait
            reasons.append("disk full: the spool is writing into its reserve; deliveries paused, new mail refused")
    refused = services.acceptor.last_refusal
    if refused is not None and time.monotonic() - refused[1] < RECENT and refused[0] not in reasons:
        reasons.append(f"{refused[0]} ({time.monotonic() - refused[1]:.0f} s ago)")
    return reasons


async def _probe_store(services: OperatorView) -> list[str]:
    with trio.move_on_after(STORE_PROBE_TIMEOUT):
        try:
            await services.store.schema_version()
        except StoreError as exc:
            return [f"store unavailable: {exc}"]
        except Exception as exc:  # a closed or broken connection: /healthz must answer, not fail
            return [f"store unavailable: {type(exc).__name__}: {exc}"]
        return []
    return [f"store unavailable: no answer within {STORE_PROBE_TIMEOUT:.0f} s"]


__all__ = ["RECENT", "refusals"]
