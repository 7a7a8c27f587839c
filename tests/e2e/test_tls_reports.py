"""TLS reports (RFC 8460) about the operator domain, through the real relay process: a report mailed to
``tls-reports@<operator domain>`` on the inbound port is parsed (off the event loop, bounded), stored once,
listed by /admin/api/tls-reports and sent to the console's event stream; a gzip bomb is not."""

from __future__ import annotations

import base64
import gzip
import smtplib
import time

import httpx

from relay.delivery.tlsrpt import build_report, report_mail
from relay.store.rows import TlsRptCount
from tests.e2e.relayproc import RelayProcess

TOKEN = "admin-token-" + "x" * 20  # RelayProcess's ATMOS_ADMIN_TOKEN


def _report(report_id: str) -> bytes:
    rows = [TlsRptCount("2026-12-01", "relay.test", "sts", ("version: STSv1", "mode: enforce"), ("relay.test",),
                        "", "", "", 41),
            TlsRptCount("2026-12-01", "relay.test", "sts", ("version: STSv1", "mode: enforce"), ("relay.test",),
                        "relay.test", "certificate-expired", "192.0.2.10", 2)]
    report = build_report("2026-12-01", "relay.test", rows, organization="Big Mail Inc.",
                          contact="tls@bigmail.test", report_id=report_id)
    return report_mail(report, submitter="bigmail.test", policy_domain="relay.test", to="tls-reports@relay.test",
                       from_address="noreply@bigmail.test", day="2026-12-01", now=time.time())


def _send(relay: RelayProcess, data: bytes) -> None:
    with smtplib.SMTP(*relay.inbound, timeout=10) as s:
        s.sendmail("noreply@bigmail.test", ["tls-reports@relay.test"], data)


def _reports(relay: RelayProcess) -> list[dict[str, object]]:
    r = httpx.get(f"{relay.http}/admin/api/tls-reports", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    reports: list[dict[str, object]] = r.json()["reports"]
    return reports


def test_inbound_tls_report_is_stored_once_and_listed(relay: RelayProcess) -> None:
    with httpx.Client(timeout=10) as http:
        anonymous = http.get(f"{relay.http}/admin/api/tls-reports")
        assert anonymous.status_code in (400, 401) and "reports" not in anonymous.text
    _send(relay, _report("r-e2e-1"))
    _send(relay, _report("r-e2e-1"))  # the same report again: kept once
    deadline = time.monotonic() + 10
    while not _reports(relay) and time.monotonic() < deadline:
        time.sleep(0.05)
    [stored] = [r for r in _reports(relay) if r["report_id"] == "r-e2e-1"]
    assert stored["organization"] == "Big Mail Inc." and stored["policy_domain"] == "relay.test"
    assert (stored["successes"], stored["failures"]) == (41, 2)
    assert stored["failure_types"] == "certificate-expired=2"


def test_a_gzip_bomb_is_not_stored(relay: RelayProcess) -> None:
    bomb = gzip.compress(b"[" + b" " * (8 * 1024 * 1024) + b"]")
    data = (b"From: x@bomb.test\r\nTo: tls-reports@relay.test\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=tlsrpt; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(bomb).replace(b"\n", b"\r\n") + b"--b--\r\n")
    _send(relay, data)  # accepted (250) like any mail to the operator; the relay stays up
    _send(relay, _report("r-e2e-after-bomb"))
    deadline = time.monotonic() + 10
    while not any(r["report_id"] == "r-e2e-after-bomb" for r in _reports(relay)) and time.monotonic() < deadline:
        time.sleep(0.05)
    ids = [r["report_id"] for r in _reports(relay)]
    assert "r-e2e-after-bomb" in ids and len(ids) == len(set(ids))
    assert all(r["organization"] != "" for r in _reports(relay))
