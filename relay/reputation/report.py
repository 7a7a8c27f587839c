"""JSON shapes of the member endpoints (/member/status, /member/deliverability). Pure.

Times are unix seconds (integers), dates ``YYYY-MM-DD`` in UTC, like the rest of the API.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from relay.reputation.policy import DAY, Window
from relay.reputation.suspension import BOUNCE_CLASSES
from relay.store.rows import Domain, MessageStatus, ReputationCount


def day_start(t: float) -> int:
    return int(t // DAY) * DAY


def iso_date(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _window(w: Window, member: Window, now: float) -> dict[str, Any]:
    return {"limit": w.limit, "used": w.used, "remaining": min(w.remaining, member.remaining),
            "resetAt": int(w.next_change()), "scope": "domain" if w.kind.startswith("domain") else "member"}


def domain_budget(domain: Domain, wins: Sequence[Window], now: float, day: int) -> dict[str, Any]:
    """One entry of /member/status ``domains``: state and the warming tier with its hourly/daily budget.

    While warming, ``hourly``/``daily`` describe the domain's own tier limits; once warmed, the member's
    limits (shared by all its domains). ``remaining`` is what this domain may still send: the smaller
    of the domain's and the member's remaining budget.
    """
    by_kind = {w.kind: w for w in wins}
    m_hour, m_day = by_kind["member-hourly"], by_kind["member-daily"]
    d_hour, d_day = by_kind.get("domain-hourly"), by_kind.get("domain-daily")
    tier = d_hour.tier if d_hour is not None else None
    return {
        "domain": domain.domain,
        "state": domain.state,
        "dkimState": domain.dkim_state,
        "forwardTo": domain.forward_to,
        "warming": {
            "day": day,
            "tier": tier.number if tier else None,
            "warmed": tier is None,
            "tierEndsDay": tier.until_day if tier else None,
            "hourly": _window(d_hour or m_hour, m_hour, now),
            "daily": _window(d_day or m_day, m_day, now),
        },
    }


def _empty() -> dict[str, Any]:
    return {"sent": 0, "bounced": {"total": 0, **dict.fromkeys(BOUNCE_CLASSES, 0)}, "complaints": 0}


def _add(acc: dict[str, Any], row: ReputationCount) -> None:
    if row.kind == "sent":
        acc["sent"] += row.count
    elif row.kind == "bounce":
        bounced = acc["bounced"]
        bounced["total"] += row.count
        bounced[row.klass] = bounced.get(row.klass, 0) + row.count
    else:
        acc["complaints"] += row.count


def deliverability(
    did: str, rows: Iterable[ReputationCount], *, first_day: int, days: int, domains: Sequence[str]
) -> dict[str, Any]:
    """Per day (oldest first, every day present) and per domain: sent, bounced by class, complaints."""
    per_day: list[dict[str, Any]] = []
    for i in range(days):
        start = first_day + i * DAY
        per_day.append({"date": iso_date(start), **_empty(), "domains": {d: _empty() for d in domains}})
    per_domain: dict[str, dict[str, Any]] = {d: _empty() for d in domains}
    totals = _empty()
    for row in rows:
        index = (row.bucket_start - first_day) // DAY
        if not 0 <= index < days:
            continue
        name = row.domain or "(unknown)"
        day = per_day[index]
        _add(day, row)
        _add(day["domains"].setdefault(name, _empty()), row)
        _add(per_domain.setdefault(name, _empty()), row)
        _add(totals, row)
    for day in per_day:
        day["domains"] = [{"domain": name, **counts} for name, counts in day["domains"].items()]
    return {
        "did": did,
        "from": iso_date(first_day),
        "to": iso_date(first_day + (days - 1) * DAY),
        "days": per_day,
        "domains": [{"domain": name, **counts} for name, counts in per_domain.items()],
        "totals": totals,
    }


def totals(stored: Mapping[str, int], statuses: Mapping[MessageStatus, int]) -> dict[str, int]:
    """Lifetime accepted/sent/bounced/complaints; ``deferred`` is the number waiting for a retry now."""
    return {"accepted": stored.get("accepted", 0), "sent": stored.get("sent", 0),
            "bounced": stored.get("bounce", 0), "complaints": stored.get("complaint", 0),
            "deferred": statuses.get("deferred", 0)}
