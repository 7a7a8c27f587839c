"""Small pure formatting helpers shared by the screens (times are shown in UTC, like mail logs)."""

from __future__ import annotations

import time

from rich.text import Text

STATE_STYLES = {
    "accepted": "cyan",
    "deferred": "yellow",
    "held": "magenta",
    "sent": "green",
    "bounced": "bold red",
    "queue": "blue",
    "suspended": "red",
    "unsuspended": "green",
    "complaint": "bold magenta",
    "tls-report": "bold cyan",
}


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts))


def stamp(ts: float | None) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def span(seconds: float) -> str:
    """A short duration: 45s, 12m, 3h05m, 2d04h."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "—"
    return "just now" if now - ts < 1 else f"{span(now - ts)} ago"


def until(ts: float | None, now: float) -> str:
    if ts is None:
        return "—"
    return "now" if ts <= now else span(ts - now)


def number(n: int) -> str:
    return f"{n:,}"


def rate(per_s: float) -> str:
    return f"{per_s:.1f}/s"


def bar(used: int, total: int, width: int = 10) -> Text:
    """A horizontal bar, green up to 70 %, yellow to 90 %, red beyond."""
    frac = 0.0 if total <= 0 else min(1.0, used / total)
    filled = round(frac * width)
    if used > 0 and filled == 0:
        filled = 1
    style = "green" if frac < 0.7 else "yellow" if frac < 0.9 else "red"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "grey50"))


def compact(n: int) -> str:
    """4 digits at most: 999, 9999, 12k, 1.2M."""
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


def budget(used: int, limit: int, width: int = 6) -> Text:
    text = bar(used, limit, width)
    text.append(f" {compact(used)}/{compact(limit)}")
    return text


def plural(n: int, word: str) -> str:
    return f"{number(n)} {word}{'' if n == 1 else 's'}"


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
