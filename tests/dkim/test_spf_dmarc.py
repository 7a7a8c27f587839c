"""A third independent verifier: ``authheaders`` (pyspf for SPF, dkimpy for DKIM, its own DMARC code)
judging a message exactly as the relay sends it (``rewrite`` then ``sign`` with the member's RSA and
Ed25519 keys and the operator's RSA key, VERP envelope sender, client 127.0.0.1), every record looked
up over real DNS: Knot on 127.0.0.1:<free port> serves the member zone as ``records_for`` tells the
member to publish it (DKIM keys, ``v=spf1 include:relay.example -all``, ``p=reject; adkim=r; aspf=r``)
and the operator zone (``v=spf1 ip4:127.0.0.1 -all`` and its DKIM key).

How the lookups reach Knot and nothing else:
- DKIM and DMARC: authheaders passes ``dnsfunc`` on; dkimpy calls it with a bytes name and wants
  bytes, authheaders' DMARC lookup calls it with a str ``_dmarc.<domain>`` and wants str.
- SPF: pyspf resolves through dnspython's module-level resolver (``dns.resolver.query``), so
  ``dns.resolver.default_resolver`` is replaced by one that knows Knot alone.
- ``dns.query.udp``/``tcp`` are wrapped: a query to any other address or port fails the test.
The organizational domain (relaxed alignment) comes from the public suffix list shipped inside
authheaders: no network.

authheaders reports the topmost DKIM-Signature only (the member's RSA one), so each signature is
also judged alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Dev dependencies (pyproject): a missing verifier must fail the run, never skip it.
import authheaders
import authres
import authres.dmarc
import dns.query
import dns.rdatatype
import dns.resolver
import pytest
import spf

from relay.config import Config
from relay.delivery import verp
from relay.dkim import SigningKey, domain_signing_keys, sign
from relay.dns.records import records_for, zone_line
from relay.mail.dkimkeys import DomainKeys, new_domain_keys, zone_txt
from relay.mail.outbound import rewrite
from tests.dkim.helpers import only_signature, signature_fields
from tests.peers.knot import KnotServer
from tests.peers.require import require_module

MEMBER = "mail.example.com"
OPERATOR = "relay.example"
OPERATOR_SELECTOR = "pool1"
DID = "did:plc:abcdefghijklmnopqrstuvwx"
VERP_SECRET = b"verp secret for the spf/dmarc test"
MAIL_FROM = verp.encode(17, secret=VERP_SECRET, domain=OPERATOR)
CLIENT_IP = "127.0.0.1"
OUTSIDER_IP = "192.0.2.1"  # documentation range (RFC 5737): a string only, never contacted
CFG = Config(operator_domain=OPERATOR, secret_key=b"test secret")  # member SPF: include:relay.example
OPERATOR_SPF = f"@ TXT {zone_txt('v=spf1 ip4:127.0.0.1 -all')}"

# pyspf looks names up with dns.resolver.query, which dnspython deprecates (warnings are errors here).
pytestmark = pytest.mark.filterwarnings("ignore:please use dns.resolver.resolve:DeprecationWarning")


@dataclass(frozen=True)
class Domains:
    member: DomainKeys
    operator: DomainKeys
    keys: tuple[SigningKey, SigningKey, SigningKey]  # member RSA, member Ed25519, operator RSA

    def zones(self) -> dict[str, list[str]]:
        m = self.member
        published = records_for(MEMBER, did=DID, verify_token="t", selector=m.selector,
                                rsa_txt=m.rsa_txt, ed25519_txt=m.ed25519_txt, cfg=CFG)
        return {
            MEMBER: [zone_line(r, origin=MEMBER) for r in published if r.kind != "mx"],
            OPERATOR: [OPERATOR_SPF, f"{OPERATOR_SELECTOR}._domainkey TXT {zone_txt(self.operator.rsa_txt)}"],
        }


@pytest.fixture(scope="module")
def domains() -> Domains:
    member = new_domain_keys(MEMBER, selector="atmostest")
    operator = new_domain_keys(OPERATOR, selector="unused")
    op = SigningKey(OPERATOR, OPERATOR_SELECTOR, "rsa-sha256", domain_signing_keys(operator)[0].key)
    return Domains(member, operator, (*domain_signing_keys(member), op))


@pytest.fixture(scope="module")
def knot(domains: Domains, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with KnotServer(tmp_path_factory.mktemp("knot"), domains.zones()) as server:
        yield server


@pytest.fixture
def knot_only(knot: KnotServer, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """dnspython's module-level resolver asks Knot alone; every query's (address, port) is recorded
    and anything but Knot fails the test before a packet leaves."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [knot.host]
    resolver.port = knot.port
    resolver.lifetime = 3
    monkeypatch.setattr(dns.resolver, "default_resolver", resolver)
    sent: list[tuple[str, int]] = []

    def guarded(send: Callable[..., Any]) -> Callable[..., Any]:
        def query(q: Any, where: str, *args: Any, port: int = 53, **kwargs: Any) -> Any:
            sent.append((where, port))
            assert (where, port) == (knot.host, knot.port), f"DNS query to {where}:{port}, not to Knot"
            return send(q, where, *args, port=port, **kwargs)

        return query

    monkeypatch.setattr(dns.query, "udp", guarded(dns.query.udp))
    monkeypatch.setattr(dns.query, "tcp", guarded(dns.query.tcp))
    return sent


@pytest.fixture
def dnsfunc(knot_only: list[tuple[str, int]]) -> Callable[..., Any]:
    """TXT lookups for dkimpy (bytes name -> bytes) and authheaders' DMARC code (str name -> str),
    through the Knot-only resolver."""

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | str | None:
        text = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            answer = dns.resolver.resolve(text, dns.rdatatype.TXT, lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        value = b"".join(answer[0].strings)
        return value if isinstance(name, bytes) else value.decode("ascii")

    return get_txt


def relay_message(domains: Domains) -> bytes:
    """What the relay puts on the wire: the member's message, rewritten, then signed with all three keys."""
    submitted = (
        b"From: Alice Example <alice@mail.example.com>\r\n"
        b"To: Bob <bob@example.org>\r\n"
        b"Subject: Your weekly\r\n  digest\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Feedback-ID: forged:by:member:x\r\n"
        b"\r\n"
        b"Hello Bob,\r\n\r\nSome  text   with\truns of whitespace   \r\ncaf\xc3\xa9\r\n\r\n"
    )
    rewritten = rewrite(submitted, did=DID, category="digest", transactional=False, member_domain=MEMBER,
                        unsubscribe_url=f"https://{OPERATOR}/u/abcdef", now=1_715_679_000)
    return sign(rewritten, domains.keys)


def authenticate(msg: bytes, dnsfunc: Callable[..., Any], *, ip: str = CLIENT_IP) -> dict[str, Any]:
    """authheaders' Authentication-Results, parsed: method -> result object."""
    header = authheaders.authenticate_message(
        msg, "receiver.test", ip=ip, mail_from=MAIL_FROM, helo=OPERATOR,
        spf=True, dkim=True, dmarc=True, dnsfunc=dnsfunc,
    )
    parsed = authres.FeatureContext(authres.dmarc).parse(header)
    assert parsed.authserv_id == "receiver.test"
    results = {r.method: r for r in parsed.results}
    assert set(results) == {"spf", "dkim", "dmarc"}, header
    return results


def _require_nacl() -> None:
    require_module("nacl.signing", "dkimpy needs PyNaCl to verify ed25519-sha256")


def test_relay_message_passes_spf_dkim_and_dmarc(
    domains: Domains, knot: KnotServer, dnsfunc: Callable[..., Any], knot_only: list[tuple[str, int]]
) -> None:
    _require_nacl()
    signed = relay_message(domains)
    assert len(signature_fields(signed)) == 3

    r = authenticate(signed, dnsfunc)
    assert r["spf"].result == "pass"
    assert r["spf"].smtp_mailfrom == OPERATOR  # the VERP address's domain (authheaders' DMARC keeps only it)
    assert r["dkim"].result == "pass" and r["dkim"].header_d == MEMBER  # the topmost: member RSA
    assert r["dmarc"].result == "pass" and r["dmarc"].header_from == MEMBER
    assert r["dmarc"].policy == "reject"  # the member's record, found at _dmarc.mail.example.com

    # Each signature alone: member RSA and Ed25519 align with From (DMARC pass through DKIM); the
    # operator's verifies but aligns with nothing (SPF passes for relay.example, not example.com).
    expected = [(MEMBER, "pass"), (MEMBER, "pass"), (OPERATOR, "fail")]
    for i, (d, dmarc) in enumerate(expected):
        alone = authenticate(only_signature(signed, i), dnsfunc)
        assert (alone["dkim"].result, alone["dkim"].header_d, alone["dmarc"].result) == ("pass", d, dmarc), i

    # The member's published SPF (include:relay.example) also authorizes the relay for its own domain.
    assert spf.check2(i=CLIENT_IP, s=f"alice@{MEMBER}", h=OPERATOR)[0] == "pass"
    assert spf.check2(i=OUTSIDER_IP, s=f"alice@{MEMBER}", h=OPERATOR)[0] == "fail"

    assert sent_only_to_knot(knot_only, knot)
    for zone in (MEMBER, OPERATOR):
        assert knot.queries(zone).get("TXT", 0) >= 2, zone


def sent_only_to_knot(sent: list[tuple[str, int]], knot: KnotServer) -> bool:
    return bool(sent) and set(sent) == {(knot.host, knot.port)}


def test_spf_fail_still_passes_dmarc_through_dkim(
    domains: Domains, knot: KnotServer, dnsfunc: Callable[..., Any], knot_only: list[tuple[str, int]]
) -> None:
    _require_nacl()
    signed = relay_message(domains)

    r = authenticate(signed, dnsfunc, ip=OUTSIDER_IP)  # a client the operator's SPF does not list
    assert (r["spf"].result, r["dkim"].result, r["dmarc"].result) == ("fail", "pass", "pass")

    knot.update(OPERATOR, ["@ TXT \"v=spf1 -all\"", *domains.zones()[OPERATOR][1:]])
    try:
        r = authenticate(signed, dnsfunc)  # the relay's own IP withdrawn from its SPF record
        assert (r["spf"].result, r["dkim"].result, r["dmarc"].result) == ("fail", "pass", "pass")
    finally:
        knot.update(OPERATOR, domains.zones()[OPERATOR])
    assert sent_only_to_knot(knot_only, knot)


def test_tampered_subject_fails_dkim_and_dmarc(
    domains: Domains, knot: KnotServer, dnsfunc: Callable[..., Any], knot_only: list[tuple[str, int]]
) -> None:
    _require_nacl()
    signed = relay_message(domains)
    tampered = signed.replace(b"Subject: Your weekly", b"Subject: Your WEEKLY")
    assert tampered != signed

    r = authenticate(tampered, dnsfunc)
    assert (r["spf"].result, r["dkim"].result, r["dmarc"].result) == ("pass", "fail", "fail")
    assert r["dkim"].header_d == MEMBER
    for i in range(3):  # no signature survives, so nothing else could align either
        assert authenticate(only_signature(tampered, i), dnsfunc)["dkim"].result == "fail", i
    assert sent_only_to_knot(knot_only, knot)
