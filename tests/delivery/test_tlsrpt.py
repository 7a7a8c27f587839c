"""TLS reporting (RFC 8460): counting, the report JSON, the mail and HTTPS deliveries (Knot publishes the
``_smtp._tls`` records, a real HTTPS server on loopback receives the POST), the store's once-per-day
claim, and parsing reports others send us (bounded against gzip bombs)."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from relay.delivery.tlspolicy import PolicyRef
from relay.delivery.tlsrpt import (
    ReportError,
    TlsReporter,
    TlsRptCounter,
    build_report,
    parse_inbound,
    parse_rua,
    report_mail,
)
from relay.dns.checks import DnsLookup
from relay.store import open_store
from relay.store.aio import AsyncStore
from tests.peers.httpd import QuietHandler, serving
from tests.peers.knot import KnotServer, knot_fixture  # noqa: F401

DAY = "2026-12-01"
NOON = 1796126400.0  # 2026-12-01T12:00:00Z
STS = PolicyRef("sts.test", "sts", ("version: STSv1", "mode: enforce", "mx: mx.sts.test", "max_age: 86400"),
                ("mx.sts.test",))


def _counted() -> TlsRptCounter:
    counter = TlsRptCounter(clock=lambda: NOON)
    for _ in range(3):
        counter.record(STS, mx_host="mx.sts.test", address="192.0.2.25", failure=None)
    counter.record(STS, mx_host="mx.sts.test", address="192.0.2.25", failure="certificate-expired",
                   detail="TLS with mx.sts.test failed: certificate has expired")
    counter.record(PolicyRef("dane.test", "tlsa", ("3 1 1 ab",), ("mx.dane.test",)), mx_host="mx.dane.test",
                   address="192.0.2.26", failure="certificate-not-trusted")
    return counter


def test_report_json_follows_rfc_8460_section_4() -> None:
    rows = _counted().drain()
    report = build_report(DAY, "sts.test", rows, organization="relay.test", contact="postmaster@relay.test",
                          report_id="r1@relay.test")
    assert report["organization-name"] == "relay.test" and report["report-id"] == "r1@relay.test"
    assert report["date-range"] == {"start-datetime": "2026-12-01T00:00:00Z", "end-datetime": "2026-12-01T23:59:59Z"}
    [policy] = report["policies"]
    assert policy["policy"] == {"policy-type": "sts", "policy-domain": "sts.test",
                                "policy-string": list(STS.strings), "mx-host": ["mx.sts.test"]}
    assert policy["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 1}
    [failure] = policy["failure-details"]
    assert failure["result-type"] == "certificate-expired" and failure["failed-session-count"] == 1
    assert failure["receiving-mx-hostname"] == "mx.sts.test" and failure["receiving-ip"] == "192.0.2.25"


def test_counter_is_bounded() -> None:
    counter = TlsRptCounter(max_entries=2, clock=lambda: NOON)
    for i in range(5):
        counter.record(PolicyRef(f"d{i}.test", "sts"), mx_host="mx", address=None, failure=None)
    assert len(counter.drain()) == 2 and counter.dropped == 3
    # Destinations without a policy fill at most half: policy lines always find room.
    counter = TlsRptCounter(max_entries=4, clock=lambda: NOON)
    for i in range(4):
        counter.record(PolicyRef(f"n{i}.test", "no-policy-found"), mx_host="mx", address=None, failure=None)
    counter.record(STS, mx_host="mx.sts.test", address=None, failure=None)
    kinds = sorted(r.policy_type for r in counter.drain())
    assert kinds == ["no-policy-found", "no-policy-found", "sts"] and counter.dropped == 2


def test_report_mail_is_multipart_report_and_reads_back() -> None:
    report = build_report(DAY, "sts.test", _counted().drain(), organization="relay.test",
                          contact="postmaster@relay.test", report_id="r2@relay.test")
    data = report_mail(report, submitter="relay.test", policy_domain="sts.test", to="tlsrpt@sts.test",
                       from_address="tls-reports@relay.test", day=DAY, now=NOON)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "sts.test" and msg["TLS-Report-Submitter"] == "relay.test"
    assert msg["Subject"] == "Report Domain: sts.test Submitter: relay.test Report-ID: <r2@relay.test>"
    part = next(p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip")
    assert part.get_filename().startswith("relay.test!sts.test!1796083200!1796169599!")
    assert json.loads(gzip.decompress(part.get_payload(decode=True))) == report
    inbound = parse_inbound(data, now=NOON)
    assert (inbound.organization, inbound.report_id, inbound.policy_domain) == ("relay.test", "r2@relay.test",
                                                                                 "sts.test")
    assert (inbound.successes, inbound.failures, inbound.failure_types) == (3, 1, "certificate-expired=1")


def test_inbound_parser_refuses_bombs_and_junk() -> None:
    bomb = gzip.compress(b"{" + b" " * (4 * 1024 * 1024) + b"}")
    import base64

    message = (b"Content-Type: multipart/report; report-type=tlsrpt; boundary=b\r\n\r\n--b\r\n"
               b"Content-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(bomb) + b"--b--\r\n")
    with pytest.raises(ReportError, match="decompresses to over"):
        parse_inbound(message, now=0)
    with pytest.raises(ReportError, match="no application/tlsrpt"):
        parse_inbound(b"Subject: hi\r\n\r\nhello\r\n", now=0)
    junk = message.replace(base64.encodebytes(bomb), base64.encodebytes(b"not gzip at all"))
    with pytest.raises(ReportError, match="not valid gzip"):
        parse_inbound(junk, now=0)


def test_rua_parsing() -> None:
    assert parse_rua(["v=TLSRPTv1; rua=mailto:a@x.test,https://r.x.test/tls"]) == [
        "mailto:a@x.test", "https://r.x.test/tls"]
    assert parse_rua(["v=TLSRPTv1; rua=http://insecure.test/x"]) == []
    assert parse_rua(["v=TLSRPTv1; rua=mailto:a@x", "v=TLSRPTv1; rua=mailto:b@x"]) == []  # §3: exactly one
    assert parse_rua(["v=spf1 -all"]) == []


def test_store_sums_counts_and_claims_each_day_once(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    try:
        store.add_tlsrpt_counts(_counted().drain())
        store.add_tlsrpt_counts(_counted().drain())
        rows = {(r.policy_domain, r.result_type): r.sessions for r in store.tlsrpt_counts(DAY)}
        assert rows[("sts.test", "")] == 6 and rows[("sts.test", "certificate-expired")] == 2
        assert store.claim_tlsrpt_report(DAY, "sts.test", NOON) is True
        assert store.claim_tlsrpt_report(DAY, "sts.test", NOON) is False
        assert store.purge_tlsrpt("2026-12-02") >= 3 and store.tlsrpt_counts(DAY) == []
    finally:
        store.close()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[int, list[tuple[str, bytes]], ssl.SSLContext]]:
    ca = trustme.CA()
    received: list[tuple[str, bytes]] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.append((self.headers.get("Content-Type", ""), self.rfile.read(length)))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    with serving(Handler, tls=ctx) as port:
        yield port, received, client


@pytest.mark.trio
async def test_daily_reports_go_to_each_rua_once(knot, collector, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, received, client_ctx = collector
    dns: KnotServer = knot({
        "sts.test": [f'_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@sts.test,https://localhost:{port}/tlsrpt"'],
        "dane.test": ["@ MX 10 mx"],  # no _smtp._tls: no report, though it has sessions
    })
    mails: list[tuple[str, bytes]] = []

    async def mailto(rcpt: str, data: bytes) -> None:
        mails.append((rcpt, data))

    async def post(url: str, body: bytes) -> None:
        async with httpx.AsyncClient(verify=client_ctx, timeout=5) as http:
            response = await http.post(url, content=body, headers={"Content-Type": "application/tlsrpt+gzip"})
        response.raise_for_status()

    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    try:
        reporter = TlsReporter(_counted(), store, DnsLookup(dns.nameservers, lifetime=3), mailto, post,
                               "relay.test", wall=lambda: NOON + 86400)
        assert await reporter.send_day(DAY) == 2
        [(rcpt, data)] = mails
        assert rcpt == "tlsrpt@sts.test" and b"report-type=\"tlsrpt\"" in data
        [(ctype, body)] = received
        assert ctype == "application/tlsrpt+gzip"
        report = json.loads(gzip.decompress(body))
        assert report["policies"][0]["summary"]["total-successful-session-count"] == 3
        assert await reporter.send_day(DAY) == 0  # claimed: never twice
        assert len(received) == 1 and len(mails) == 1
    finally:
        await store.aclose()


class _Mailbox:
    """Stands where the relay's acceptor would: what the reporter queues for mailto: ruas."""

    def __init__(self) -> None:
        self.queued: list[list[str]] = []

    async def accept(self, *, did: str, mail_from: str, rcpts: list[str], data: bytes,
                     attrs: dict[str, str]) -> None:
        self.queued.append(rcpts)


@pytest.mark.trio
async def test_https_rua_to_the_relays_own_network_is_refused_unconnected(  # type: ignore[no-untyped-def]
        knot, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reporter the relay runs (``tls_reporter``) POSTs through relay.egress: an https rua whose host
    resolves to 10.x, or to loopback without ``[testing] allow_loopback_peers``, is refused before any
    connection, with the reason logged; the other rua (mailto) still gets the report."""
    import socket

    from relay.config import Config, DeliveryConfig
    from relay.delivery.tlsrpt import tls_reporter

    listener = socket.socket()  # where a connection would land: nothing may knock
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    dns: KnotServer = knot({
        "sts.test": ['_smtp._tls TXT "v=TLSRPTv1; rua=https://rua.private.test/r,'
                     f'https://rua.loop.test:{port}/r,mailto:tlsrpt@sts.test"'],
        "private.test": ["rua A 10.0.0.1"], "loop.test": ["rua A 127.0.0.1"],
    })
    cfg = Config(operator_domain="relay.test", state_dir=str(tmp_path), secret_key=b"s" * 32, dev=False,
                 delivery=DeliveryConfig(nameservers=dns.nameservers))
    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    mailbox = _Mailbox()
    try:
        reporter = tls_reporter(cfg, _counted(), store, mailbox, post_timeout=5)  # type: ignore[arg-type]
        reporter.wall = lambda: NOON + 86400
        with caplog.at_level("WARNING"):
            assert await reporter.send_day(DAY) == 1  # the mailto one
        assert mailbox.queued == [["tlsrpt@sts.test"]]
        refused = [r.getMessage() for r in caplog.records if r.name == "relay.net.egress"]
        assert any("rua.private.test: refusing to connect (10.0.0.1 is private)" in m for m in refused)
        assert any("rua.loop.test: refusing to connect (127.0.0.1 is loopback)" in m for m in refused)
        failed = [r.getMessage() for r in caplog.records if "TLS-RPT for sts.test to https://" in r.getMessage()]
        assert len(failed) == 2
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was made
    finally:
        listener.close()
        await store.aclose()


def test_sessions_through_a_relayhost_are_not_counted() -> None:
    import trio

    from relay.delivery.routing import MxHost, Route
    from relay.delivery.tlspolicy import TlsPlanner
    from relay.smtp.client import TlsPolicy

    counter = TlsRptCounter(clock=lambda: NOON)
    planner = TlsPlanner(TlsPolicy.OPPORTUNISTIC, recorder=counter)
    direct = trio.run(planner.plan, Route("x.test", [MxHost("mx.x.test", 10, ["192.0.2.1"])], 25))
    smarthost = trio.run(planner.plan, Route("x.test", [MxHost("smart.test", 0, ["192.0.2.2"])], 25,
                                             relayhost="[smart.test]"))
    planner.report(direct[0], address="192.0.2.1", tls=True, failure=None, detail="")
    planner.report(smarthost[0], address="192.0.2.2", tls=True, failure=None, detail="")
    assert [r.mx_host for r in counter.drain()] == ["mx.x.test"]
