"""Firehose-driven ``relay-member``: the local PDS's own ``com.atproto.sync.subscribeRepos`` stream makes the
real relay process label within seconds, with the periodic re-check set to an hour (so only the firehose
can be why); and the stream client against a scripted hostile Jetstream server (junk, oversized frames,
cursor resumed after reconnects)."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from atproto import Client

from relay.labeler.conditions import ATTESTATION_COLLECTION
from relay.labeler.firehose import FrameError, decode_jetstream, decode_repos_frame
from relay.store import open_store
from tests.e2e.relayproc import RelayProcess, make_tls
from tests.labeler.conftest import DOMAIN, LABELER, query, wait_for, zone_lines
from tests.localpds.fixture import LocalPds, local_pds, probe_tls
from tests.peers.knot import KnotServer

__all__ = ["local_pds", "probe_tls"]  # session fixtures (start the local PDS once)


@pytest.fixture
def relay(tmp_path_factory: pytest.TempPathFactory, local_pds: LocalPds) -> Iterator[tuple[RelayProcess, list[str]]]:
    base = tmp_path_factory.mktemp("firehose")
    stream = local_pds.pds_url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos"
    with KnotServer(base / "knot", {DOMAIN: ["@ 300 A 127.0.0.1"]}) as dns:
        proc = RelayProcess(base=base / "relay", tls=make_tls(base / "tls"), extra_toml=(
            f'[dns]\nnameservers = ["{dns.nameservers[0]}"]\nrelay_ips = ["192.0.2.25"]\n'
            "recheck_interval = 3600.0\npending_recheck_interval = 1.0\n"
            f'[testing]\nallow_loopback_peers = true\n[identity]\nplc_url = "{local_pds.plc_url}"\ntimeout = 5.0\n'
            f'handle_resolution = "well-known-at"\nhandle_resolver_url = "{local_pds.pds_url}"\n'
            f'[labeler]\ndid = "{LABELER}"\nrecheck_interval = 3600.0\npending = 1.0\n'
            f'firehose_url = "{stream}"\n'))
        proc.base.mkdir(parents=True, exist_ok=True)
        proc.write_config()
        info = proc.admin("enroll", "--did", local_pds.did, "--domain", DOMAIN)
        records: list[dict[str, Any]] = info["records"]
        dns.update(DOMAIN, zone_lines(records, selector_x=False))
        selectors = sorted(r["name"].split("._domainkey.")[0] for r in records if "._domainkey." in r["name"])
        proc.start()
        try:
            yield proc, selectors
        finally:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()
        log = "".join(proc.output)
        assert "Traceback" not in log, log


def test_attestation_commits_on_the_pds_firehose_label_within_seconds(
    local_pds: LocalPds, relay: tuple[RelayProcess, list[str]]
) -> None:
    proc, selectors = relay
    http, did = proc.http, local_pds.did
    wait_for(http, did, {"verified-mail-operator": True})
    member = Client(base_url=local_pds.pds_url)
    try:
        member.login(local_pds.handle, local_pds.password)
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        started = time.monotonic()
        member.com.atproto.repo.put_record({
            "repo": did, "collection": ATTESTATION_COLLECTION, "rkey": DOMAIN,
            "record": {"$type": ATTESTATION_COLLECTION, "domain": DOMAIN, "dkimSelectors": selectors,
                       "relayMember": True, "createdAt": now}})
        # The re-check is an hour away: only the firehose can bring this label in time.
        wait_for(http, did, {"verified-mail-operator": True, "relay-member": True})
        print(f"relay-member applied {time.monotonic() - started:.2f} s after the attestation commit")
        member.com.atproto.repo.delete_record({"repo": did, "collection": ATTESTATION_COLLECTION, "rkey": DOMAIN})
        wait_for(http, did, {"relay-member": False, "verified-mail-operator": True})
        negations = [lab for lab in query(http, did)["labels"] if lab["val"] == "relay-member" and lab.get("neg")]
        assert len(negations) == 1
    finally:
        member.request.close()
    cursor = open_store(f"sqlite:///{proc.state_dir / 'relay.db'}")
    try:
        # The firehose cursor is saved every few seconds and at shutdown.
        proc.stop()
        url = local_pds.pds_url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos"
        saved = cursor.get_firehose_cursor(url)
        assert saved is not None and saved > 0
    finally:
        cursor.close()


# ---- the client against a scripted Jetstream server -------------------------------------------------


def _jet(did: str, time_us: int, collection: str = ATTESTATION_COLLECTION) -> str:
    return json.dumps({"did": did, "time_us": time_us, "kind": "commit",
                       "commit": {"operation": "create", "collection": collection, "rkey": "x"}})


def test_decoders_refuse_junk() -> None:
    with pytest.raises(FrameError):
        decode_repos_frame(b"\xff\x00garbage")
    with pytest.raises(FrameError):
        decode_jetstream("[1, 2]")
    assert decode_jetstream(json.dumps({"kind": "identity", "did": "did:plc:x", "time_us": 5})).dids == ()
