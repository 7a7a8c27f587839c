"""check_domain against a real authoritative server (Knot): every failure mode, its status and its fix."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import trio

from relay.config import DeliveryConfig
from relay.dns.checks import DnsLookup, DnsLookupError, DomainReport, check_domain
from relay.mail.dkimkeys import DomainKeys
from tests.peers.knot import KnotServer

from .conftest import CFG, DID, RELAY_V4, RELAY_V6, TOKEN, expected, zone

OURS = f"ip4:{RELAY_V4} ip6:{RELAY_V6}"


def _split(value: str) -> tuple[str, str]:
    half = len(value) // 2
    return value[:half], value[half:]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, keys: DomainKeys, other_keys: DomainKeys
) -> Iterator[KnotServer]:
    rsa_a, rsa_b = _split(keys.rsa_txt)
    chain = [f'spf{i} TXT "v=spf1 include:spf{i + 1}.spfmany.test -all"' for i in range(1, 11)]
    zones = {
        "good.test": zone("good.test", keys),
        "nochallenge.test": zone("nochallenge.test", keys, drop=("ownership",)),
        "wrongtoken.test": zone("wrongtoken.test", keys, drop=("ownership",),
                                extra=('_atmos-challenge TXT "atmos-verify=not-yours"',
                                       '_atmos-challenge TXT "something else"')),
        "misplaced.test": zone("misplaced.test", keys, drop=("ownership",),
                               extra=(f'_atmos-challenge.misplaced.test TXT "atmos-verify={TOKEN}"',)),
        "manytxt.test": zone("manytxt.test", keys, extra=('_atmos-challenge TXT "unrelated"',)),
        "nodkim.test": zone("nodkim.test", keys, drop=("dkim-rsa", "dkim-ed25519")),
        "wrongkey.test": zone("wrongkey.test", keys, drop=("dkim-rsa",),
                              extra=(f'atmostestr._domainkey TXT "{_split(other_keys.rsa_txt)[0]}" '
                                     f'"{_split(other_keys.rsa_txt)[1]}"',)),
        "splitdkim.test": zone("splitdkim.test", keys, drop=("dkim-rsa",),
                               extra=(f'atmostestr._domainkey TXT "{rsa_a}"', f'atmostestr._domainkey TXT "{rsa_b}"')),
        "truncated.test": zone("truncated.test", keys, drop=("dkim-rsa",),
                               extra=(f'atmostestr._domainkey TXT "{rsa_a}"',)),
        "revoked.test": zone("revoked.test", keys, drop=("dkim-rsa",),
                             extra=('atmostestr._domainkey TXT "v=DKIM1; k=rsa; p="',)),
        "wrongk.test": zone("wrongk.test", keys, drop=("dkim-ed25519",),
                            extra=(f'atmosteste._domainkey TXT "{keys.ed25519_txt.replace("k=ed25519", "k=rsa")}"',)),
        "vlast.test": zone("vlast.test", keys, drop=("dkim-ed25519",),
                           extra=(f'atmosteste._domainkey TXT "k=ed25519; v=DKIM1; {keys.ed25519_txt.split("; ")[2]}"',)),
        "dkimextra.test": zone("dkimextra.test", keys,
                               extra=(f'atmosteste._domainkey TXT "{other_keys.ed25519_txt}"',)),
        "dkimspaces.test": zone("dkimspaces.test", keys, drop=("dkim-rsa",),
                                extra=(f'atmostestr._domainkey TXT "{rsa_a}" " {rsa_b}"',)),
        "spfall.test": zone("spfall.test", keys, drop=("spf",), extra=(f'@ TXT "v=spf1 {OURS} +all"',)),
        "spfbareall.test": zone("spfbareall.test", keys, drop=("spf",),
                                extra=('@ TXT "v=spf1 include:_spf.spfbareall.test -all"', '_spf TXT "v=spf1 all"')),
        "spfnoip.test": zone("spfnoip.test", keys, drop=("spf",),
                             extra=('@ TXT "v=spf1 ip4:198.51.100.1 mx ~all"',)),
        "spfallfirst.test": zone("spfallfirst.test", keys, drop=("spf",),
                                 extra=(f'@ TXT "v=spf1 -all {OURS}"',)),
        "spftwo.test": zone("spftwo.test", keys, extra=('@ TXT "v=spf1 include:_spf.google.com ~all"',)),
        "spfmany.test": zone("spfmany.test", keys, drop=("spf",),
                             extra=(f'@ TXT "v=spf1 {OURS} include:spf1.spfmany.test -all"', *chain,
                                    'spf11 TXT "v=spf1 -all"')),
        "spfneutral.test": zone("spfneutral.test", keys, drop=("spf",), extra=(f'@ TXT "v=spf1 {OURS} ?all"',)),
        "spfinclude.test": zone("spfinclude.test", keys, drop=("spf",),
                                extra=('@ TXT "v=spf1 a include:_spf.spfinclude.test redirect=x.test ~all"',
                                       f'_spf TXT "v=spf1 {OURS} -all"')),
        "spfdangling.test": zone("spfdangling.test", keys, drop=("spf",),
                                 extra=(f'@ TXT "v=spf1 {OURS} include:gone.spfdangling.test -all"',)),
        "spfsyntax.test": zone("spfsyntax.test", keys, drop=("spf",), extra=(f'@ TXT "v=spf1 {OURS} ip4:300.1.1.1 -all"',)),
        "dmarcnone.test": zone("dmarcnone.test", keys, drop=("dmarc",),
                               extra=('_dmarc TXT "v=DMARC1; p=none; rua=mailto:d@dmarcnone.test"',)),
        "nodmarc.test": zone("nodmarc.test", keys, drop=("dmarc",)),
        "dmarcpct.test": zone("dmarcpct.test", keys, drop=("dmarc",), extra=('_dmarc TXT "v=DMARC1; p=reject; pct=20"',)),
        "parent.test": [
            '_dmarc TXT "v=DMARC1; p=quarantine"',
            *zone("mail.parent.test", keys, drop=("dmarc",)),
        ],
        "loose.test": [
            '_dmarc TXT "v=DMARC1; p=reject; sp=none"',
            *zone("mail.loose.test", keys, drop=("dmarc",)),
        ],
        "nomx.test": zone("nomx.test", keys, drop=("mx",)),
        "othermx.test": zone("othermx.test", keys, drop=("mx",), extra=("@ MX 10 mail.elsewhere.test.",)),
        "nullmx.test": zone("nullmx.test", keys, drop=("mx",), extra=("@ MX 0 .",)),
        "dkimcname.test": zone("dkimcname.test", keys, drop=("dkim-ed25519",),
                               extra=("atmosteste._domainkey CNAME key.provider.dkimcname.test.",
                                      f'key.provider TXT "{keys.ed25519_txt}"')),
    }
    with KnotServer(tmp_path_factory.mktemp("knot"), zones, servfail=["broken.test"]) as dns:
        yield dns


async def run_check(server: KnotServer, domain: str, keys: DomainKeys) -> DomainReport:
    lookup = DnsLookup(server.nameservers, lifetime=2.0)
    return await check_domain(domain, expected=expected(domain, keys), did=DID, lookup=lookup)


def statuses(report: DomainReport) -> dict[str, str]:
    return {r.kind: r.status for r in report.results}


ALL_OK = {"ownership": "ok", "dkim-rsa": "ok", "dkim-ed25519": "ok", "spf": "ok", "dmarc": "ok", "mx": "ok"}


@pytest.mark.trio
async def test_all_good_domain(server: KnotServer, keys: DomainKeys) -> None:
    report = await run_check(server, "good.test", keys)
    assert statuses(report) == ALL_OK
    assert report.ownership_ok and report.dkim_ok and report.spf_ok and report.dmarc_ok and report.all_ok
    assert not report.dns_error
    assert all(r.fix == "" for r in report.results)
    rsa = report.result("dkim-rsa")
    assert rsa is not None and rsa.found == [keys.rsa_txt]  # the two strings, concatenated
    data = json.loads(json.dumps(report.to_json()))
    assert data["all_ok"] is True and data["domain"] == "good.test" and data["did"] == DID
    assert [r["kind"] for r in data["results"]] == list(ALL_OK)
    assert data["records"][0]["name"] == "_atmos-challenge.good.test"


# (domain, kind, status, words the fix must contain); every other result of the domain is ok
CASES = [
    ("nochallenge.test", "ownership", "missing",
     ["Publish ONE TXT record at _atmos-challenge.nochallenge.test", f"atmos-verify={TOKEN}"]),
    ("wrongtoken.test", "ownership", "wrong", ["different token", "atmos-verify=not-yours", f"atmos-verify={TOKEN}"]),
    ("misplaced.test", "ownership", "missing",
     ["_atmos-challenge.misplaced.test.misplaced.test", "enter only '_atmos-challenge'"]),
    ("nodkim.test", "dkim-rsa", "missing",
     ["Publish ONE TXT record at atmostestr._domainkey.nodkim.test", "2 quoted strings of the same record"]),
    ("wrongkey.test", "dkim-rsa", "wrong", ["The published key is not the one the relay signs with", "replace p=...", "The value must be, as 2 strings of ONE record"]),
    ("splitdkim.test", "dkim-rsa", "wrong",
     ["split into 2 separate TXT records", "publish ONE TXT record whose value is split into strings"]),
    ("truncated.test", "dkim-rsa", "wrong", ["cut short", "second 255-byte string"]),
    ("revoked.test", "dkim-rsa", "wrong", ["empty p=", "revokes the key"]),
    ("wrongk.test", "dkim-ed25519", "wrong", ["says k=rsa", "set k=ed25519"]),
    ("vlast.test", "dkim-ed25519", "wrong", ["The tag v=DKIM1 must come first"]),
    ("dkimextra.test", "dkim-ed25519", "wrong", ["2 TXT records", "delete every record except"]),
    ("spfall.test", "spf", "wrong", ["every server on the internet", "use -all or ~all", f"v=spf1 {OURS} -all"]),
    ("spfbareall.test", "spf", "wrong", ["every server on the internet", "use -all or ~all"]),
    ("spfnoip.test", "spf", "wrong",
     ["does not authorize the relay", "ip4:192.0.2.10, ip6:2001:db8::10",
      f"v=spf1 ip4:198.51.100.1 mx {OURS} ~all"]),
    ("spfallfirst.test", "spf", "wrong", ["does not authorize the relay", "before any 'all'", f"v=spf1 {OURS} -all"]),
    ("spftwo.test", "spf", "wrong",
     ["2 SPF records", "RFC 7208 §4.5", "permerror", f"v=spf1 include:_spf.google.com {OURS} -all"]),
    ("spfmany.test", "spf", "wrong", ["Too many DNS lookups", "takes 11", "limit is 10"]),
    ("spfneutral.test", "spf", "warning", ["?all", "use -all or ~all"]),
    ("spfdangling.test", "spf", "wrong", ["The term include:gone.spfdangling.test", "no SPF record", "permerror"]),
    ("spfsyntax.test", "spf", "wrong", ["invalid", "ip4:300.1.1.1"]),
    ("dmarcnone.test", "dmarc", "wrong",
     ["p=none does not protect dmarcnone.test", "use p=quarantine or p=reject", "v=DMARC1; p=reject"]),
    ("nodmarc.test", "dmarc", "missing", ["Publish ONE TXT record at _dmarc.nodmarc.test", "v=DMARC1; p=reject"]),
    ("dmarcpct.test", "dmarc", "warning", ["pct=20"]),
    ("mail.loose.test", "dmarc", "wrong", ["_dmarc.loose.test", "sp=none", "publish your own record at _dmarc.mail.loose.test"]),
    ("nomx.test", "mx", "warning", ["Optional", "no MX record", "not forwarded", "MX 10 mx.relay.test"]),
    ("othermx.test", "mx", "warning", ["points elsewhere", "MX 10 mx.relay.test"]),
    ("nullmx.test", "mx", "warning", ["null MX", "replies to your mail bounce"]),
]


@pytest.mark.trio
@pytest.mark.parametrize(("domain", "kind", "status", "words"), CASES, ids=[c[0] for c in CASES])
async def test_failure_modes(
    server: KnotServer, keys: DomainKeys, domain: str, kind: str, status: str, words: list[str]
) -> None:
    report = await run_check(server, domain, keys)
    result = report.result(kind)  # type: ignore[arg-type]
    assert result is not None
    assert result.status == status, result
    for word in words:
        assert word in result.fix, (word, result.fix)
    others = {k: s for k, s in statuses(report).items() if k != kind and not (domain == "nodkim.test" and k.startswith("dkim"))}
    assert others == {k: "ok" for k in others}
    assert result.expected == next(r.value for r in report.records if r.kind == kind)
    if status == "wrong":
        assert result.found, "what was found is shown"


@pytest.mark.trio
async def test_ok_report_flags(server: KnotServer, keys: DomainKeys) -> None:
    missing = await run_check(server, "nochallenge.test", keys)
    assert not missing.ownership_ok and missing.dkim_ok and not missing.all_ok
    nodkim = await run_check(server, "nodkim.test", keys)
    assert nodkim.ownership_ok and not nodkim.dkim_ok and not nodkim.all_ok
    assert statuses(nodkim)["dkim-ed25519"] == "missing"
    neutral = await run_check(server, "spfneutral.test", keys)
    assert neutral.spf_ok and neutral.all_ok  # a warning never blocks
    nomx = await run_check(server, "nomx.test", keys)
    assert nomx.all_ok  # MX is optional
    twospf = await run_check(server, "spftwo.test", keys)
    assert not twospf.spf_ok and not twospf.all_ok
    dmarcnone = await run_check(server, "dmarcnone.test", keys)
    assert not dmarcnone.dmarc_ok


@pytest.mark.trio
async def test_challenge_among_other_txt_records(server: KnotServer, keys: DomainKeys) -> None:
    report = await run_check(server, "manytxt.test", keys)
    ownership = report.result("ownership")
    assert ownership is not None and ownership.status == "ok"
    assert sorted(ownership.found) == sorted([f"atmos-verify={TOKEN}", "unrelated"])


@pytest.mark.trio
async def test_dkim_strings_with_spaces_are_still_the_key(server: KnotServer, keys: DomainKeys) -> None:
    """FWS inside p= is allowed (RFC 6376 §3.6.1): a space between strings does no harm."""
    report = await run_check(server, "dkimspaces.test", keys)
    assert statuses(report)["dkim-rsa"] == "ok"


@pytest.mark.trio
async def test_dkim_through_a_cname(server: KnotServer, keys: DomainKeys) -> None:
    report = await run_check(server, "dkimcname.test", keys)
    assert statuses(report) == ALL_OK


def test_lookup_nameservers_from_config() -> None:
    cfg = dataclasses.replace(CFG, delivery=DeliveryConfig(nameservers=("127.0.0.1:5301",)))
    assert DnsLookup.from_config(cfg).nameservers == ("127.0.0.1@5301",)
    cfg = dataclasses.replace(cfg, dns=dataclasses.replace(cfg.dns, nameservers=("127.0.0.2:5302", "::1")))
    assert DnsLookup.from_config(cfg).nameservers == ("127.0.0.2@5302", "::1@53")


@pytest.mark.trio
async def test_spf_include_chain_authorizes_the_relay(server: KnotServer, keys: DomainKeys) -> None:
    report = await run_check(server, "spfinclude.test", keys)
    spf = report.result("spf")
    assert spf is not None and spf.status == "ok", spf
    assert spf.note == "2 of 10 DNS lookups used"  # a + include (redirect= is ignored beside 'all')


@pytest.mark.trio
async def test_dmarc_inherited_from_the_organizational_domain(server: KnotServer, keys: DomainKeys) -> None:
    report = await run_check(server, "mail.parent.test", keys)
    assert statuses(report) == ALL_OK
    dmarc = report.result("dmarc")
    assert dmarc is not None
    assert dmarc.name == "_dmarc.mail.parent.test" and dmarc.source == "_dmarc.parent.test"
    assert "inherited from _dmarc.parent.test" in dmarc.note
    assert dmarc.found == ["v=DMARC1; p=quarantine"]
    assert report.to_json()["results"][4]["source"] == "_dmarc.parent.test"


@pytest.mark.trio
async def test_servfail_is_an_error_not_a_verdict(server: KnotServer, keys: DomainKeys) -> None:
    report = await run_check(server, "broken.test", keys)
    assert set(statuses(report).values()) == {"error"}
    assert report.dns_error and not report.ownership_ok
    ownership = report.result("ownership")
    assert ownership is not None
    assert ownership.fix.startswith("Could not look up _atmos-challenge.broken.test")
    assert "try again" in ownership.fix


@pytest.mark.trio
async def test_unreachable_nameserver_times_out_as_error(keys: DomainKeys) -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))  # bound but never answers: a black hole
        port = sock.getsockname()[1]
        lookup = DnsLookup([f"127.0.0.1:{port}"], lifetime=0.3)
        with pytest.raises(DnsLookupError, match="no DNS answer within 0.3 s"):
            await lookup.txt("example.test")
        report = await check_domain("example.test", expected=expected("example.test", keys), did=DID, lookup=lookup)
    assert set(statuses(report).values()) == {"error"}
