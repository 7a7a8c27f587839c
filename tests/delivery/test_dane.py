"""DANE for outbound SMTP (RFC 7672) against real peers: Knot signs the zone, Unbound validates it with the
zone's trust anchor, a private Postfix smtpd with STARTTLS is the MX, and an smtp-sink behind it shows
what arrived. Matching (DANE-EE, DANE-TA), mismatching, unusable, insecure and bogus TLSA sets."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.delivery.client import ConnectionPool
from relay.delivery.dane import Dane, Tlsa, TlsaSet
from relay.delivery.retry import OutcomeKind
from relay.delivery.routing import Resolver
from relay.delivery.scheduler import AttemptResult
from relay.delivery.tlspolicy import PolicyRef, TlsPlanner
from relay.delivery.transport import SmtpTransport
from relay.net.egress import Egress
from relay.smtp.client import TlsPolicy
from tests.peers.knot import KnotServer
from tests.peers.postfix import PostfixMx
from tests.peers.smtpsink import SmtpSink
from tests.peers.unbound import UnboundServer

MX_NAMES = ["mx-ee.dane.test", "mx-ta.dane.test", "mx-bad.dane.test", "mx-un.dane.test", "mx-bt.dane.test",
            "mx.plain.test"]
DOMAINS = ["ee.dane.test", "ta.dane.test", "bad.dane.test", "un.dane.test", "bt.dane.test", "plain.test"]


@dataclass
class Peers:
    knot: KnotServer
    unbound: UnboundServer
    mx: PostfixMx
    sink: SmtpSink
    leaf: x509.Certificate
    intermediate: x509.Certificate


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    root = trustme.CA()
    child = root.create_child_ca()
    cert = child.issue_cert(*MX_NAMES)
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    intermediate = x509.load_pem_x509_certificate(cert.cert_chain_pems[1].bytes())
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    records = [
        "ee MX 10 mx-ee", "mx-ee A 127.0.0.1", f"_25._tcp.mx-ee TLSA 3 1 1 {_sha256(spki)}",
        "ta MX 10 mx-ta", "mx-ta A 127.0.0.1", f"_25._tcp.mx-ta TLSA 2 0 1 {_sha256(intermediate.public_bytes(Encoding.DER))}",
        "bad MX 10 mx-bad", "mx-bad A 127.0.0.1", f"_25._tcp.mx-bad TLSA 3 1 1 {'ab' * 32}",
        # PKIX-EE (1) is not usable for SMTP (RFC 7672 §3.1.3): TLS is still required, unauthenticated.
        "un MX 10 mx-un", "mx-un A 127.0.0.1", f"_25._tcp.mx-un TLSA 1 1 1 {'cd' * 32}",
        # The TLSA records of mx-bt live in a child zone whose DS does not match its key: bogus.
        "bt MX 10 mx-bt", "mx-bt A 127.0.0.1", "_tcp.mx-bt NS ns.knot.test.",
        f"_tcp.mx-bt DS 12345 13 2 {'ef' * 32}",
    ]
    zones = {
        "dane.test": records,
        "_tcp.mx-bt.dane.test": [f"_25 TLSA 3 1 1 {_sha256(spki)}"],
        "plain.test": ["@ MX 10 mx", "mx A 127.0.0.1"],
    }
    knot = KnotServer(tmp_path_factory.mktemp("knot"), zones, signed=["dane.test", "_tcp.mx-bt.dane.test"]).start()
    sink = SmtpSink(tmp_path_factory.mktemp("sink")).start()
    mx = PostfixMx(DOMAINS, chain_pem=cert.private_key_and_cert_chain_pem.bytes(), forward_port=sink.port,
                   hostname="mx-ee.dane.test")
    try:
        unbound = UnboundServer(tmp_path_factory.mktemp("unbound"), knot,
                                anchors=[knot.trust_anchor("dane.test")]).start()
        mx.start()
        yield Peers(knot, unbound, mx, sink, leaf, intermediate)
    finally:
        mx.stop()
        sink.stop()
        if "unbound" in locals():
            unbound.stop()
        knot.stop()


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[PolicyRef, str, str | None]] = []

    def record(self, policy: PolicyRef, *, mx_host: str, address: str | None, failure: str | None,
               detail: str = "") -> None:
        self.calls.append((policy, mx_host, failure))


def _transport(peers: Peers, pool: ConnectionPool, recorder: Recorded | None = None) -> SmtpTransport:
    ns = peers.unbound.nameservers
    planner = TlsPlanner(TlsPolicy.OPPORTUNISTIC, dane=Dane(ns, lifetime=5), recorder=recorder)
    return SmtpTransport(Resolver(ns, lifetime=5), pool, helo_name="relay.test", port=peers.mx.port,
                         egress=Egress(allow_loopback=True), planner=planner)


def _message(subject: str) -> bytes:
    return f"From: a@relay.test\r\nTo: b@x.test\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


def _arrived(peers: Peers, subject: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(f"Subject: {subject}".encode() in m.data for m in peers.sink.messages()):
            return True
        time.sleep(0.05)
    return False


async def _send(peers: Peers, domain: str, subject: str, recorder: Recorded | None = None) -> AttemptResult:
    pool = ConnectionPool()
    try:
        transport = _transport(peers, pool, recorder)
        return await transport.attempt(domain, "bounce@relay.test", f"b@{domain}", _message(subject))
    finally:
        await pool.aclose()


@pytest.mark.trio
async def test_dane_ee_spki_match_delivers_over_tls(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "ee.dane.test", "dane-ee", recorder)
    assert result.outcome.kind is OutcomeKind.DELIVERED, result.outcome.text
    assert result.tls and result.mx_host == "mx-ee.dane.test"
    assert await trio.to_thread.run_sync(_arrived, peers, "dane-ee")
    policy, mx_host, failure = recorder.calls[-1]
    assert (policy.kind, mx_host, failure) == ("tlsa", "mx-ee.dane.test", None)
    assert policy.strings[0].startswith("3 1 1 ")


@pytest.mark.trio
async def test_dane_ta_trust_anchor_in_chain_delivers(peers: Peers) -> None:
    result = await _send(peers, "ta.dane.test", "dane-ta")
    assert result.outcome.kind is OutcomeKind.DELIVERED, result.outcome.text
    assert result.tls
    assert await trio.to_thread.run_sync(_arrived, peers, "dane-ta")


@pytest.mark.trio
async def test_dane_mismatch_defers_and_sends_nothing(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "bad.dane.test", "dane-bad", recorder)
    assert result.outcome.kind is OutcomeKind.TLS_FAILED
    assert result.outcome.kind.is_temporary
    assert "DANE" in result.outcome.text and "TLSA" in result.outcome.text, result.outcome.text
    assert result.outcome.enhanced == "4.7.5"
    assert recorder.calls[-1][2] == "certificate-not-trusted"
    assert not await trio.to_thread.run_sync(_arrived, peers, "dane-bad", 1.0)


@pytest.mark.trio
async def test_unusable_tlsa_still_requires_tls_and_delivers(peers: Peers) -> None:
    result = await _send(peers, "un.dane.test", "dane-unusable")
    assert result.outcome.kind is OutcomeKind.DELIVERED, result.outcome.text
    assert result.tls


@pytest.mark.trio
async def test_bogus_tlsa_defers_instead_of_downgrading(peers: Peers) -> None:
    answer = await trio.to_thread.run_sync(peers.unbound.query, "_25._tcp.mx-bt.dane.test", "TLSA")
    assert answer.rcode() == 2  # SERVFAIL: the validator calls it bogus
    result = await _send(peers, "bt.dane.test", "dane-bogus")
    assert result.outcome.kind is OutcomeKind.DNS_TEMPORARY, result.outcome.text
    assert "TLSA lookup of _25._tcp.mx-bt.dane.test" in result.outcome.text
    assert not await trio.to_thread.run_sync(_arrived, peers, "dane-bogus", 1.0)


@pytest.mark.trio
async def test_insecure_zone_gets_opportunistic_tls(peers: Peers) -> None:
    recorder = Recorded()
    result = await _send(peers, "plain.test", "insecure", recorder)
    assert result.outcome.kind is OutcomeKind.DELIVERED, result.outcome.text
    assert recorder.calls[-1][0].kind == "no-policy-found"


@pytest.mark.trio
async def test_dane_lookups_see_the_ad_bit_only_for_signed_data(peers: Peers) -> None:
    dane = Dane(peers.unbound.nameservers, lifetime=5)
    assert await dane.mx_secure("ee.dane.test") is True
    assert await dane.mx_secure("plain.test") is False
    found = await dane.host("mx-ee.dane.test", mx_secure=True)
    assert found.kind == "usable" and found.tlsa is not None
    assert (await dane.host("mx.plain.test", mx_secure=True)).kind == "none"
    assert (await dane.host("mx-bt.dane.test", mx_secure=True)).kind == "failed"


def test_a_remote_resolver_is_not_trusted_for_the_ad_bit() -> None:
    with pytest.raises(ValueError, match="not on this host"):
        Dane(["192.0.2.53"])


def test_tlsa_matching_rules(peers: Peers) -> None:
    der = peers.leaf.public_bytes(Encoding.DER)
    chain = [der, peers.intermediate.public_bytes(Encoding.DER)]
    full = Tlsa(3, 0, 0, der)
    sha512 = Tlsa(3, 0, 2, hashlib.sha512(der).digest())
    assert TlsaSet("mx-ee.dane.test", (full,)).check(chain) is None
    assert TlsaSet("mx-ee.dane.test", (sha512,)).check(chain) is None
    # DANE-TA checks the name: the same anchor for a host the certificate does not name fails.
    ta = Tlsa(2, 0, 1, hashlib.sha256(chain[1]).digest())
    assert TlsaSet("mx-ta.dane.test", (ta,)).check(chain) is None
    problem = TlsaSet("other.dane.test", (ta,)).check(chain)
    assert problem is not None and "trust anchor" in problem
    # An unknown matching type makes the record unusable, not a match.
    assert not Tlsa(3, 1, 7, b"x").usable
    assert TlsaSet("h", (Tlsa(3, 1, 1, b"\0" * 32),)).check([b"not a certificate"]) is not None


@pytest.mark.trio
async def test_a_usable_tlsa_set_takes_precedence_over_mta_sts(peers: Peers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """RFC 8461 §2: a DNSSEC-secure destination with usable TLSA records is judged by DANE alone, even when
    an MTA-STS ``enforce`` policy (cached, §5.1) lists none of its MX hosts; an insecure destination with
    the same policy is held to it."""
    import ssl

    from relay.delivery.mtasts import MtaSts
    from relay.delivery.routing import MxHost, Route
    from relay.dns.checks import DnsLookup
    from relay.store import open_store
    from relay.store.aio import AsyncStore
    from relay.store.rows import StsPolicyRow

    ns = peers.unbound.nameservers
    store = AsyncStore(open_store(f"sqlite:///{tmp_path / 'relay.db'}"))
    try:
        policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.elsewhere.test\r\nmax_age: 86400\r\n"
        for domain in ("ee.dane.test", "plain.test"):
            await store.put_sts_policy(StsPolicyRow(domain, "1", policy, time.time(), time.time() + 86400))
        sts = MtaSts(txt=DnsLookup(ns, lifetime=5), egress=Egress(resolver=Resolver(ns, lifetime=5)),
                     context=ssl.create_default_context(), store=store)
        assert await sts.load() == 2
        planner = TlsPlanner(TlsPolicy.OPPORTUNISTIC, dane=Dane(ns, lifetime=5), sts=sts)
        [dane] = await planner.plan(Route("ee.dane.test", [MxHost("mx-ee.dane.test", 10, ["127.0.0.1"])], 25))
        assert (dane.label, dane.skip, dane.ref.kind, dane.policy) == ("DANE", None, "tlsa", TlsPolicy.VERIFY)
        assert dane.peer_check is not None
        [held] = await planner.plan(Route("plain.test", [MxHost("mx.plain.test", 10, ["127.0.0.1"])], 25))
        assert held.label == "MTA-STS enforce" and held.ref.kind == "sts"
        assert held.skip is not None and "does not list MX host mx.plain.test" in held.skip
        assert sts.fetches == 0  # the cached policies decided; nothing was fetched
    finally:
        await store.aclose()
