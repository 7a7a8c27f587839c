"""MTA-STS (RFC 8461) against real peers: Knot publishes the ``_mta-sts`` TXT records and MX hosts, an HTTPS
server on loopback (trustme certificate) serves the policies, a private Postfix smtpd with STARTTLS is the
MX (smtp-sink behind it shows what arrived), and a plain smtp-sink is an MX without STARTTLS."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio
import trustme

from relay.delivery.client import ConnectionPool
from relay.delivery.mtasts import MtaSts, StsError, parse_policy, parse_record
from relay.delivery.retry import OutcomeKind
from relay.delivery.routing import Resolver
from relay.delivery.scheduler import AttemptResult
from relay.delivery.tlspolicy import PolicyRef, TlsPlanner
from relay.delivery.transport import SmtpTransport
from relay.dns.checks import DnsLookup
from relay.net.egress import Egress
from relay.smtp.client import TlsPolicy
from tests.peers.httpd import QuietHandler, serving
from tests.peers.knot import KnotServer
from tests.peers.postfix import PostfixMx
from tests.peers.smtpsink import SmtpSink

DOMAINS = ["good.test", "wrongmx.test", "badcert.test", "testing.test", "nofetch.test", "big.test", "notls.test"]


def _policy(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Site:
    """What the HTTPS server answers, per Host (a test may change it)."""

    policies: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    port: int = 0


@dataclass
class Peers:
    knot: KnotServer
    mx: PostfixMx
    sink: SmtpSink
    plain: SmtpSink
    site: Site
    client_ca: ssl.SSLContext


def _https(site: Site, ca: trustme.CA) -> contextlib.AbstractContextManager[int]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            host = self.headers.get("Host", "")
            site.requests.append(host)
            status, ctype, body = site.policies.get(host, (404, "text/plain", b"no policy here\n"))
            self.send_body(body, ctype, status)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*(f"mta-sts.{d}" for d in DOMAINS)).configure_cert(ctx)
    return serving(Handler, tls=ctx)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    ca = trustme.CA()
    site = Site()
    site.policies = {
        "mta-sts.good.test": (200, "text/plain", _policy("enforce", "mx.good.test")),
        "mta-sts.wrongmx.test": (200, "text/plain", _policy("enforce", "mx.elsewhere.test")),
        "mta-sts.badcert.test": (200, "text/plain", _policy("enforce", "*.badcert.test")),
        "mta-sts.testing.test": (200, "text/plain; charset=utf-8", _policy("testing", "mx.elsewhere.test")),
        "mta-sts.big.test": (200, "text/plain", _policy("enforce", "mx.big.test") + b"x: " + b"y" * 70000 + b"\r\n"),
        "mta-sts.notls.test": (200, "text/plain", _policy("enforce", "mx.notls.test")),
    }
    zones = {d: ["@ MX 10 mx", "mx A 127.0.0.1", "mta-sts A 127.0.0.1", '_mta-sts TXT "v=STSv1; id=20261202"']
             for d in DOMAINS}
    zones["good.test"].append('_mta-sts TXT "some other text"')
    zones["slow.test"] = ["mta-sts A 127.0.0.1", '_mta-sts TXT "v=STSv1; id=1"']
    zones["private.test"] = ["@ MX 10 mx", "mx A 127.0.0.1", "mta-sts A 10.0.0.1", '_mta-sts TXT "v=STSv1; id=1"']
    https = contextlib.ExitStack()
    site.port = https.enter_context(_https(site, ca))
    knot = KnotServer(tmp_path_factory.mktemp("knot"), zones).start()
    sink = SmtpSink(tmp_path_factory.mktemp("sink")).start()
    plain = SmtpSink(tmp_path_factory.mktemp("plain")).start()
    # The MX certificate names mx.good.test etc. but not mx.badcert.test (a wrong certificate for that one).
    cert = ca.issue_cert(*(f"mx.{d}" for d in DOMAINS if d != "badcert.test"))
    mx = PostfixMx(DOMAINS, chain_pem=cert.private_key_and_cert_chain_pem.bytes(), forward_port=sink.port,
                   hostname="mx.good.test")
    client_ca = ssl.create_default_context()
    ca.configure_trust(client_ca)
    try:
        mx.start()
        yield Peers(knot, mx, sink, plain, site, client_ca)
    finally:
        mx.stop()
        plain.stop()
        sink.stop()
        knot.stop()
        https.close()


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[PolicyRef, str, str | None, str]] = []

    def record(self, policy: PolicyRef, *, mx_host: str, address: str | None, failure: str | None,
               detail: str = "") -> None:
        self.calls.append((policy, mx_host, failure, detail))

    def failures(self) -> list[str | None]:
        return [c[2] for c in self.calls]


def _sts(peers: Peers, **kw: float) -> MtaSts:
    resolver = Resolver(peers.knot.nameservers, lifetime=3)
    return MtaSts(txt=DnsLookup(peers.knot.nameservers, lifetime=3),
                  egress=Egress(allow_loopback=True, resolver=resolver), context=peers.client_ca, port=peers.site.port, timeout=kw.get("timeout", 5.0),
                  max_bytes=int(kw.get("max_bytes", 65536)), txt_interval=kw.get("txt_interval", 300.0))


async def _send(peers: Peers, domain: str, subject: str, *, recorder: Recorded | None = None,
                port: int | None = None, sts: MtaSts | None = None) -> AttemptResult:
    pool = ConnectionPool()
    planner = TlsPlanner(TlsPolicy.OPPORTUNISTIC, sts=sts or _sts(peers), verify=peers.client_ca, recorder=recorder)
    transport = SmtpTransport(Resolver(peers.knot.nameservers, lifetime=3), pool, helo_name="relay.test",
                              port=port or peers.mx.port, egress=Egress(allow_loopback=True), planner=planner)
    message = f"From: a@relay.test\r\nTo: b@{domain}\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    try:
        return await transport.attempt(domain, "bounce@relay.test", f"b@{domain}", message)
    finally:
        await pool.aclose()


def _arrived(sink: SmtpSink, subject: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(f"Subject: {subject}".encode() in m.data for m in sink.messages()):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.trio
async def test_enforce_with_listed_mx_and_valid_certificate_delivers(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "good.test", "sts-good", recorder=recorder)
    assert result.outcome.kind is OutcomeKind.DELIVERED, result.outcome.text
    assert result.tls
    assert await trio.to_thread.run_sync(_arrived, peers.sink, "sts-good")
    policy, mx_host, failure, _ = recorder.calls[-1]
    assert (policy.kind, policy.domain, mx_host, failure) == ("sts", "good.test", "mx.good.test", None)
    assert "mode: enforce" in policy.strings


@pytest.mark.trio
async def test_enforce_refuses_an_mx_the_policy_does_not_list(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "wrongmx.test", "sts-wrongmx", recorder=recorder)
    assert result.outcome.kind is OutcomeKind.TLS_FAILED and result.outcome.kind.is_temporary
    assert "does not list MX host mx.wrongmx.test" in result.outcome.text
    assert "mx.elsewhere.test" in result.outcome.text
    assert recorder.failures() == ["validation-failure"]
    assert not await trio.to_thread.run_sync(_arrived, peers.sink, "sts-wrongmx", 1.0)


@pytest.mark.trio
async def test_enforce_defers_on_a_certificate_for_another_name(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "badcert.test", "sts-badcert", recorder=recorder)
    assert result.outcome.kind is OutcomeKind.TLS_FAILED
    assert result.outcome.text.startswith("MTA-STS enforce: TLS with mx.badcert.test"), result.outcome.text
    assert recorder.failures()[-1] == "certificate-host-mismatch"
    assert not await trio.to_thread.run_sync(_arrived, peers.sink, "sts-badcert", 1.0)


@pytest.mark.trio
async def test_enforce_defers_when_the_mx_offers_no_starttls(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "notls.test", "sts-notls", recorder=recorder, port=peers.plain.port)
    assert result.outcome.kind is OutcomeKind.TLS_FAILED
    assert "not offered" in result.outcome.text
    assert recorder.failures()[-1] == "starttls-not-supported"
    assert peers.plain.messages() == []


@pytest.mark.trio
async def test_testing_mode_delivers_and_reports_the_mismatch(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "testing.test", "sts-testing", recorder=recorder)
    assert result.outcome.kind is OutcomeKind.DELIVERED, result.outcome.text
    assert "validation-failure" in recorder.failures()
    assert await trio.to_thread.run_sync(_arrived, peers.sink, "sts-testing")


@pytest.mark.trio
async def test_a_policy_that_cannot_be_fetched_means_none_and_is_reported(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "nofetch.test", "sts-nofetch", recorder=recorder)
    assert result.outcome.kind is OutcomeKind.DELIVERED, result.outcome.text
    assert recorder.calls[0][2] == "sts-policy-fetch-error"
    assert "HTTP 404" in recorder.calls[0][3]


@pytest.mark.trio
async def test_an_oversized_policy_is_invalid(peers: Peers) -> None:
    found = await _sts(peers).policy("big.test")
    assert found.policy is None
    assert found.failure is not None and found.failure.result_type == "sts-policy-invalid"
    assert "over 65536 bytes" in found.failure.detail


@pytest.mark.trio
async def test_policy_cache_honours_id_and_survives_a_vanished_record(peers: Peers) -> None:
    sts = _sts(peers, txt_interval=0.0)
    first = await sts.policy("good.test")
    assert first.policy is not None and first.policy.mx == ("mx.good.test",)
    assert sts.fetches == 1
    await sts.policy("good.test")
    assert sts.fetches == 1  # same id: the cached policy, no HTTPS request
    zone = ["@ MX 10 mx", "mx A 127.0.0.1", "mta-sts A 127.0.0.1"]
    await trio.to_thread.run_sync(peers.knot.update, "good.test", zone)
    try:
        kept = await sts.policy("good.test")
        assert kept.policy is not None and kept.policy.mode == "enforce"  # §5.1: stripping the TXT does not help
        await trio.to_thread.run_sync(peers.knot.update, "good.test", [*zone, '_mta-sts TXT "v=STSv1; id=2"'])
        peers.site.policies["mta-sts.good.test"] = (200, "text/plain", _policy("testing", "mx.good.test"))
        changed = await sts.policy("good.test")
        assert sts.fetches == 2 and changed.policy is not None and changed.policy.mode == "testing"
    finally:
        peers.site.policies["mta-sts.good.test"] = (200, "text/plain", _policy("enforce", "mx.good.test"))
        await trio.to_thread.run_sync(peers.knot.update, "good.test",
                                      [*zone, '_mta-sts TXT "v=STSv1; id=20261202"', '_mta-sts TXT "other"'])


@pytest.mark.trio
async def test_expired_policy_is_dropped_and_refresh_refetches(peers: Peers) -> None:
    now = [time.time()]
    sts = _sts(peers)
    sts.wall = lambda: now[0]
    assert (await sts.policy("good.test")).policy is not None
    assert await sts.refresh_due(ahead=3600.0) == 0  # a day left: nothing due
    assert await sts.refresh_due(ahead=2 * 86400.0) == 1 and sts.fetches == 2
    now[0] += 2 * 86400
    sts.txt_interval = 1e9  # no TXT look: only the expiry decides
    assert (await sts.policy("good.test")).policy is None


@pytest.mark.trio
async def test_a_server_that_never_answers_is_cut_off_by_the_deadline(peers: Peers) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    egress = Egress(allow_loopback=True, resolver=Resolver(peers.knot.nameservers, lifetime=3))
    sts = MtaSts(txt=DnsLookup(peers.knot.nameservers, lifetime=3), egress=egress,
                 context=ssl.create_default_context(), port=port, timeout=0.5)
    try:
        found = await sts.policy("slow.test")
    finally:
        listener.close()
    assert found.policy is None and found.failure is not None
    assert "longer than 0.5 s" in found.failure.detail


def test_policy_parsing() -> None:
    policy = parse_policy(b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n")
    assert policy.mode == "enforce" and policy.max_age == 604800
    assert policy.allows("mail.example.com") and policy.allows("MAIL.example.com.")
    assert policy.allows("mx1.example.net") and not policy.allows("a.b.example.net")
    assert not policy.allows("example.net") and not policy.allows("mail.example.org")
    assert parse_policy(b"version: STSv1\nmode: none\nmax_age: 9999999999\n").max_age == 31_557_600
    for bad, why in [
        (b"mode: enforce\nmx: a\nmax_age: 1\n", "version"),
        (b"version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
        (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
        (b"version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n", "max_age"),
        (b"\xff\xfe", "UTF-8"),
    ]:
        with pytest.raises(StsError, match=why):
            parse_policy(bad)


def test_record_parsing() -> None:
    assert parse_record(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_record(["something else"]) is None
    with pytest.raises(StsError, match="exactly one"):
        parse_record(["v=STSv1; id=1", "v=STSv1; id=2"])
    with pytest.raises(StsError, match="id="):
        parse_record(["v=STSv1; id=not-valid!"])


@pytest.mark.trio
async def test_a_stored_policy_survives_a_restart_without_txt_or_https(peers: Peers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from relay.store import open_store
    from relay.store.aio import AsyncStore

    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    try:
        first = _sts(peers)
        first.store = store
        assert (await first.policy("good.test")).policy is not None
        # "Restart": a new cache, the TXT record stripped and the policy host unreachable (an attacker's view).
        nowhere = Egress(resolver=Resolver(peers.knot.nameservers, lifetime=3))  # loopback: refused
        after = MtaSts(txt=NoRecord(), egress=nowhere, context=peers.client_ca, store=store)
        assert await after.load() == 1
        found = await after.policy("good.test")
        assert found.policy is not None and found.policy.mode == "enforce" and after.fetches == 0
        assert await store.purge_sts_policies(time.time() + 2 * 86400) == 1  # expired ones go
    finally:
        await store.aclose()


class NoRecord:
    async def txt(self, name: str) -> list[tuple[str, ...]]:
        return []



@pytest.mark.trio
async def test_a_policy_host_on_a_private_address_is_refused_unconnected(
        peers: Peers, caplog: pytest.LogCaptureFixture) -> None:
    """The planner the relay builds (``tls_planner``) fetches through relay.egress: a policy host that
    resolves to 10.x, or to loopback without ``[testing] allow_loopback_peers``, is refused before any
    connection, with the reason logged and reported (sts-policy-fetch-error); delivery goes on without."""
    from relay.config import Config, DeliveryConfig, TestingConfig
    from relay.delivery.tlspolicy import tls_planner

    listener = socket.socket()  # where a connection would land: nothing may knock
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    ns = peers.knot.nameservers

    def planner(loopback: bool) -> MtaSts:
        cfg = Config(operator_domain="relay.test", state_dir="/nonexistent", secret_key=b"s" * 32, dev=False,
                     delivery=DeliveryConfig(nameservers=ns), testing=TestingConfig(allow_loopback_peers=loopback))
        sts = tls_planner(cfg, Resolver(ns, lifetime=3)).sts
        assert sts is not None
        sts.port, sts.context = listener.getsockname()[1], peers.client_ca
        return sts

    try:
        sts = planner(loopback=False)
        with caplog.at_level("WARNING", logger="relay.delivery.mtasts"):
            private = await sts.policy("private.test")
            loopback = await sts.policy("slow.test")  # mta-sts.slow.test is 127.0.0.1, our listener
        for found, why in ((private, "10.0.0.1 is private"), (loopback, "127.0.0.1 is loopback")):
            assert found.policy is None and found.failure is not None
            assert found.failure.result_type == "sts-policy-fetch-error"
            assert why in found.failure.detail and "refusing to connect" in found.failure.detail
        logged = [r.getMessage() for r in caplog.records if "MTA-STS policy fetch refused" in r.getMessage()]
        assert len(logged) == 2 and "mta-sts.private.test" in logged[0] and "127.0.0.1 is loopback" in logged[1]
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was made
        # The same planner with the test setting does connect to the loopback host (the refusal above
        # is the policy, not a broken fetch), and still refuses 10.0.0.1.
        allowed = planner(loopback=True)
        allowed.timeout = 0.5
        assert "longer than" in ((await allowed.policy("slow.test")).failure or StsError("sts-policy-invalid", "")).detail
        conn, _ = listener.accept()
        conn.close()
        assert "10.0.0.1 is private" in ((await allowed.policy("private.test")).failure or StsError(
            "sts-policy-invalid", "")).detail
    finally:
        listener.close()
