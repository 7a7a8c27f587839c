"""Pure label decisions (relay.labeler.conditions)."""

from __future__ import annotations

from typing import Any

from relay.dns.checks import CheckResult, DomainReport
from relay.labeler.conditions import any_verdict, clean_sender, operator_verdict, parse_attestation
from relay.store.rows import ReputationCount


def report(**status: str) -> DomainReport:
    kinds = {"ownership": "ok", "dkim-rsa": "ok", "dkim-ed25519": "ok", "spf": "ok", "dmarc": "ok", "mx": "ok"}
    kinds.update({k.replace("_", "-"): v for k, v in status.items()})
    results = [CheckResult("d.test", k, v, ["10 relay.test"] if k == "mx" and v != "missing" else [], "", "",  # type: ignore[arg-type]
                           required=k != "mx") for k, v in kinds.items()]
    return DomainReport("d.test", "did:plc:x", results)


def test_operator_verdict() -> None:
    assert operator_verdict(report(), None) is True
    assert operator_verdict(report(ownership="missing"), None) is False
    assert operator_verdict(report(ownership="missing"), "d.test") is True  # the handle is the domain
    assert operator_verdict(report(mx="missing"), None) is False
    for kind in ("spf", "dmarc", "dkim_rsa", "dkim_ed25519"):
        assert operator_verdict(report(**{kind: "wrong"}), None) is False
    assert operator_verdict(report(spf="error"), None) is None
    assert operator_verdict(None, None) is None


def test_attestation_validation() -> None:
    good: dict[str, Any] = {"domain": "D.test", "dkimSelectors": ["a"], "createdAt": "2025-01-01T00:00:00Z",
                            "relayMember": True}
    att, why = parse_attestation(good, "d.test")
    assert att is not None and att.relay_member and why == ""
    for bad in ({"dkimSelectors": []}, {"dkimSelectors": ["a"] * 11}, {"domain": "other.test"},
                {"createdAt": "yesterday"}, {"relayMember": "yes"}, {"$type": "app.bsky.feed.post"}):
        assert parse_attestation({**good, **bad}, "d.test")[0] is None, bad


def test_any_verdict_and_clean_sender() -> None:
    assert any_verdict([None, True]) is True and any_verdict([False, None]) is None and any_verdict([]) is False
    day = 86400 * 100

    def c(kind: str, n: int, klass: str = "") -> ReputationCount:
        return ReputationCount("did:plc:x", "d.test", day, kind, klass, n)  # type: ignore[arg-type]

    kw = {"max_bounce_rate": 0.05, "max_complaint_rate": 0.0008, "min_sends": 20}
    assert clean_sender([c("sent", 100)], **kw)
    assert not clean_sender([], **kw)
    assert not clean_sender([c("sent", 100), c("bounce", 10, "hard")], **kw)
    assert clean_sender([c("sent", 100), c("bounce", 10, "soft")], **kw)
    assert not clean_sender([c("sent", 100), c("complaint", 1, "abuse")], **kw)
