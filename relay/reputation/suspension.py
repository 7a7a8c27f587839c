"""Automatic suspension and bounce classes (DESIGN §6). Pure: counts in, a verdict out.

Per DID, over ``[suspension] window`` (24 h): if bounces / sends > ``max_bounce_rate`` (5 %) or
complaints / sends > ``max_complaint_rate`` (0.08 %), with at least ``min_sends`` (20) sends, the member
is suspended (complaints only once there are at least ``min_complaints`` (3) distinct ones: at low
volume a single report, perhaps a recipient's mistake, is already over 0.08 %) with a reason such
as ``automatic: 7 bounces in 24 h of 40 sends (17.5% > 5%)``.

"Sends" are the recipients the relay accepted from the member (the rate limiter's counters), so a
recipient counts once whether it bounced at once (5xx during delivery) or later (a DSN on port 25).
Every bounce class counts. The window is made of whole hour buckets like the daily rate window: the
current hour and the ones before it, ``ceil(window / 1 h)`` buckets in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

from relay.config import SuspensionConfig
from relay.reputation.policy import HOUR, hour_bucket

BounceClass: TypeAlias = Literal["hard", "soft", "policy", "mailbox-full"]
BOUNCE_CLASSES: tuple[BounceClass, ...] = ("hard", "soft", "policy", "mailbox-full")
_ALIASES = {"policy-block": "policy", "policy_block": "policy", "block": "policy", "blocked": "policy",
            "mailbox_full": "mailbox-full", "mailboxfull": "mailbox-full", "full": "mailbox-full",
            "permanent": "hard", "transient": "soft"}


def window_first_bucket(now: float, window: float) -> int:
    """The oldest hour bucket inside a rolling window of ``window`` seconds ending now."""
    return hour_bucket(now) - (max(1, math.ceil(window / HOUR)) - 1) * HOUR


def normalize_class(klass: str) -> str:
    """A known bounce class for the usual spellings; other text kept (lower-case, at most 32 chars)."""
    k = klass.strip().lower()
    k = _ALIASES.get(k, k)
    return k[:32] or "hard"


def classify_status(status: str) -> BounceClass:
    """Bounce class of an RFC 3463 enhanced status code (``5.1.1``, ``4.2.2``, ...).

    x.2.2 mailbox full -> mailbox-full; x.7.x security or policy -> policy; any other 4.x.x -> soft;
    any other 5.x.x (bad mailbox, bad domain, routing) -> hard.
    """
    parts = status.strip().split(".")
    if len(parts) >= 2 and parts[1:3] == ["2", "2"]:
        return "mailbox-full"
    if len(parts) >= 2 and parts[1] == "7":
        return "policy"
    if parts[0] == "4":
        return "soft"
    return "hard"


def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Literal["bounce", "complaint"]
    count: int
    sends: int
    rate: float
    threshold: float
    window: float

    @property
    def reason(self) -> str:
        noun = self.kind if self.count == 1 else f"{self.kind}s"
        hours = f"{self.window / HOUR:g} h"
        return (f"automatic: {self.count} {noun} in {hours} of {self.sends} sends "
                f"({_pct(self.rate)} > {_pct(self.threshold)})")


def evaluate(*, sends: int, bounces: int, complaints: int, cfg: SuspensionConfig) -> Verdict | None:
    """Suspend (a Verdict with the reason) or not (None). Below ``min_sends`` no rate is judged."""
    if sends <= 0 or sends < cfg.min_sends:
        return None
    if bounces / sends > cfg.max_bounce_rate:
        return Verdict("bounce", bounces, sends, bounces / sends, cfg.max_bounce_rate, cfg.window)
    if complaints >= cfg.min_complaints and complaints / sends > cfg.max_complaint_rate:
        return Verdict("complaint", complaints, sends, complaints / sends, cfg.max_complaint_rate, cfg.window)
    return None
