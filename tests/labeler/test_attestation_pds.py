"""relay-member from a REAL PDS: the member writes and deletes its attestation record with the atproto SDK
on the local PDS (tests/localpds: @atproto/pds + in-memory PLC on loopback), and the real relay process
resolves the member's did:plc through the local PLC and reads the record from that PDS.

DNS is the same Knot zone the other labeler e2e tests use. Handles resolve through the PDS's own
``/.well-known/atproto-did`` (``handle_resolution = "well-known-at"``), so nothing leaves the machine.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from atproto import Client

from relay.labeler.conditions import ATTESTATION_COLLECTION
from tests.e2e.relayproc import RelayProcess, make_tls
from tests.labeler.conftest import DOMAIN, LABELER, SdkVerifier, query, wait_for, zone_lines
from tests.localpds.fixture import LocalPds, local_pds, probe_tls
from tests.peers.knot import KnotServer

__all__ = ["local_pds", "probe_tls"]  # session fixtures (start the local PDS once)

BOTH = {"verified-mail-operator": True, "relay-member": True}


@pytest.fixture
def relay(tmp_path_factory: pytest.TempPathFactory, local_pds: LocalPds) -> Iterator[tuple[RelayProcess, list[str]]]:
    """The relay, enrolled for the local PDS account's DID, its DNS published in Knot; yields it and the
    enrolled DKIM selectors."""
    base = tmp_path_factory.mktemp("labeler-pds")
    with KnotServer(base / "knot", {DOMAIN: ["@ 300 A 127.0.0.1"]}) as dns:
        proc = RelayProcess(base=base / "relay", tls=make_tls(base / "tls"), extra_toml=(
            f'[dns]\nnameservers = ["{dns.nameservers[0]}"]\nrelay_ips = ["192.0.2.25"]\n'
            "recheck_interval = 1.0\npending_recheck_interval = 1.0\n"
            f'[identity]\nplc_url = "{local_pds.plc_url}"\ntimeout = 5.0\n'
            f'handle_resolution = "well-known-at"\nhandle_resolver_url = "{local_pds.pds_url}"\n'
            f'[labeler]\ndid = "{LABELER}"\nrecheck_interval = 0.5\npending = 0.5\n'))
        proc.base.mkdir(parents=True, exist_ok=True)
        proc.write_config()
        info = proc.admin("enroll", "--did", local_pds.did, "--domain", DOMAIN)
        records: list[dict[str, Any]] = info["records"]
        dns.update(DOMAIN, zone_lines(records, selector_x=False))  # only the relay's own DKIM selectors
        selectors = sorted(r["name"].split("._domainkey.")[0] for r in records if "._domainkey." in r["name"])
        assert selectors, records
        proc.start()
        try:
            yield proc, selectors
        finally:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()
        log = "".join(proc.output)
        assert "Traceback" not in log and "relay.labeler" not in log, log


def test_relay_member_follows_the_attestation_record_on_a_real_pds(
    local_pds: LocalPds, relay: tuple[RelayProcess, list[str]]
) -> None:
    proc, selectors = relay
    http, did = proc.http, local_pds.did
    sdk = SdkVerifier(http)

    # No record yet: the domain checks out, but the member has not attested.
    wait_for(http, did, {"verified-mail-operator": True})
    assert "relay-member" not in {lab["val"] for lab in query(http, did)["labels"]}

    member = Client(base_url=local_pds.pds_url)
    try:
        member_writes(member, local_pds, http, sdk, selectors)
    finally:
        member.request.close()


def member_writes(member: Client, local_pds: LocalPds, http: str, sdk: SdkVerifier, selectors: list[str]) -> None:
    did = local_pds.did
    member.login(local_pds.handle, local_pds.password)
    assert member.me is not None and member.me.did == did
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    put = member.com.atproto.repo.put_record({
        "repo": did, "collection": ATTESTATION_COLLECTION, "rkey": DOMAIN,
        "record": {"$type": ATTESTATION_COLLECTION, "domain": DOMAIN, "dkimSelectors": selectors,
                   "relayMember": True, "createdAt": now}})
    assert put.uri == f"at://{did}/{ATTESTATION_COLLECTION}/{DOMAIN}"

    wait_for(http, did, BOTH)
    labels = query(http, did)["labels"]
    granted = [lab for lab in labels if lab["val"] == "relay-member" and not lab.get("neg")]
    assert len(granted) == 1 and granted[0]["src"] == LABELER and granted[0]["uri"] == did
    assert all(sdk.verify(lab) for lab in labels)

    member.com.atproto.repo.delete_record({"repo": did, "collection": ATTESTATION_COLLECTION, "rkey": DOMAIN})
    wait_for(http, did, {"relay-member": False, "verified-mail-operator": True})
    labels = query(http, did)["labels"]
    negations = [lab for lab in labels if lab["val"] == "relay-member" and lab.get("neg")]
    assert len(negations) == 1 and negations[0]["src"] == LABELER and negations[0]["uri"] == did
    assert all(sdk.verify(lab) for lab in labels)
    assert not any(lab.get("neg") for lab in labels if lab["val"] == "verified-mail-operator")
