"""The records a member publishes (DESIGN §7): pure values and their zone-file form."""

from __future__ import annotations

import dataclasses

import dns.zone

from relay.config import DnsConfig
from relay.dns.records import dmarc_value, records_for, spf_value, zone_file, zone_line
from relay.mail.dkimkeys import DomainKeys

from .conftest import CFG, DID, TOKEN, expected


def test_records_for_gives_design_section_7(keys: DomainKeys) -> None:
    records = expected("Example.COM.", keys)
    table = [(r.kind, r.name, r.type, r.value, r.required) for r in records]
    assert table == [
        ("ownership", "_atmos-challenge.example.com", "TXT", f"atmos-verify={TOKEN}", True),
        ("dkim-rsa", "atmostestr._domainkey.example.com", "TXT", keys.rsa_txt, True),
        ("dkim-ed25519", "atmosteste._domainkey.example.com", "TXT", keys.ed25519_txt, True),
        ("spf", "example.com", "TXT", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all", True),
        ("dmarc", "_dmarc.example.com", "TXT",
         "v=DMARC1; p=reject; adkim=r; aspf=r; rua=mailto:postmaster@relay.test", True),
        ("mx", "example.com", "MX", "10 mx.relay.test", False),
    ]
    assert all(r.purpose for r in records)
    assert DID in records[0].purpose


def test_txt_values_are_split_into_255_byte_strings(keys: DomainKeys) -> None:
    by_kind = {r.kind: r for r in expected("example.com", keys)}
    rsa = by_kind["dkim-rsa"]
    assert len(rsa.strings) == 2 and "".join(rsa.strings) == rsa.value
    assert all(len(s.encode()) <= 255 for s in rsa.strings)
    assert by_kind["spf"].strings == [by_kind["spf"].value]
    assert by_kind["mx"].strings == []


def test_spf_value_choices() -> None:
    base = dataclasses.replace(CFG, dns=DnsConfig())
    assert spf_value(base) == "v=spf1 include:relay.test -all"  # nothing configured: the operator's SPF
    with_ips = dataclasses.replace(CFG, dns=DnsConfig(relay_ips=("2001:0db8:0:0::1", "198.51.100.7")))
    assert spf_value(with_ips) == "v=spf1 ip6:2001:db8::1 ip4:198.51.100.7 -all"
    include = dataclasses.replace(CFG, dns=DnsConfig(relay_ips=("198.51.100.7",), spf_include="_spf.Relay.test"))
    assert spf_value(include) == "v=spf1 include:_spf.relay.test -all"  # include wins over addresses
    assert dmarc_value(base).endswith("rua=mailto:postmaster@relay.test")


def test_mx_defaults_to_the_operator_domain(keys: DomainKeys) -> None:
    cfg = dataclasses.replace(CFG, dns=DnsConfig())
    records = records_for("example.com", did=DID, verify_token="t", selector="s",
                          rsa_txt=keys.rsa_txt, ed25519_txt=keys.ed25519_txt, cfg=cfg)
    assert records[-1].value == "10 relay.test"


def test_zone_file_parses_back_to_the_same_values(keys: DomainKeys) -> None:
    records = expected("example.com", keys)
    text = zone_file(records, origin="example.com")
    assert "; DKIM public key (RSA)" in text and "(optional)" in text
    assert zone_line(records[0], origin="example.com") == f'_atmos-challenge 3600 IN TXT "atmos-verify={TOKEN}"'
    assert zone_line(records[3], origin="example.com", ttl=None) == (
        '@ IN TXT "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"'
    )
    assert zone_line(records[5]) == "example.com. 3600 IN MX 10 mx.relay.test."
    parsed = dns.zone.from_text(text + "@ 60 IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\n",
                                origin="example.com", relativize=False, check_origin=False)
    for record in records:
        rdataset = parsed.find_rdataset(record.name + ".", record.type)
        texts = [r.to_text() for r in rdataset]
        if record.type == "TXT":
            assert any("".join(s.decode() for s in r.strings) == record.value for r in rdataset), texts
        else:
            assert texts == ["10 mx.relay.test."]


def test_to_json_is_plain_data(keys: DomainKeys) -> None:
    data = expected("example.com", keys)[1].to_json()
    assert data["kind"] == "dkim-rsa" and data["zone"].startswith("atmostestr._domainkey.example.com. 3600 IN TXT")
    assert data["strings"] == expected("example.com", keys)[1].strings
