"""POST /v1/send and GET /v1/messages/{id} against the real relay process over real HTTP."""

from __future__ import annotations

import concurrent.futures
import email
import json
from email import policy
from typing import Any

import httpx
import pytest

from spool import SpoolLog
from tests.e2e.conftest import Member
from tests.e2e.relayproc import RelayProcess

EXTRA_TOML = "[limits]\nrecipients_per_message = 3\njson_body = 1048576\n"


def auth(member: Member) -> dict[str, str]:
    return {"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did}


def body(member: Member, **changes: Any) -> dict[str, Any]:
    base = {"from": f"hello@{member.domain}", "to": "a@example.org", "subject": "Hi", "text": "Hello"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def post(relay: RelayProcess, headers: dict[str, str], payload: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{relay.http}/v1/send", headers=headers, json=payload, timeout=10, **kw)


def test_send_accepts_and_spools_before_200(relay: RelayProcess, member: Member) -> None:
    r = post(relay, auth(member), body(member, to=["a@example.org", "b@example.org"], html="<b>Hi</b>",
                                       replyTo="r@mail.example.com", headers={"X-Campaign": "c1"}))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rejected"] == []
    assert [a["recipient"] for a in out["accepted"]] == ["a@example.org", "b@example.org"]
    ids = [a["messageId"] for a in out["accepted"]]
    assert all(isinstance(i, int) for i in ids) and ids[1] == ids[0] + 1
    # The 200 means durable: the message is already in the spool on disk.
    log = SpoolLog.open_readonly(relay.spool_dir())
    queued = log.get(ids[0])
    assert queued is not None
    msg = email.message_from_bytes(log.read_data(ids[0]), policy=policy.default)
    assert msg["From"] == f"hello@{member.domain}" and msg["X-Campaign"] == "c1"
    assert msg.get_content_type() == "multipart/alternative"
    status = httpx.get(f"{relay.http}/v1/messages/{ids[1]}", headers=auth(member)).json()
    assert status["status"] in ("accepted", "deferred") and status["recipient"] == "b@example.org"
    assert status["source"] == "http"


def test_did_in_query_string(relay: RelayProcess, member: Member) -> None:
    r = httpx.post(f"{relay.http}/v1/send?did={member.did}", json=body(member),
                   headers={"Authorization": f"Bearer {member.key}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 400, "AUTH_REQUIRED"),
        ({"Authorization": "Bearer atmos_x"}, 400, "AUTH_REQUIRED"),
        ({"Authorization": "Basic abc", "X-Atmos-DID": "did:plc:e2eaaaaaaaaaaaaaaaaaaaaa"}, 400, "AUTH_REQUIRED"),
        ({"Authorization": "Bearer atmos_x", "X-Atmos-DID": "alice"}, 400, "INVALID_DID"),
        ({"Authorization": "Bearer atmos_x", "X-Atmos-DID": "did:plc:nope"}, 400, "INVALID_DID"),
        ({"Authorization": "Bearer atmos_wrong", "X-Atmos-DID": "did:plc:e2eaaaaaaaaaaaaaaaaaaaaa"}, 401, "AUTH_FAILED"),
        ({"Authorization": "Bearer atmos_wrong", "X-Atmos-DID": "did:plc:unknownaaaaaaaaaaaaaaaaa"}, 401, "AUTH_FAILED"),
    ],
)
def test_auth_errors(relay: RelayProcess, member: Member, headers: dict[str, str], status: int, code: str) -> None:
    r = post(relay, headers, body(member))
    assert (r.status_code, r.json()["code"]) == (status, code)
    assert r.json()["error"]


def test_domain_mismatch_403(relay: RelayProcess, member: Member) -> None:
    r = post(relay, auth(member), body(member, **{"from": "ceo@bank.example"}))
    assert r.status_code == 403 and r.json()["code"] == "DOMAIN_MISMATCH"
    assert "bank.example" in r.json()["error"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"to": None}, "to"),
        ({"text": None}, "text"),
        ({"to": ["a@x.org", "b@x.org", "c@x.org", "d@x.org"]}, "to"),
        ({"headers": {"From": "x@y.org"}}, "headers.From"),
        ({"subject": 5}, "subject"),
    ],
)
def test_invalid_request_names_field(relay: RelayProcess, member: Member, payload: dict[str, Any], field: str) -> None:
    r = post(relay, auth(member), body(member, **payload))
    assert r.status_code == 400 and r.json()["code"] == "INVALID_REQUEST"
    assert r.json()["error"].startswith(field)


def test_not_json(relay: RelayProcess, member: Member) -> None:
    r = httpx.post(f"{relay.http}/v1/send", headers=auth(member), content=b"{not json")
    assert r.status_code == 400 and r.json()["code"] == "INVALID_REQUEST"
    assert "JSON" in r.json()["error"]


def test_body_over_json_body_limit_is_413(relay: RelayProcess, member: Member) -> None:
    r = post(relay, auth(member), body(member, text="x" * (1024 * 1024 + 10)))
    assert r.status_code == 413 and r.json()["code"] == "PAYLOAD_TOO_LARGE"


def test_suspended_member_403(relay: RelayProcess) -> None:
    did = "did:plc:httpsuspendedaaaaaaaaaaa"
    info = relay.enroll(did, "suspended.example.net")
    relay.admin("members", "suspend", did, "--reason", "complaints")
    m = Member(did, "suspended.example.net", "", info["api_key"])
    r = post(relay, auth(m), body(m))
    assert r.status_code == 403 and r.json()["code"] == "MEMBER_SUSPENDED"


def test_idempotent_replay(relay: RelayProcess, member: Member) -> None:
    headers = {**auth(member), "Idempotency-Key": "order-42"}
    first = post(relay, headers, body(member, subject="once"))
    again = post(relay, headers, body(member, subject="once"))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = post(relay, headers, body(member, subject="different"))
    assert other.status_code == 422 and other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_idempotent_concurrent_duplicates_send_once(relay: RelayProcess, member: Member) -> None:
    headers = {**auth(member), "Idempotency-Key": "burst-1"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: post(relay, headers, body(member, subject="burst")), range(8)))
    ids = {json.dumps(r.json()["accepted"]) for r in results}
    assert all(r.status_code == 200 for r in results) and len(ids) == 1


def test_concurrent_sends_get_unique_ids(relay: RelayProcess, member: Member) -> None:
    def send(i: int) -> int:
        r = post(relay, auth(member), body(member, subject=f"c{i}"))
        assert r.status_code == 200, r.text
        mid: int = r.json()["accepted"][0]["messageId"]
        return mid

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(send, range(64)))
    assert len(set(ids)) == 64


def test_message_of_another_did_is_404(relay: RelayProcess, member: Member) -> None:
    other = relay.enroll("did:plc:otheraaaaaaaaaaaaaaaaaaa", "other.example.net")
    r = post(relay, auth(member), body(member))
    mid = r.json()["accepted"][0]["messageId"]
    m2 = Member("did:plc:otheraaaaaaaaaaaaaaaaaaa", "other.example.net", "", other["api_key"])
    assert httpx.get(f"{relay.http}/v1/messages/{mid}", headers=auth(m2)).status_code == 404
    assert httpx.get(f"{relay.http}/v1/messages/999999999", headers=auth(member)).status_code == 404


def test_healthz_and_unknown_route(relay: RelayProcess) -> None:
    assert httpx.get(f"{relay.http}/healthz").json()["status"] == "ok"
    r = httpx.get(f"{relay.http}/nope")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"


def test_docs_name_the_submission_port_the_relay_bound(relay: RelayProcess) -> None:
    """The relay was configured with port 0: the quick start shows the kernel's pick, never 587 or 0."""
    page = httpx.get(f"{relay.http}/docs", timeout=10)
    assert page.status_code == 200
    port = relay.submission[1]
    assert port not in (0, 587)
    assert f"Port:     {port} (STARTTLS" in page.text, page.text
    assert "Port:     587" not in page.text and "Port:     0 " not in page.text
