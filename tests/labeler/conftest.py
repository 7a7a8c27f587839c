"""A real relay process, a Knot zone for the member's domain and a tiny fake PDS (did:web on loopback).

The fake PDS answers only what the labeler asks a PDS: ``/.well-known/did.json`` (the member's did:web
document naming itself as ``#atproto_pds``) and ``com.atproto.repo.getRecord`` for
``email.atmos.attestation`` (400 ``RecordNotFound`` when absent), like the reference PDS does.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import libipld
import pytest
from atproto_core.did_doc import DidDocument
from atproto_crypto.did import get_did_key
from atproto_crypto.verify import verify_signature
from atproto_identity.did.resolvers.web_resolver import DidWebResolver

from relay.mail.dkimkeys import zone_txt
from tests.e2e.relayproc import RelayProcess, TLSFiles, make_tls
from tests.peers.httpd import QuietHandler, serving
from tests.peers.knot import KnotServer

DOMAIN = "member.example.net"
LABELER = "did:web:labeler.test"


@dataclass
class FakePds:
    port: int
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # rkey -> value
    fetches: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def did(self) -> str:
        return f"did:web:127.0.0.1%3A{self.port}"


def attestation(domain: str = DOMAIN, **over: Any) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return {"$type": "email.atmos.attestation", "domain": domain, "dkimSelectors": ["x"],
            "createdAt": now, "relayMember": True, **over}


@pytest.fixture(scope="module")
def pds() -> Iterator[FakePds]:
    state: dict[str, FakePds] = {}

    class Handler(QuietHandler):
        def reply(self, code: int, body: dict[str, Any]) -> None:
            self.send_body(json.dumps(body).encode(), "application/json", code)

        def do_GET(self) -> None:
            fake = state["pds"]
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/.well-known/did.json":
                self.reply(200, {"@context": ["https://www.w3.org/ns/did/v1"], "id": fake.did, "alsoKnownAs": [],
                                 "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                                              "serviceEndpoint": fake.url}]})
            elif url.path == "/xrpc/com.atproto.repo.getRecord":
                fake.fetches += 1
                value = fake.records.get(query.get("rkey", ""))
                if query.get("repo") != fake.did or query.get("collection") != "email.atmos.attestation" or value is None:
                    self.reply(400, {"error": "RecordNotFound", "message": "Could not locate record"})
                else:
                    uri = f"at://{fake.did}/email.atmos.attestation/{query['rkey']}"
                    self.reply(200, {"uri": uri, "cid": "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5iqerwvqtdfdwu", "value": value})
            else:
                self.reply(404, {"error": "NotFound"})

    with serving(Handler) as port:
        state["pds"] = FakePds(port)
        yield state["pds"]


def zone_lines(records: list[dict[str, Any]], selector_x: bool = True) -> list[str]:
    lines = ["@ 300 A 127.0.0.1"]
    for rec in records:
        label = "@" if rec["name"] == DOMAIN else rec["name"].removesuffix("." + DOMAIN)
        value = zone_txt(rec["value"]) if rec["type"] == "TXT" else rec["value"] + "."
        lines.append(f"{label} 300 {rec['type']} {value}")
    if selector_x:  # the selector the attestation declares (a member's own DKIM key elsewhere)
        lines.append('x._domainkey 300 TXT "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="')
    return lines


@dataclass
class Setup:
    relay: RelayProcess
    dns: KnotServer
    pds: FakePds
    records: list[dict[str, Any]]

    @property
    def did(self) -> str:
        return self.pds.did

    def publish(self, edit: Callable[[list[str]], list[str]] = lambda lines: lines) -> None:
        self.dns.update(DOMAIN, edit(zone_lines(self.records)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, pds: FakePds) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("labeler")
    tls: TLSFiles = make_tls(base / "tls")
    with KnotServer(base / "knot", {DOMAIN: ["@ 300 A 127.0.0.1"]}) as dns:
        relay = RelayProcess(base=base / "relay", tls=tls, extra_toml=(
            f'[dns]\nnameservers = ["{dns.nameservers[0]}"]\nrelay_ips = ["192.0.2.25"]\n'
            "recheck_interval = 1.0\npending_recheck_interval = 1.0\n"
            '[identity]\nplc_url = "http://127.0.0.1:1"\ntimeout = 3.0\n'
            f'[labeler]\ndid = "{LABELER}"\nrecheck_interval = 0.5\npending = 0.5\n'))
        relay.base.mkdir(parents=True, exist_ok=True)
        relay.write_config()
        info = relay.admin("enroll", "--did", pds.did, "--domain", DOMAIN)
        s = Setup(relay, dns, pds, info["records"])
        s.publish()
        pds.records[DOMAIN] = attestation()
        relay.start()
        try:
            yield s
        finally:
            if relay.proc is not None and relay.proc.poll() is None:
                relay.stop()
        log = "".join(relay.output)
        assert "Traceback" not in log and "relay.labeler" not in log, log


# ---- verification with the atproto SDK --------------------------------------------------------------


class SdkVerifier:
    """Resolves the labeler's did:web with the SDK's resolver (pointed at the loopback relay: the SDK
    only speaks https to port 443) and checks label signatures against its #atproto_label key."""

    def __init__(self, http_base: str) -> None:
        base = http_base

        class LoopbackWebResolver(DidWebResolver):
            @staticmethod
            def _parse_web_did(did: str) -> str:
                return base + "/.well-known/did.json"

        resolver = LoopbackWebResolver(timeout=5)
        try:
            doc = resolver.resolve(LABELER)
        finally:
            resolver._client.close()
        assert isinstance(doc, DidDocument) and doc.id == LABELER
        method = next(m for m in doc.verification_method or [] if m.id == f"{LABELER}#atproto_label")
        assert method.type == "Multikey"
        did_key = get_did_key(method.type, method.public_key_multibase)
        assert did_key is not None
        self.did_key = did_key
        self.doc = doc

    def verify(self, label: dict[str, Any]) -> bool:
        sig = label["sig"]
        if isinstance(sig, dict):
            raw = sig["$bytes"]
            import base64
            sig = base64.b64decode(raw + "=" * (-len(raw) % 4))
        unsigned = {k: v for k, v in label.items() if k != "sig"}
        return verify_signature(self.did_key, libipld.encode_dag_cbor(unsigned), sig)


def query(http_base: str, did: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"{http_base}/xrpc/com.atproto.label.queryLabels", params={"uriPatterns": did, **params}, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def current(http_base: str, did: str) -> dict[str, bool]:
    """val -> live (True) or negated (False), from queryLabels (latest label per value)."""
    return {lab["val"]: not lab.get("neg", False) for lab in query(http_base, did, limit=250)["labels"]}


def wait_for(http_base: str, did: str, want: dict[str, bool], timeout: float = 20.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    seen: dict[str, bool] = {}
    while time.monotonic() < deadline:
        seen = current(http_base, did)
        if all(seen.get(k, False) == v for k, v in want.items()):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"labels never became {want}; last seen {seen}")


__all__ = ["Path"]
