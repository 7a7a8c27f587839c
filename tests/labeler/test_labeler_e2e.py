"""Labels from the real relay process, over real HTTP and the real websocket, verified with the atproto
SDK against the key in the served DID document; DNS degradations in Knot and the attestation record in a
(fake, see conftest) PDS drive them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from atproto_core.cbor import decode_dag_multi
from atproto_firehose import parse_subscribe_labels_message
from atproto_subscription.frames import MessageFrame, parse_frame, parse_frame_header

from tests.labeler.conftest import DOMAIN, LABELER, SdkVerifier, Setup, attestation, current, query, wait_for

BOTH = {"verified-mail-operator": True, "relay-member": True}


def test_did_document_and_query_labels_verify_with_the_sdk(setup: Setup) -> None:
    http = setup.relay.http
    sdk = SdkVerifier(http)
    assert sdk.doc.get_service_endpoint("#atproto_labeler", "AtprotoLabeler")
    wait_for(http, setup.did, BOTH)
    body = query(http, setup.did)
    assert body["labels"] and all(sdk.verify(lab) for lab in body["labels"])
    assert all(lab["src"] == LABELER and lab["uri"] == setup.did and lab["ver"] == 1 for lab in body["labels"])
    # prefix patterns, sources, paging
    assert query(http, "did:web:127.0.0.1*")["labels"] == body["labels"]
    assert query(http, setup.did, sources="did:web:someone-else")["labels"] == []
    first = query(http, setup.did, limit=1)
    assert len(first["labels"]) == 1
    rest = query(http, setup.did, cursor=first["cursor"])
    assert first["labels"] + rest["labels"] == body["labels"]
    bad = httpx.get(f"{http}/xrpc/com.atproto.label.queryLabels", params={"uriPatterns": "*", "limit": "251"})
    assert bad.status_code == 400 and bad.json()["error"] == "InvalidRequest"


def parse(frame: bytes) -> tuple[dict[str, Any], Any]:
    header, body = decode_dag_multi(frame)
    parsed = parse_frame(parse_frame_header(header), body)
    if isinstance(parsed, MessageFrame) and parsed.type == "#labels":
        return header, parse_subscribe_labels_message(parsed)
    return header, body


async def next_labels(ws: trio_websocket.WebSocketConnection, wait: float = 20.0) -> Any:
    with trio.fail_after(wait):
        while True:
            header, message = parse(await ws.get_message())
            if header.get("t") == "#labels":
                return message


def wire(label: Any) -> dict[str, Any]:
    """An SDK label model back to the wire dict (for re-encoding and verification)."""
    out = {"ver": label.ver, "src": label.src, "uri": label.uri, "val": label.val, "cts": label.cts, "sig": label.sig}
    if label.neg:
        out["neg"] = True
    if label.exp:
        out["exp"] = label.exp
    return out


@pytest.mark.trio
async def test_subscribe_replays_from_cursor_then_goes_live_and_negations_verify(setup: Setup) -> None:
    http = setup.relay.http
    sdk = SdkVerifier(http)
    await trio.to_thread.run_sync(wait_for, http, setup.did, BOTH)
    ws_url = http.replace("http://", "ws://") + "/xrpc/com.atproto.label.subscribeLabels"

    async with trio_websocket.open_websocket_url(ws_url + "?cursor=0") as ws:
        replay = [await next_labels(ws)]
        while len(replay) < 2 or not {m.labels[0].val for m in replay} >= set(BOTH):
            replay.append(await next_labels(ws))
        seqs = [m.seq for m in replay]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert all(sdk.verify(wire(m.labels[0])) for m in replay)

        setup.pds.records.pop(DOMAIN)  # the member deletes the attestation: a live negation follows
        live = await next_labels(ws)
        assert live.seq > seqs[-1]
        assert live.labels[0].val == "relay-member" and live.labels[0].neg is True
        assert sdk.verify(wire(live.labels[0]))
    mid = live.seq

    setup.pds.records[DOMAIN] = attestation()  # while disconnected: relay-member comes back
    await trio.to_thread.run_sync(wait_for, http, setup.did, BOTH)

    async with trio_websocket.open_websocket_url(f"{ws_url}?cursor={mid}") as ws:  # reconnect: replay after mid
        again = await next_labels(ws)
        assert again.seq == mid + 1 and again.labels[0].val == "relay-member" and again.labels[0].neg is None
        assert sdk.verify(wire(again.labels[0]))

    async with trio_websocket.open_websocket_url(f"{ws_url}?cursor=999999") as ws:
        header, body = decode_dag_multi(await ws.get_message())
        assert header == {"op": -1} and body["error"] == "FutureCursor"


@pytest.mark.parametrize(("what", "edit"), [
    ("DMARC p=none", lambda lines: [ln.replace("p=reject", "p=none") for ln in lines]),
    ("SPF +all", lambda lines: [ln.replace("-all", "+all") for ln in lines]),
    ("DKIM removed", lambda lines: [ln for ln in lines if "._domainkey" not in ln or ln.startswith("x.")]),
])
def test_dns_degradation_negates_at_the_next_pass(setup: Setup, what: str, edit: Any) -> None:
    http = setup.relay.http
    sdk = SdkVerifier(http)
    setup.publish()
    wait_for(http, setup.did, BOTH)
    before = int(query(http, "*")["cursor"])
    setup.publish(edit)
    wait_for(http, setup.did, {"verified-mail-operator": False, "relay-member": False})
    new = query(http, "*", cursor=before)["labels"]
    assert new and all(int(lab.get("neg", False)) for lab in new), what
    negations = [lab for lab in query(http, setup.did)["labels"] if lab.get("neg")]
    assert {lab["val"] for lab in negations} >= {"verified-mail-operator", "relay-member"}, what
    assert all(sdk.verify(lab) for lab in negations + new)
    setup.publish()
    assert wait_for(http, setup.did, BOTH)


def test_attestation_rules(setup: Setup) -> None:
    http = setup.relay.http
    setup.publish()
    wait_for(http, setup.did, BOTH)
    setup.pds.records[DOMAIN] = attestation(relayMember=False)
    wait_for(http, setup.did, {"relay-member": False, "verified-mail-operator": True})
    setup.pds.records[DOMAIN] = attestation(dkimSelectors=["missing"])  # no v=DKIM1 at that selector
    wait_for(http, setup.did, {"relay-member": False})
    assert current(http, setup.did)["relay-member"] is False
    setup.pds.records[DOMAIN] = attestation()
    wait_for(http, setup.did, BOTH)
