"""When a member earns each label: pure decisions over what the checks found (DESIGN §3).

A verdict is True (holds), False (does not hold: publish a negation if the label is out) or None
(could not tell: a DNS or PDS failure; keep whatever was published and retry soon).

- ``verified-mail-operator``, per domain: domain control (the member's handle equals the domain, or
  the ``_atmos-challenge`` TXT names the DID), an MX record, SPF that passes for the relay without
  ``+all``, both relay DKIM selectors published with ``v=DKIM1`` and the right key, DMARC
  ``p=quarantine``/``reject``. The member holds the label while at least one of its domains does.
- ``relay-member``: a domain that is a verified mail operator also has a valid
  ``email.atmos.attestation`` record (rkey = domain, ``relayMember: true``, 1-10 ``dkimSelectors``
  each published with ``v=DKIM1``, ``createdAt``) and the member is not suspended.
- ``clean-sender`` (optional): a verified mail operator, not suspended, that sent in the last 14
  days with no day whose hard bounces or complaints exceeded the suspension thresholds.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.address import normalize_domain
from relay.dns.checks import DomainReport
from relay.store.rows import ReputationCount

__all__ = [
    "ATTESTATION_COLLECTION",
    "Attestation",
    "any_verdict",
    "clean_sender",
    "operator_verdict",
    "parse_attestation",
]

ATTESTATION_COLLECTION = "email.atmos.attestation"
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}))*")


@dataclass(frozen=True, slots=True)
class Attestation:
    domain: str
    dkim_selectors: tuple[str, ...]
    created_at: str
    relay_member: bool


def parse_attestation(value: Any, rkey: str) -> tuple[Attestation | None, str]:
    """Validate an ``email.atmos.attestation`` record value; (attestation, "") or (None, why)."""
    if not isinstance(value, dict):
        return None, "the record is not an object"
    rtype = value.get("$type")
    if rtype is not None and rtype != ATTESTATION_COLLECTION:
        return None, f"$type is {rtype!r}, expected {ATTESTATION_COLLECTION}"
    domain = value.get("domain")
    if not isinstance(domain, str) or normalize_domain(domain) != normalize_domain(rkey):
        return None, f"domain must equal the record key {rkey!r}"
    selectors = value.get("dkimSelectors")
    if not isinstance(selectors, list) or not 1 <= len(selectors) <= 10:
        return None, "dkimSelectors must list 1 to 10 selectors"
    if not all(isinstance(s, str) and _SELECTOR.fullmatch(s) for s in selectors):
        return None, "dkimSelectors must be DNS labels"
    created = value.get("createdAt")
    if not isinstance(created, str):
        return None, "createdAt is missing"
    try:
        datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None, "createdAt is not an RFC 3339 datetime"
    member = value.get("relayMember", False)
    if not isinstance(member, bool):
        return None, "relayMember must be a boolean"
    return Attestation(normalize_domain(domain), tuple(selectors), created, member), ""


def operator_verdict(report: DomainReport | None, handle: str | None) -> bool | None:
    """``verified-mail-operator`` for one domain from its DNS report (None: no report or DNS error)."""
    if report is None or report.dns_error:
        return None
    control = report.ownership_ok or (handle is not None and handle.lower() == report.domain)
    mx = report.result("mx")
    if mx is not None and mx.status == "error":
        return None
    # "pref host" each; a null MX ("0 .") accepts no mail, so it is no MX
    has_mx = mx is not None and any(f.partition(" ")[2] not in ("", ".") for f in mx.found)
    return bool(control and has_mx and report.spf_ok and report.dkim_ok and report.dmarc_ok)


def any_verdict(verdicts: Sequence[bool | None]) -> bool | None:
    """True if any holds; False if all are definitely false (or there are none); else None."""
    if any(v is True for v in verdicts):
        return True
    if all(v is False for v in verdicts):
        return False
    return None


def clean_sender(
    counts: Sequence[ReputationCount], *, max_bounce_rate: float, max_complaint_rate: float, min_sends: int
) -> bool:
    """Sent in the window, and no day with a hard-bounce or complaint spike."""
    days: dict[int, dict[str, int]] = {}
    for c in counts:
        day = days.setdefault(c.bucket_start // 86400, {"sent": 0, "hard": 0, "complaint": 0})
        if c.kind == "sent":
            day["sent"] += c.count
        elif c.kind == "bounce" and c.klass == "hard":
            day["hard"] += c.count
        elif c.kind == "complaint":
            day["complaint"] += c.count
    if not any(d["sent"] > 0 for d in days.values()):
        return False
    for d in days.values():
        sent = max(d["sent"], min_sends)  # a small day is judged as if it had min_sends
        if d["hard"] / sent > max_bounce_rate or d["complaint"] / sent > max_complaint_rate:
            return False
    return True


def selectors_published(txt_by_selector: Mapping[str, list[str]]) -> bool:
    """Every selector has a TXT record whose tag list starts with (or has) ``v=DKIM1``."""
    return all(any(_is_dkim1(r) for r in records) for records in txt_by_selector.values())


def _is_dkim1(text: str) -> bool:
    tags = [t.strip() for t in text.split(";")]
    return any(t.replace(" ", "") == "v=DKIM1" for t in tags) and any(t.startswith("p=") and len(t) > 2 for t in tags)
