"""Enrollment without --skip-dns, then `atmos admin domain check` against records published in Knot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.mail.dkimkeys import zone_txt
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.peers.knot import KnotServer

DID = "did:plc:dnscheckaaaaaaaaaaaaaaaa"
DOMAIN = "checked.example.net"


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[KnotServer]:
    with KnotServer(tmp_path / "knot", {DOMAIN: ["@ 300 A 127.0.0.1"]}) as server:
        yield server


def zone_lines(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for rec in records:
        label = "@" if rec["name"] == DOMAIN else rec["name"].removesuffix("." + DOMAIN)
        value = zone_txt(rec["value"]) if rec["type"] == "TXT" else rec["value"] + "."
        lines.append(f"{label} 300 {rec['type']} {value}")
    return lines


def test_pending_until_dns_is_published_then_verified(tmp_path: Path, tls_files: TLSFiles, dns: KnotServer) -> None:
    relay = RelayProcess(base=tmp_path, tls=tls_files,
                         extra_toml=f'[dns]\nnameservers = ["{dns.nameservers[0]}"]\nrelay_ips = ["192.0.2.25"]\n')
    relay.write_config()
    info = relay.admin("enroll", "--did", DID, "--domain", DOMAIN)
    assert info["state"] == "pending"
    kinds = {r["kind"] for r in info["records"]}
    assert kinds == {"ownership", "dkim-rsa", "dkim-ed25519", "spf", "dmarc", "mx"}

    report = relay.admin("domain", "check", DOMAIN)
    assert report["state"] == "pending" and not report["ownership_ok"]
    by_kind = {r["kind"]: r for r in report["results"]}
    assert by_kind["ownership"]["status"] == "missing" and "_atmos-challenge" in by_kind["ownership"]["fix"]
    assert by_kind["spf"]["status"] == "missing"

    relay.start()  # sending is refused while the domain is pending
    r = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {info['api_key']}", "X-Atmos-DID": DID},
                   json={"from": f"a@{DOMAIN}", "to": "x@example.org", "subject": "s", "text": "t"})
    assert r.status_code == 403 and "not yet verified" in r.json()["error"]

    dns.update(DOMAIN, ["@ 300 A 127.0.0.1", *zone_lines(info["records"])])
    report = relay.admin("domain", "check", DOMAIN)
    assert report["all_ok"] and report["state"] == "verified" and report["dkim_state"] == "verified"

    r = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {info['api_key']}", "X-Atmos-DID": DID},
                   json={"from": f"a@{DOMAIN}", "to": "x@example.org", "subject": "s", "text": "t"})
    assert r.status_code == 200, r.text
    relay.stop()

    dns.update(DOMAIN, [line.replace("-all", "+all") for line in ["@ 300 A 127.0.0.1", *zone_lines(info["records"])]])
    report = relay.admin("domain", "check", DOMAIN, "--dry-run")
    spf = next(r for r in report["results"] if r["kind"] == "spf")
    assert spf["status"] == "wrong" and "+all" in spf["fix"]
