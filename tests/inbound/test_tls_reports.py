"""TLS reports through the relay itself: the production reporter queues the mailto: report in the real spool
(null reverse-path, so it can never bounce into a loop), and a report mailed to tls-reports@ on the inbound
listener is recorded instead of being forwarded."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import time

import pytest

from relay.delivery.tlspolicy import PolicyRef
from relay.delivery.tlsrpt import TlsRptCounter, build_report, report_mail, tls_reporter
from relay.dns.checks import DnsLookup
from tests.inbound.conftest import OPERATOR, Rig
from tests.peers.knot import KnotServer, knot_fixture  # noqa: F401

NOON = 1796126400.0  # 2026-12-01T12:00:00Z


@pytest.mark.trio
async def test_mailto_report_is_queued_by_the_relay_with_a_null_sender(rig: Rig, knot) -> None:  # type: ignore[no-untyped-def]
    dns: KnotServer = knot({"sts.test": ['_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@sts.test"']})
    counter = TlsRptCounter(clock=lambda: NOON)
    counter.record(PolicyRef("sts.test", "sts", ("version: STSv1",), ("mx.sts.test",)), mx_host="mx.sts.test",
                   address="192.0.2.25", failure=None)
    reporter = tls_reporter(rig.cfg, counter, rig.store, rig.acceptor)
    reporter.txt = DnsLookup(dns.nameservers, lifetime=3)  # the test's DNS, never the system resolver
    reporter.wall = lambda: NOON + 86400
    assert await reporter.send_day("2026-12-01") == 1
    [queued] = [m for m in rig.spooled() if m.envelope.rcpts == ("tlsrpt@sts.test",)]
    assert queued.envelope.mail_from == ""
    msg = email.message_from_bytes(rig.data(queued), policy=email.policy.default)
    assert msg["From"] == f"tls-reports@{OPERATOR}" and msg.get_param("report-type") == "tlsrpt"
    part = next(p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip")
    report = json.loads(gzip.decompress(part.get_payload(decode=True)))
    assert report["organization-name"] == OPERATOR
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 1


@pytest.mark.trio
async def test_inbound_report_is_recorded_not_forwarded(rig: Rig) -> None:
    report = build_report("2026-12-01", OPERATOR, [], organization="Big Mail", contact="x@big.test",
                          report_id="inbound-1")
    data = report_mail(report, submitter="big.test", policy_domain=OPERATOR, to=f"tls-reports@{OPERATOR}",
                       from_address="noreply@big.test", day="2026-12-01", now=time.time())
    code, _ = await rig.send("noreply@big.test", [f"tls-reports@{OPERATOR}"], data)
    assert code == 250
    [stored] = await rig.store.list_tlsrpt_inbound(10)
    assert (stored.organization, stored.report_id) == ("Big Mail", "inbound-1")
    assert rig.spooled() == []  # recorded for the console, not forwarded to the operator inbox
