"""``GET /openapi.json`` against the real relay: the document is valid OpenAPI 3.1, every JSON endpoint is
in it, and every answer the relay gives (success and error) has its status documented and matches the
documented schema (JSON Schema 2020-12, validated with jsonschema)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec

from tests.e2e.conftest import Member
from tests.e2e.relayproc import RelayProcess

EXTRA_TOML = "[limits]\njson_body = 200000\nattachment_bytes = 100000\n"
ADMIN = {"Authorization": "Bearer admin-token-" + "x" * 20}


@pytest.fixture(scope="module")
def spec(relay: RelayProcess) -> dict[str, Any]:
    r = httpx.get(f"{relay.http}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = r.json()
    validate_spec(doc)  # OpenAPI 3.1 (openapi-spec-validator picks the version from "openapi")
    assert doc["openapi"].startswith("3.1") and doc["servers"] == [{"url": relay.http}]
    return doc


class Checker:
    def __init__(self, relay: RelayProcess, doc: dict[str, Any]) -> None:
        self.relay, self.doc = relay, doc
        self.seen: set[tuple[str, str, str]] = set()

    def call(self, method: str, template: str, status: int, *, path: str | None = None,
             **kwargs: Any) -> httpx.Response:
        r = httpx.request(method, self.relay.http + (path or template), timeout=30, **kwargs)
        assert r.status_code == status, (method, template, r.status_code, r.text[:500])
        operation = self.doc["paths"][template][method.lower()]
        responses = operation["responses"]
        assert str(r.status_code) in responses, f"{method} {template}: status {r.status_code} is not documented"
        schema = responses[str(r.status_code)]["content"]["application/json"]["schema"]
        root = {**schema, "components": self.doc["components"]}  # "#/components/..." refs resolve here
        jsonschema.Draft202012Validator(root).validate(r.json())
        self.seen.add((method.lower(), template, str(r.status_code)))
        return r


@pytest.fixture(scope="module")
def check(relay: RelayProcess, spec: dict[str, Any]) -> Iterator[Checker]:
    checker = Checker(relay, spec)
    yield checker
    # Every operation in the document was exercised, with its success status at least.
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert {(m, p) for m, p, _ in checker.seen} == documented


def auth(member: Member, key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or member.key}", "X-Atmos-DID": member.did}


def test_member_api_matches_the_document(check: Checker, member: Member) -> None:
    good = {"from": f"App <app@{member.domain}>", "to": "a@example.org", "subject": "s", "text": "t",
            "tags": ["t1"], "metadata": {"k": "v"}}
    r = check.call("POST", "/v1/send", 200, headers=auth(member), json=good)
    mid = r.json()["accepted"][0]["messageId"]
    check.call("POST", "/v1/send", 400, headers=auth(member), json={**good, "nope": 1})
    check.call("POST", "/v1/send", 400, headers={"X-Atmos-DID": member.did}, json=good)
    check.call("POST", "/v1/send", 401, headers=auth(member, "wrong"), json=good)
    check.call("POST", "/v1/send", 403, headers=auth(member), json={**good, "from": "x@not-mine.example"})
    check.call("POST", "/v1/send", 413, headers=auth(member), json={**good, "text": "x" * 300000})
    check.call("POST", "/v1/send", 413, headers=auth(member), json={**good, "attachments": [
        {"filename": "a.bin", "content": "QUFB" * 40000}]})
    keyed = {**auth(member), "Idempotency-Key": "openapi-1"}
    check.call("POST", "/v1/send", 200, headers=keyed, json=good)
    check.call("POST", "/v1/send", 422, headers=keyed, json={**good, "subject": "other"})
    check.call("POST", "/v1/send/batch", 200, headers=auth(member), json=[good, {"to": "x"}])
    check.call("POST", "/v1/send/batch", 400, headers=auth(member), json={"not": "an array"})
    check.call("POST", "/v1/send/batch", 401, headers=auth(member, "wrong"), json=[good])
    check.call("GET", "/v1/messages/{messageId}", 200, path=f"/v1/messages/{mid}", headers=auth(member))
    check.call("GET", "/v1/messages/{messageId}", 404, path="/v1/messages/999999", headers=auth(member))
    check.call("GET", "/v1/suppressions", 200, headers=auth(member))
    check.call("POST", "/v1/suppressions", 201, headers=auth(member), json={"recipient": "s@example.org"})
    check.call("POST", "/v1/suppressions", 200, headers=auth(member), json={"recipient": "s@example.org"})
    check.call("POST", "/v1/suppressions", 400, headers=auth(member), json={"recipient": "nope"})
    check.call("DELETE", "/v1/suppressions/{recipient}", 200, path="/v1/suppressions/s@example.org",
               headers=auth(member))
    check.call("DELETE", "/v1/suppressions/{recipient}", 404, path="/v1/suppressions/s@example.org",
               headers=auth(member))
    check.call("GET", "/healthz", 200)
    check.call("GET", "/member/status", 200, headers=auth(member))
    check.call("GET", "/member/deliverability", 200, headers=auth(member))
    check.call("GET", "/member/deliverability", 400, path="/member/deliverability?days=99", headers=auth(member))
    check.call("PUT", "/member/forward-to", 200, headers=auth(member),
               json={"domain": member.domain, "forward_to": None})
    check.call("PUT", "/member/forward-to", 403, headers=auth(member),
               json={"domain": "not-mine.example", "forward_to": None})
    check.call("PUT", "/member/category", 200, headers=auth(member), json={"domain": member.domain, "category": ""})
    check.call("PUT", "/member/category", 400, headers=auth(member), json={"domain": member.domain})
    check.call("GET", "/member/webhook", 404, headers=auth(member))
    check.call("PUT", "/member/webhook", 200, headers=auth(member), json={"url": "http://127.0.0.1:1/hook"})
    check.call("GET", "/member/webhook", 200, headers=auth(member))
    check.call("DELETE", "/member/webhook", 200, headers=auth(member))
    check.call("DELETE", "/member/webhook", 404, headers=auth(member))


def test_admin_api_matches_the_document(check: Checker, member: Member) -> None:
    check.call("GET", "/admin/api/queue", 401, headers={"Authorization": "Bearer wrong"})
    check.call("GET", "/admin/api/queue", 400)
    queue = check.call("GET", "/admin/api/queue", 200, headers=ADMIN).json()["messages"]
    qid = queue[0]["queue_id"]
    check.call("GET", "/admin/api/queue/{queueId}", 200, path=f"/admin/api/queue/{qid}", headers=ADMIN)
    check.call("GET", "/admin/api/queue/{queueId}", 404, path="/admin/api/queue/999999", headers=ADMIN)
    check.call("POST", "/admin/api/queue/{queueId}/{action}", 200, path=f"/admin/api/queue/{qid}/hold",
               headers=ADMIN)
    check.call("POST", "/admin/api/queue/{queueId}/{action}", 400, path=f"/admin/api/queue/{qid}/explode",
               headers=ADMIN)
    check.call("POST", "/admin/api/destinations/{domain}/{action}", 200,
               path="/admin/api/destinations/example.org/pause", headers=ADMIN)
    check.call("POST", "/admin/api/destinations/{domain}/{action}", 200,
               path="/admin/api/destinations/example.org/resume", headers=ADMIN)
    check.call("POST", "/admin/api/command", 200, headers=ADMIN,
               json={"id": "c1", "action": "release", "target": str(qid)})
    check.call("POST", "/admin/api/command", 400, headers=ADMIN, json={"id": "c2", "action": "explode", "target": ""})
    check.call("GET", "/admin/api/snapshot", 200, headers=ADMIN)
    check.call("GET", "/admin/api/tls-reports", 200, headers=ADMIN)
    check.call("GET", "/admin/api/tls-reports", 400, path="/admin/api/tls-reports?limit=lots", headers=ADMIN)
    nodes = check.call("GET", "/admin/api/nodes", 200, headers=ADMIN).json()
    assert [n["node"] for n in nodes["nodes"]] == [nodes["node"]] and nodes["totals"]["nodes_running"] == 1


def test_every_json_route_of_the_app_is_documented(spec: dict[str, Any]) -> None:
    """Read from the web package's route decorators, so a new endpoint without a document entry fails here."""
    import re
    from pathlib import Path

    web = Path(__file__).resolve().parents[2] / "web"
    route = re.compile(r'@blueprint\.(get|post|put|delete|patch)\("(/(?:v1|member|admin/api|healthz)[^"]*)"')
    declared = set()
    for source in web.glob("*.py"):
        for method, path in route.findall(source.read_text()):
            declared.add((method, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)))
    documented = {(m, re.sub(r"{(\w+)}", lambda g: "{" + re.sub(r"(?<!^)(?=[A-Z])", "_", g[1]).lower() + "}", p))
                  for p, ops in spec["paths"].items() for m in ops}
    assert declared, "no routes found: the pattern no longer matches web/"
    assert declared == documented
