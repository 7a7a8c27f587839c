"""GET /metrics on the real relay: Prometheus text format 0.0.4, and the counters move."""

from __future__ import annotations

import re

import httpx

from tests.events.conftest import DID, Relay

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{([a-zA-Z_]\w*="(\\.|[^"\\])*",?)*\})?'
                    r' (?P<value>[-+]?([0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?|Inf|NaN))$')
META = re.compile(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$")


def scrape(relay: Relay) -> dict[str, float]:
    r = httpx.get(f"{relay.http}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    values: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in r.text.splitlines():
        if line.startswith("#"):
            assert META.match(line), line
            if line.startswith("# TYPE"):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        base = re.sub(r"_(bucket|sum|count)$", "", m["name"])
        assert m["name"] in types or base in types, f"{m['name']} has no TYPE"
        values[m["name"] + (m["labels"] or "")] = float(m["value"])
    assert types["atmos_accepted_messages_total"] == "counter"
    assert types["atmos_queue_recipients"] == "gauge"
    assert types["atmos_accept_latency_seconds"] == "histogram"
    return values


def test_metrics_format_and_accepted_counter(relay: Relay) -> None:
    before = scrape(relay)
    for name in ("atmos_queue_messages", "atmos_spool_bytes", "atmos_deliveries_in_flight", "atmos_event_subscribers",
                 'atmos_queue_recipients{state="deferred"}', 'atmos_delivery_attempts_total{outcome="deferred"}',
                 "atmos_event_subscribers_dropped_total", 'atmos_accept_latency_seconds_bucket{le="+Inf"}'):
        assert name in before, name
    member = relay.members[DID]
    r = httpx.post(f"{relay.http}/v1/send", headers=member.headers(), json=member.send_body(to="m@dest.example"),
                   timeout=10)
    assert r.status_code == 200, r.text
    after = scrape(relay)
    key = 'atmos_accepted_messages_total{source="http"}'
    assert after[key] == before[key] + 1
    assert after["atmos_accepted_recipients_total"] == before["atmos_accepted_recipients_total"] + 1
    assert after["atmos_accept_latency_seconds_count"] == before["atmos_accept_latency_seconds_count"] + 1
    assert after["atmos_queue_messages"] >= 1
    # Histogram buckets are cumulative and end at the count.
    buckets = [v for k, v in after.items() if k.startswith("atmos_accept_latency_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == after["atmos_accept_latency_seconds_count"]


def test_metrics_need_no_token_and_hold_no_member_data(relay: Relay) -> None:
    text = httpx.get(f"{relay.http}/metrics", timeout=10).text
    assert "did:" not in text and "@" not in text and "example" not in text
