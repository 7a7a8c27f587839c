"""A sender's tags and metadata on a message (``/v1/send`` ``tags`` / ``metadata``).

They travel in the spool envelope's attrs as JSON text (so they survive a restart with the
message), are copied into the message rows (``GET /v1/messages/{id}``) and into the member's
webhooks and the event stream (``accepted``, ``delivered``, ``deferred``, ``bounced``).
Validated at the edge (web.validate): at most 10 short tags and 10 short string pairs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def attrs(tags: Sequence[str], metadata: Mapping[str, str]) -> dict[str, str]:
    """Envelope attrs for tags and metadata (none when empty)."""
    out: dict[str, str] = {}
    if tags:
        out["tags"] = json.dumps(list(tags), separators=(",", ":"))
    if metadata:
        out["metadata"] = json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True)
    return out


def tags_of(text: str | None) -> list[str]:
    """The tags stored as JSON text; [] for none or anything unreadable (never raises)."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


def metadata_of(text: str | None) -> dict[str, str]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}


__all__ = ["attrs", "metadata_of", "tags_of"]
